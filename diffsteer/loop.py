"""The one steering loop, written once for the core API and every pipeline.

    particles = process.init(...)
    for step in process.steps():
        process.predict(particles, step)            # model output and x0-hat
        potentials from reward(x0-hat)              # only on the method's potential steps
        resample each group whose ESS is low        # one reindex moves every per-particle field
        process.transition(particles, step)         # scheduler.step, noise from the caller's generators
    final correction; select

Particles come in `num_groups` contiguous blocks of `method.num_particles` (one block per prompt in a pipeline).
Each block is its own particle system: weights are normalised, ESS is measured, resampling happens and outputs are
selected within the block, so particles never cross groups.
"""

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from diffsteer.outputs import CostLedger, StepRecord
from diffsteer.processes.scheduler_process import SchedulerProcess, Step
from diffsteer.smc.particles import Particles
from diffsteer.smc.potentials import Potential
from diffsteer.smc.resampling import multinomial, resample
from diffsteer.smc.weights import ess, log_mean_exp, normalize


Reward = Callable[[torch.Tensor], Any]
Generators = torch.Generator | list[torch.Generator] | None


class Method(Protocol):
    """What the loop asks of a steering method (see `diffsteer.FK` and `diffsteer.BestOfN`)."""

    num_particles: int
    requires_stochastic: bool
    select: str

    def make_potential(self) -> Potential | None: ...

    def reward_steps(self, num_inference_steps: int) -> frozenset[int]: ...

    def should_resample(self, ess: float, num_particles: int) -> bool: ...


@dataclass
class SteeringRun:
    """Everything one run of the loop produced, group by group.

    Attributes:
        samples: final particles, shape (G * N, *shape), group-major.
        log_weights: final log-weights normalised within each group, shape (G, N).
        rewards: final rewards, shape (G, N).
        log_normalizers: estimates of log E[exp(lambda r)] per group, shape (G,), or None without a tilt.
        selected_indices: indices into `samples` of each group's selected outputs, shape (G, num_outputs).
        trace: one `StepRecord` per model call.
        cost: the ledger.
        changes: what was changed on the caller's behalf.
    """

    samples: torch.Tensor
    log_weights: torch.Tensor
    rewards: torch.Tensor
    log_normalizers: torch.Tensor | None
    selected_indices: torch.Tensor
    trace: list[StepRecord]
    cost: CostLedger
    changes: list[str]


def run_steering(
    process: SchedulerProcess,
    method: Method,
    reward: Reward,
    ledger: CostLedger,
    *,
    num_groups: int = 1,
    generator: Generators = None,
    latents: torch.Tensor | None = None,
    conditioning: Mapping[str, torch.Tensor] | None = None,
    num_outputs: int = 1,
    on_step_end: Callable[[Step, Particles], None] | None = None,
) -> SteeringRun:
    """Run `method` over `process` with `num_groups` groups of `method.num_particles` particles.

    Args:
        process: the model and scheduler.
        method: FK, best-of-N, or anything with the `Method` protocol.
        reward: scores x0-hat (and the final samples), shape (G * N, *shape) -> (G * N,).
        ledger: the cost ledger to fill (the caller counts model rows; the loop counts rewards and resampling).
        num_groups: number of independent particle systems G, laid out in contiguous blocks.
        generator: one generator for every draw, or one per particle (diffusers' list convention), which is
            re-indexed with the particles; a group's resampling then draws from its first particle's generator.
        latents: initial noise, shape (G * N, *shape).
        conditioning: per-particle tensors (leading dimension G * N) passed to the model as keyword arguments and
            re-indexed with the particles.
        num_outputs: outputs selected per group.
        on_step_end: called after every transition with the step and the particles (pipelines' callbacks).
    """
    num_particles = method.num_particles
    total = num_groups * num_particles
    if isinstance(generator, list) and len(generator) != total:
        raise ValueError(
            f"A list of generators needs one per particle ({num_groups} groups x {num_particles} particles = "
            f"{total}), got {len(generator)}."
        )
    potential = method.make_potential()
    reward_steps = method.reward_steps(process.num_inference_steps)
    particles = process.init(total, generator, latents, conditioning)
    # Log-weights need no place among the particles: resampled groups become uniform, the others keep their order.
    log_weights = torch.zeros(num_groups, num_particles, dtype=torch.float64, device=process.device)
    if potential is not None:
        particles.potential_state = potential.init_state(total, process.device)
    trace: list[StepRecord] = []

    for step in process.steps():
        process.predict(particles, step)
        rewarded = potential is not None and step.at_boundary and step.full_step in reward_steps
        if rewarded:
            rewards = _score(reward, particles.x0_hat, ledger)
            log_potential, particles.potential_state = potential.step(
                particles.potential_state, rewards, step.progress
            )
            log_weights = _add_log_potential(log_weights, log_potential.view(num_groups, num_particles))
        group_ess = tuple(ess(row) for row in log_weights)
        group_resampled = tuple(rewarded and method.should_resample(value, num_particles) for value in group_ess)
        ancestors = None
        if any(group_resampled):
            process.check_particle_state(total)
            ancestors, log_weights = _resample_groups(particles, log_weights, group_resampled, method, generator)
            ledger.resampling_steps += 1
        trace.append(
            StepRecord(
                step.index,
                float(step.timestep),
                rewarded,
                min(group_ess),
                any(group_resampled),
                ancestors,
                group_ess,
                group_resampled,
            )
        )
        process.transition(particles, step, generator)
        if on_step_end is not None:
            on_step_end(step, particles)

    samples = particles.latents
    final_rewards = _score(reward, samples, ledger).view(num_groups, num_particles)
    log_normalizers = None
    if potential is not None:
        correction = potential.final_correction(particles.potential_state, final_rewards.flatten())
        log_weights = _add_log_potential(log_weights, correction.view(num_groups, num_particles))
        log_normalizers = torch.stack([log_mean_exp(row) for row in log_weights])
    log_weights = torch.stack([normalize(row) for row in log_weights])
    selected = []
    for g in range(num_groups):
        start = g * num_particles
        group_generator = _group_generator(particles, generator, start)
        selected.append(start + _select(method, log_weights[g], final_rewards[g], num_outputs, group_generator))
    ledger.stop()
    return SteeringRun(
        samples=samples,
        log_weights=log_weights,
        rewards=final_rewards,
        log_normalizers=log_normalizers,
        selected_indices=torch.stack(selected),
        trace=trace,
        cost=ledger,
        changes=list(process.changes),
    )


def _resample_groups(
    particles: Particles,
    log_weights: torch.Tensor,
    group_resampled: tuple[bool, ...],
    method: Method,
    generator: Generators,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample the groups that asked for it (the others keep their particles) and reindex everything once.

    Returns the flat ancestor indices and the new log-weights: a resampled group's are reset to their log-mean, not
    to zero, so that log_mean_exp of the final weights still estimates log Z.
    """
    num_groups, num_particles = log_weights.shape
    ancestors = torch.arange(num_groups * num_particles)
    log_weights = log_weights.clone()
    for g, resampled in enumerate(group_resampled):
        if not resampled:
            continue
        start = g * num_particles
        group_generator = _group_generator(particles, generator, start)
        picked = resample(log_weights[g], num_particles, method.resampling, group_generator)
        ancestors[start : start + num_particles] = start + picked.cpu()
        log_weights[g] = log_mean_exp(log_weights[g])
    particles.reindex(ancestors)
    return ancestors, log_weights


def _group_generator(particles: Particles, generator: Generators, first_row: int) -> torch.Generator | None:
    """The generator for a group's own draws: the caller's single generator, or the group's first particle's."""
    if isinstance(generator, list):
        return particles.generators[first_row]
    return generator


def _score(reward: Reward, batch: torch.Tensor, ledger: CostLedger) -> torch.Tensor:
    """Call the reward on a batch and check that it returned one finite (or -inf) score per row."""
    started = time.perf_counter()
    scores = reward(batch)
    ledger.add_reward(batch.shape[0], time.perf_counter() - started)
    scores = torch.as_tensor(scores).detach().to(device=batch.device, dtype=torch.float64)
    if scores.shape != (batch.shape[0],):
        raise ValueError(
            f"The reward must return one score per sample, shape ({batch.shape[0]},), got {tuple(scores.shape)}."
        )
    invalid = torch.isnan(scores) | (scores == math.inf)
    if invalid.any():
        raise ValueError(
            f"The reward returned NaN or +inf for samples {invalid.nonzero().flatten().tolist()}; rewards must be "
            "finite, or -inf to give a sample zero weight."
        )
    return scores


def _add_log_potential(log_weights: torch.Tensor, log_potential: torch.Tensor) -> torch.Tensor:
    """Multiply weights by potentials in log space; a particle of zero weight stays at zero (-inf - -inf is NaN)."""
    return torch.where(torch.isneginf(log_weights), log_weights, log_weights + log_potential)


def _select(
    method: Method,
    log_weights: torch.Tensor,
    rewards: torch.Tensor,
    num_outputs: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if method.select == "sample":
        return multinomial(log_weights, num_outputs, generator).cpu()
    # Particles of zero weight are out of the population, whatever their reward.
    eligible = torch.where(torch.isneginf(log_weights), -math.inf, rewards)
    return torch.topk(eligible.cpu(), num_outputs, sorted=True).indices
