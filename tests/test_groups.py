"""The loop's particle groups, per-particle conditioning and per-particle generators (what pipelines build on)."""

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

import diffsteer
from diffsteer.loop import run_steering
from diffsteer.outputs import CostLedger
from diffsteer.processes import SchedulerProcess
from diffsteer.worlds.gmm import GaussianMixture, exact_denoiser


# Two "classes": each row's label picks the mixture its exact denoiser uses.
CLASSES = [
    GaussianMixture.isotropic([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.4),
    GaussianMixture.isotropic([0.5, 0.5], [[0.0, -1.5], [0.0, 1.5]], 0.3),
]
GROUPS, PARTICLES = 3, 16
LABELS = torch.tensor([0, 1, 0])  # one label per group


def conditional_model(scheduler):
    denoisers = [exact_denoiser(mixture, scheduler) for mixture in CLASSES]

    def model(sample: torch.Tensor, timestep: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        outputs = [denoiser(sample, timestep) for denoiser in denoisers]
        return torch.where((label == 0)[:, None], outputs[0], outputs[1])

    return model


def wiggly(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.sin(4 * x).sum(1)


def run(method, scheduler, *, stochastic="auto", latents=None, generator=None, labels=LABELS, groups=GROUPS):
    process = SchedulerProcess(
        conditional_model(scheduler), scheduler, shape=(2,), num_inference_steps=8, stochastic=stochastic
    )
    rows = labels.repeat_interleave(method.num_particles)
    return run_steering(
        process,
        method,
        wiggly,
        CostLedger(),
        num_groups=groups,
        generator=generator if generator is not None else torch.Generator().manual_seed(0),
        latents=latents,
        conditioning={"label": rows},
    )


def test_resampling_never_crosses_groups():
    result = run(diffsteer.FK(PARTICLES, lmbda=1.0, ess_threshold=None, resampling="multinomial"), DDPMScheduler())
    blocks = torch.arange(GROUPS * PARTICLES) // PARTICLES
    for record in result.trace:
        assert record.group_resampled == (True,) * GROUPS and len(record.group_ess) == GROUPS
        assert torch.equal(blocks[record.ancestors], blocks)
    assert result.log_weights.shape == (GROUPS, PARTICLES)
    assert torch.allclose(torch.logsumexp(result.log_weights, 1), torch.zeros(GROUPS, dtype=torch.float64))
    assert result.log_normalizers.shape == (GROUPS,)
    assert torch.equal(result.selected_indices // PARTICLES, torch.arange(GROUPS)[:, None])


def test_groups_resample_independently():
    """A group whose weights stay flat (lambda acts only through rewards that do not vary) is never resampled."""

    def reward(x: torch.Tensor) -> torch.Tensor:
        scores = 3.0 * torch.sin(4 * x).sum(1)
        scores[PARTICLES : 2 * PARTICLES] = 0.0  # group 1 sees a constant reward
        return scores

    process = SchedulerProcess(conditional_model(DDPMScheduler()), DDPMScheduler(), shape=(2,), num_inference_steps=8)
    result = run_steering(
        process,
        diffsteer.FK(PARTICLES, lmbda=1.0, ess_threshold=0.9),
        reward,
        CostLedger(),
        num_groups=GROUPS,
        generator=torch.Generator().manual_seed(0),
        conditioning={"label": LABELS.repeat_interleave(PARTICLES)},
    )
    assert not any(record.group_resampled[1] for record in result.trace)
    assert any(record.group_resampled[0] for record in result.trace)


def test_conditioning_moves_with_its_particles_bit_for_bit():
    """Deterministic multistep scheduler, resampling forced at every step: every output equals the plain run from
    its ancestor's noise under its own group's conditioning (fails if conditioning or solver history is left
    behind)."""
    scheduler = DPMSolverMultistepScheduler()
    method = diffsteer.FK(PARTICLES, lmbda=1.0, ess_threshold=None, resampling="multinomial")
    x_T = torch.randn(GROUPS * PARTICLES, 2, generator=torch.Generator().manual_seed(5))
    steered = run(method, scheduler, stochastic="off", latents=x_T)
    origin = torch.arange(GROUPS * PARTICLES)
    for record in reversed(steered.trace):
        origin = record.ancestors[origin]
    assert len(set(origin.tolist())) < len(origin)
    plain = run(diffsteer.BestOfN(PARTICLES), scheduler, stochastic="off", latents=x_T[origin])
    assert torch.equal(steered.samples, plain.samples)


def test_a_generator_per_particle_is_deterministic_and_reindexed():
    method = diffsteer.FK(PARTICLES, lmbda=1.0, ess_threshold=None)

    def generators(seed: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed + i) for i in range(GROUPS * PARTICLES)]

    first, second = (
        run(method, DDPMScheduler(), generator=generators(0)),
        run(method, DDPMScheduler(), generator=generators(0)),
    )
    assert torch.equal(first.samples, second.samples)
    assert not torch.equal(first.samples, run(method, DDPMScheduler(), generator=generators(1)).samples)


def test_best_of_n_with_per_particle_generators_draws_each_row_from_its_own_stream():
    """With one generator per particle (diffusers' convention) a particle's sample does not depend on the others:
    row i equals a single-particle run with generator i."""
    scheduler = DDPMScheduler()
    together = run(
        diffsteer.BestOfN(4),
        scheduler,
        generator=[torch.Generator().manual_seed(10 + i) for i in range(4)],
        labels=torch.tensor([1]),
        groups=1,
    )
    for i in range(4):
        alone = run(
            diffsteer.BestOfN(1),
            scheduler,
            generator=[torch.Generator().manual_seed(10 + i)],
            labels=torch.tensor([1]),
            groups=1,
        )
        assert torch.equal(together.samples[i], alone.samples[0])


def test_wrong_number_of_generators_is_a_clear_error():
    with pytest.raises(ValueError, match="one per particle \\(3 groups x 16 particles = 48\\), got 2"):
        run(diffsteer.FK(PARTICLES), DDPMScheduler(), generator=[torch.Generator(), torch.Generator()])
