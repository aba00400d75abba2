"""FK steering samples p(x) exp(lambda r(x)): checked against the closed-form tilt of a Gaussian mixture.

Setup: a 2-D mixture of four modes, the linear reward r(x) = a.x and lambda = 0.6, so the tilted target is again a
mixture with known mode weights (about [0.05, 0.41, 0.08, 0.46], from prior weights [0.4, 0.3, 0.2, 0.1]) and known
log Z. Each configuration runs R = 16 independent replicates of N = 1,000 particles with 100 DDPM steps. The
estimate of mode k's weight is sum_i W_i P_tilted(k | x_i) (whose exact expectation under the target is the mode
weight itself), and its tolerance is

    t_{15, 0.9995} * SE + delta,

with SE the standard error across replicates and delta the discretisation budget of the 100-step sampler, which
`test_discretisation_budget` checks on its own (the plain sampler's components come out with std 0.47, not 0.5).
"""

import functools
import math

import pytest
import torch
from diffusers import DDPMScheduler

import diffsteer
from diffsteer.worlds.gmm import exact_denoiser, four_modes, linear_reward


MIXTURE = four_modes()
DIRECTION = torch.tensor([1.0, 0.5])
LMBDA = 0.6
TILTED, LOG_Z = MIXTURE.tilt(DIRECTION, LMBDA)
STEPS = 100
PARTICLES = 1000
REPLICATES = 16
T_QUANTILE = 4.07  # two-sided 99.9% quantile of Student's t with 15 degrees of freedom
MODE_BUDGET = 0.015  # discretisation budget for mode weights (measured 0.007)
LOG_Z_BUDGET = 0.04  # discretisation budget for log Z (measured 0.020)

CONFIGS = {
    "diff, adaptive ESS": dict(potential="diff"),
    "diff, every step": dict(potential="diff", ess_threshold=None),
    "max, every 20 steps": dict(potential="max", interval=20),
    "immediate, every 20 steps": dict(potential="immediate", interval=20),
    "sum, every 50 steps": dict(potential="sum", interval=50),
    "sum, every 20 steps": dict(potential="sum", interval=20),
    "max, every step": dict(potential="max", ess_threshold=None),
}


def scheduler() -> DDPMScheduler:
    return DDPMScheduler(clip_sample=False)


@functools.cache
def replicates(config: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per replicate: weighted mode-weight estimates (R, K) and log Z estimates (R,)."""
    modes, log_z = [], []
    for seed in range(REPLICATES):
        result = diffsteer.sample(
            exact_denoiser(MIXTURE, scheduler()),
            scheduler(),
            shape=(2,),
            method=diffsteer.FK(PARTICLES, lmbda=LMBDA, **CONFIGS[config]),
            reward=linear_reward(DIRECTION),
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
        )
        modes.append(TILTED.mode_weights(result.samples, result.log_weights))
        log_z.append(result.log_normalizer)
    return torch.stack(modes), torch.tensor(log_z, dtype=torch.float64)


def standard_error(values: torch.Tensor) -> torch.Tensor:
    return values.std(0) / math.sqrt(values.shape[0])


def test_discretisation_budget():
    """The plain 100-step sampler, importance-reweighted by exp(lambda r) with 100k samples, is within the budgets
    of the closed-form tilt: this is the part of the error that no number of particles removes."""
    plain = diffsteer.sample(
        exact_denoiser(MIXTURE, scheduler()),
        scheduler(),
        shape=(2,),
        method=diffsteer.BestOfN(100_000),
        reward=linear_reward(DIRECTION),
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(123),
    )
    log_w = LMBDA * plain.rewards
    modes = TILTED.mode_weights(plain.samples, log_w)
    # Importance sampling error at ESS ~ 50k is about 0.003 on the modes and 0.01 on log Z.
    assert torch.all((modes - TILTED.weights).abs() < MODE_BUDGET - 0.003)
    assert abs(float(torch.logsumexp(log_w, 0)) - math.log(log_w.numel()) - LOG_Z) < LOG_Z_BUDGET - 0.01
    # The untilted sampler reproduces the mixture's own weights within 0.01.
    assert torch.all((MIXTURE.mode_weights(plain.samples) - MIXTURE.weights).abs() < 0.01)


@pytest.mark.parametrize(
    "config",
    [
        "diff, adaptive ESS",
        "diff, every step",
        "max, every 20 steps",
        "immediate, every 20 steps",
        "sum, every 50 steps",
    ],
)
def test_fk_reaches_the_tilted_mode_weights_and_log_normalizer(config):
    modes, log_z = replicates(config)
    error = (modes.mean(0) - TILTED.weights).abs()
    assert torch.all(error <= T_QUANTILE * standard_error(modes) + MODE_BUDGET), (error, standard_error(modes))
    assert abs(float(log_z.mean()) - LOG_Z) <= T_QUANTILE * float(standard_error(log_z)) + LOG_Z_BUDGET


def test_sum_potential_on_a_denser_schedule_pays_in_variance():
    """sum applies the running sum of rewards at every potential step: on 5 potential steps its replicate spread of
    the mode weights is more than twice that of diff (measured about 3x), which is why it needs the sparsest
    schedules."""
    sum_spread = replicates("sum, every 20 steps")[0].std(0).max()
    diff_spread = replicates("diff, adaptive ESS")[0].std(0).max()
    assert sum_spread > 2 * diff_spread


def test_max_potential_on_a_dense_schedule_collapses():
    """max at every step applies the tilt about 100 times over before the final correction, so the population
    collapses onto the top mode: far from the target (this is why max and immediate need sparse schedules)."""
    modes, _ = replicates("max, every step")
    top = int(torch.argmax(MIXTURE.means @ DIRECTION.double()))
    assert modes.mean(0)[top] - TILTED.weights[top] > 0.3


def test_best_of_n_collapses_onto_the_top_mode():
    """Best-of-N picks the highest reward, so its outputs sit in the top-reward mode, whatever the target's
    weights (0.46 for that mode): in 32 runs at N = 64, at least 29 land there (under the target's 0.46 the
    chance of that is below 1e-7)."""
    top = int(torch.argmax(MIXTURE.means @ DIRECTION.double()))
    hits = 0
    for seed in range(32):
        result = diffsteer.sample(
            exact_denoiser(MIXTURE, scheduler()),
            scheduler(),
            shape=(2,),
            method=diffsteer.BestOfN(64),
            reward=linear_reward(DIRECTION),
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
        )
        hits += int(MIXTURE.responsibilities(result.selected).argmax(1).item() == top)
    assert hits >= 29
