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


INF = math.inf
# Six particles over four potential steps (at progress 0, 1/4, 1/2, 3/4), with rewards and tilts that are dyadic
# rationals, so every sum is exact in float64 and the closed forms can be compared with ==.
REPEATED_MINUS_INF_REWARDS = [
    [0.5, 0.5, -INF, 1.0, -INF, 2.0],
    [1.25, -INF, -INF, 0.25, -INF, -1.5],
    [-0.75, -INF, -INF, -INF, 3.0, 0.75],
    [2.0, 1.5, 0.25, -INF, -0.5, 1.0],
]
# particle 0 and 5: finite; 1: -inf at two consecutive middle steps; 2: at the first three; 3: at the last two;
# 4: at the first two, then finite; 5: -inf as its final reward.
REPEATED_MINUS_INF_FINAL = [1.5, -0.25, 1000.0, 2.0, 0.5, -INF]
LAMBDAS = [
    pytest.param(2.0, id="constant"),
    pytest.param(0.0, id="zero"),
    pytest.param(lambda progress: 4.0 * progress, id="zero-at-the-start"),
    pytest.param(lambda progress: 0.5 + 3.0 * progress, id="rising"),
    pytest.param(lambda progress: 0.0 if progress < 0.4 else 2.0, id="zero-then-two"),
    pytest.param(lambda progress: 2.0 if progress < 0.6 else 0.0, id="two-then-zero"),
]


def closed_form(kind: str, potential: Potential, rewards: list[list[float]], final: list[float]):
    """The log-potentials V_j (one list per step) and final corrections of the module docstring, one particle at a
    time in Python floats: a -inf reward under a non-zero tilt kills the particle for good (V = -inf from then on,
    and a -inf final correction); under a zero tilt it is no constraint and enters no sum, max or difference."""
    steps, num = len(rewards), len(rewards[0])
    potentials = [[0.0] * num for _ in range(steps)]
    corrections = []
    for i in range(num):
        dead, seen, previous = False, [], 0.0
        for j in range(steps):
            lmbda, reward = potential.lmbda_at(j / steps), rewards[j][i]
            dead = dead or (reward == -INF and lmbda != 0)
            if dead:
                potentials[j][i] = -INF
                continue
            if reward != -INF:
                seen.append(reward)
            tilted = lmbda * reward if reward != -INF else 0.0  # lambda_j r_j, with 0 * -inf = 0
            if kind == "diff":
                potentials[j][i], previous = tilted - previous, tilted
            elif kind == "max":
                potentials[j][i] = lmbda * max(seen) if lmbda != 0 else 0.0
            elif kind == "sum":
                potentials[j][i] = lmbda * sum(seen)
            else:
                potentials[j][i] = tilted
        lmbda, reward = potential.target_lmbda, final[i]
        if dead or (reward == -INF and lmbda != 0):
            corrections.append(-INF)
        else:
            tilted = lmbda * reward if reward != -INF else 0.0
            corrections.append(tilted - sum(potentials[j][i] for j in range(steps)))
    return potentials, corrections


@pytest.mark.parametrize("kind", POTENTIAL_KINDS)
@pytest.mark.parametrize("lmbda", LAMBDAS)
def test_repeated_minus_infinity_rewards_never_make_nan(kind, lmbda):
    """-inf at two or three consecutive potential steps: the state (`applied`, `memory`) never holds NaN or +inf, a
    particle hit under a positive tilt keeps -inf log-potentials and gets a -inf final correction, and every
    log-potential, the state's `applied` and the final correction equal the closed form exactly (for `diff`
    lambda_j r_j - lambda_{j-1} r_{j-1}, with a product along each trajectory of exactly exp(lambda r_final))."""
    potential = Potential(kind, lmbda)
    rewards = torch.tensor(REPEATED_MINUS_INF_REWARDS, dtype=torch.float64)
    final = torch.tensor(REPEATED_MINUS_INF_FINAL, dtype=torch.float64)
    expected, expected_correction = closed_form(kind, potential, REPEATED_MINUS_INF_REWARDS, REPEATED_MINUS_INF_FINAL)
    steps = rewards.shape[0]
    state = potential.init_state(rewards.shape[1])
    total = torch.zeros(rewards.shape[1], dtype=torch.float64)
    killed = torch.zeros(rewards.shape[1], dtype=torch.bool)
    for j, step_rewards in enumerate(rewards):
        log_potential, state = potential.step(state, step_rewards, j / steps)
        for name, value in zip(("log_potential", *state._fields), (log_potential, *state), strict=True):
            assert not torch.isnan(value).any() and not (value == INF).any(), (j, name, value)
        assert log_potential.tolist() == expected[j], (j, log_potential)
        total += log_potential
        assert torch.equal(state.applied, total), j
        killed |= torch.isneginf(step_rewards) & (potential.lmbda_at(j / steps) > 0)
        assert torch.isneginf(log_potential[killed]).all() and torch.isneginf(state.applied[killed]).all(), j
    correction = potential.final_correction(state, final)
    assert not torch.isnan(correction).any() and not (correction == INF).any()
    assert correction.tolist() == expected_correction
    killed |= torch.isneginf(final) & (potential.target_lmbda > 0)
    assert torch.isneginf(correction[killed]).all()
    alive = ~torch.isneginf(correction)
    target = torch.where(torch.isneginf(final), 0.0, potential.target_lmbda * final)  # lambda 0: 0 * -inf = 0
    assert torch.equal((total + correction)[alive], target[alive])
    if kind == "diff":
        # the final correction is the last difference lambda r_final - lambda_m r_m
        last = [potential.lmbda_at((steps - 1) / steps) * reward for reward in REPEATED_MINUS_INF_REWARDS[-1]]
        for i in alive.nonzero().flatten().tolist():
            last_tilted = last[i] if REPEATED_MINUS_INF_REWARDS[-1][i] != -INF else 0.0
            assert correction[i].item() == target[i].item() - last_tilted, i


@pytest.mark.parametrize("kind", POTENTIAL_KINDS)
def test_random_rewards_with_minus_infinity_runs_match_the_closed_form(kind):
    """Random (non-dyadic) rewards, -inf in runs of one to three steps, a schedule that is zero at the start: the
    potentials match the closed form computed with the same float64 operations exactly, and the product along
    each surviving trajectory is exp(lambda r_final) up to rounding."""
    generator = torch.Generator().manual_seed(5)
    steps, num = 8, 40
    rewards = torch.randn(steps, num, generator=generator, dtype=torch.float64)
    starts = torch.randint(0, steps, (num,), generator=generator)
    lengths = torch.randint(1, 4, (num,), generator=generator)
    step_index = torch.arange(steps)[:, None]
    runs = (step_index >= starts) & (step_index < starts + lengths) & (torch.arange(num) % 3 != 0)
    rewards[runs] = -INF
    final = torch.randn(num, generator=generator, dtype=torch.float64)
    potential = Potential(kind, lambda progress: 3.0 * progress**2)
    expected, expected_correction = closed_form(kind, potential, rewards.tolist(), final.tolist())
    state = potential.init_state(num)
    total = torch.zeros(num, dtype=torch.float64)
    for j, step_rewards in enumerate(rewards):
        log_potential, state = potential.step(state, step_rewards, j / steps)
        assert not any(torch.isnan(value).any() for value in (log_potential, *state)), j
        assert log_potential.tolist() == expected[j], j
        total += log_potential
    correction = potential.final_correction(state, final)
    assert correction.tolist() == expected_correction
    alive = ~torch.isneginf(correction)
    assert alive[torch.arange(num) % 3 == 0].all() and not alive.all()
    assert torch.allclose((total + correction)[alive], 3.0 * final[alive], rtol=0, atol=1e-12)
