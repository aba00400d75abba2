import math

import pytest
import torch

from diffsteer.smc import POTENTIAL_KINDS, Potential


def run_potential(potential: Potential, rewards: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """Total log-potential along trajectories: intermediate rewards (m, N) at progress j/m, then the final one."""
    state = potential.init_state(rewards.shape[1])
    total = torch.zeros(rewards.shape[1], dtype=torch.float64)
    for j, step_rewards in enumerate(rewards):
        log_potential, state = potential.step(state, step_rewards, j / rewards.shape[0])
        total += log_potential
    return total + potential.final_correction(state, final)


@pytest.mark.parametrize("kind", POTENTIAL_KINDS)
@pytest.mark.parametrize("lmbda", [2.5, -0.7, lambda progress: 3.0 * progress**2 + 0.1])
def test_every_kind_multiplies_to_exp_lambda_final_reward(kind, lmbda):
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    final = torch.randn(5, generator=generator, dtype=torch.float64)
    potential = Potential(kind, lmbda)
    total = run_potential(potential, rewards, final)
    assert torch.allclose(total, potential.target_lmbda * final, atol=1e-12)


def test_each_kind_applies_its_documented_increment():
    rewards = torch.tensor([[1.0], [3.0], [2.0]], dtype=torch.float64)
    expected = {
        "diff": [2.0, 4.0, -2.0],  # lambda r_j - lambda r_{j-1}
        "max": [2.0, 6.0, 6.0],  # lambda max_{i<=j} r_i
        "sum": [2.0, 8.0, 12.0],  # lambda sum_{i<=j} r_i
        "immediate": [2.0, 6.0, 4.0],  # lambda r_j
    }
    for kind, increments in expected.items():
        potential = Potential(kind, 2.0)
        state = potential.init_state(1)
        got = []
        for step_rewards in rewards:
            log_potential, state = potential.step(state, step_rewards, 0.5)
            got.append(log_potential.item())
        assert got == increments, kind


def test_minus_infinity_reward_gives_zero_weight():
    potential = Potential("diff", 1.0)
    log_potential, _ = potential.step(potential.init_state(2), torch.tensor([0.5, -math.inf]), 0.0)
    assert log_potential[0] == 0.5 and torch.isneginf(log_potential[1])
    with pytest.raises(ValueError, match="negative lmbda"):
        Potential("diff", -1.0).step(potential.init_state(2), torch.tensor([0.5, -math.inf]), 0.0)


def test_zero_lambda_is_no_tilt_even_for_minus_infinity():
    potential = Potential("immediate", 0.0)
    log_potential, _ = potential.step(potential.init_state(1), torch.tensor([-math.inf]), 0.0)
    assert log_potential.item() == 0.0


def test_unknown_kind_and_bad_lambda():
    with pytest.raises(ValueError, match="Unknown potential 'add'"):
        Potential("add")
    with pytest.raises(ValueError, match="lmbda"):
        Potential("diff", "strong")
