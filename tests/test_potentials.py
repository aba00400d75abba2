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


@pytest.mark.parametrize("kind", POTENTIAL_KINDS)
def test_minus_infinity_at_any_step_is_zero_weight_for_good(kind):
    """Particle 0 gets -inf at the second step and again at the fourth, particle 1 only finite rewards: particle 0's
    potentials are -inf from the second step on (whatever it scores later, the final 1e3 included), no NaN or +inf
    ever appears in the potentials or the state, and particle 1's product is still exp(lambda r(x_0))."""
    potential = Potential(kind, 1.5)
    rewards = torch.tensor([[0.5, 0.2], [-math.inf, 0.4], [2.0, -0.3], [-math.inf, 0.1], [3.0, 0.6]])
    final = torch.tensor([1e3, 0.7], dtype=torch.float64)
    state = potential.init_state(2)
    total = torch.zeros(2, dtype=torch.float64)
    for j, step_rewards in enumerate(rewards):
        log_potential, state = potential.step(state, step_rewards, j / 5)
        assert not torch.isnan(log_potential).any() and not (log_potential == math.inf).any()
        for field in state:
            assert not torch.isnan(field).any() and not (field == math.inf).any(), (j, state)
        assert torch.isneginf(log_potential[0]) == (j >= 1), (j, log_potential)
        total += log_potential
    correction = potential.final_correction(state, final)
    assert torch.isneginf(correction[0])
    assert (total + correction)[1].item() == pytest.approx(1.5 * 0.7, abs=1e-12)


@pytest.mark.parametrize("kind", POTENTIAL_KINDS)
def test_minus_infinity_under_a_zero_tilt_is_no_constraint_for_every_kind(kind):
    """lmbda(0) = 0: a -inf at progress 0 is no constraint (0 * -inf = 0) and does not leak into later steps."""
    potential = Potential(kind, lambda progress: 2.0 * progress)
    rewards = torch.tensor([[-math.inf], [0.5], [1.0]], dtype=torch.float64)
    total = run_potential(potential, rewards, torch.tensor([0.25], dtype=torch.float64))
    assert total.item() == pytest.approx(2.0 * 0.25, abs=1e-12)


def test_unknown_kind_and_bad_lambda():
    with pytest.raises(ValueError, match="Unknown potential 'add'"):
        Potential("add")
    with pytest.raises(TypeError, match="potential must be a string"):
        Potential(3)
    with pytest.raises(TypeError, match="lmbda must be a number or a callable"):
        Potential("diff", "strong")
    with pytest.raises(TypeError, match="lmbda must be a number or a callable"):
        Potential("diff", True)
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="lmbda must be a finite number"):
            Potential("diff", value)


def test_a_lambda_schedule_must_return_finite_numbers_where_it_is_evaluated():
    potential = Potential("diff", lambda progress: math.nan if progress > 0.4 else 1.0)
    log_potential, _ = potential.step(potential.init_state(2), torch.zeros(2), 0.2)
    assert log_potential.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"lmbda returned nan at progress 0\.5;"):
        potential.step(potential.init_state(2), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="lmbda returned nan at progress 1;"):
        potential.final_correction(potential.init_state(2), torch.zeros(2))
    with pytest.raises(TypeError, match=r"lmbda returned 'high' \(str\) at progress 0\.5;"):
        Potential("diff", lambda progress: "high").lmbda_at(0.5)
    assert Potential("diff", lambda progress: torch.tensor(2.0 * progress)).lmbda_at(0.25) == 0.5
