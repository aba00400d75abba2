"""The one sampling loop, for any model callable and diffusers scheduler (no pipeline needed)."""

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffsteer.methods.fk import FK, BestOfN
from diffsteer.outputs import CostLedger, SamplingResult, StepRecord
from diffsteer.processes.scheduler_process import Model, SchedulerProcess
from diffsteer.smc.resampling import multinomial, resample
from diffsteer.smc.weights import ess, log_mean_exp, normalize


Reward = Callable[[torch.Tensor], Any]
Method = FK | BestOfN


def sample(
    model: Model,
    scheduler: SchedulerMixin,
    *,
    shape: tuple[int, ...],
    method: Method,
    reward: Reward,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    step_kwargs: dict[str, Any] | None = None,
    stochastic: str = "auto",
    num_outputs: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SamplingResult:
    """Sample with inference-time steering.

    Args:
        model (`Callable[[Tensor, Tensor], Tensor]`): `model(sample, timestep) -> model_output`, where the output is
            epsilon, v or the sample as `scheduler.config.prediction_type` says (velocity for flow matching).
        scheduler (`SchedulerMixin`): a diffusers scheduler; it is copied, never mutated.
        shape (`tuple[int, ...]`): shape of one sample.
        method (`FK` or `BestOfN`): the steering method and its particle count.
        reward (`Callable[[Tensor], Tensor]`): scores a batch (N, *shape) of x0-hat (or final samples) with N
            rewards; higher is better. Rewards may be -inf (zero weight) but not NaN or +inf.
        num_inference_steps (`int`): solver steps.
        generator (`torch.Generator`, *optional*): the source of every random draw (initial noise, transition
            noise, resampling). Same generator seed, same output.
        latents (`Tensor`, *optional*): initial noise of shape (N, *shape), already scaled by `init_noise_sigma`.
        step_kwargs (`dict`, *optional*): extra arguments for `scheduler.step` (for example `{"eta": 1.0}`).
        stochastic (`str`, defaults to `"auto"`): for methods that need a stochastic transition (FK): `"auto"`
            switches a deterministic scheduler to its stochastic variant (listed in `result.changes`),
            `"require"` raises instead, `"off"` runs the scheduler as given.
        num_outputs (`int`, defaults to `1`): how many samples `select` returns in `result.selected`.
        device, dtype: where and in which precision samples live.

    Returns:
        [`~diffsteer.outputs.SamplingResult`]
    """
    if not isinstance(method, FK | BestOfN):
        raise ValueError(f"method must be diffsteer.FK(...) or diffsteer.BestOfN(...), got {method!r}.")
    if not callable(reward):
        raise ValueError(f"reward must be a callable that scores a batch of samples, got {reward!r}.")
    num_particles = method.num_particles
    if not isinstance(num_outputs, int) or not 1 <= num_outputs <= num_particles:
        raise ValueError(f"num_outputs must be an integer in [1, num_particles={num_particles}], got {num_outputs!r}.")
    if not method.requires_stochastic and stochastic == "auto":
        stochastic = "off"
    ledger = CostLedger()
    process = SchedulerProcess(
        _counting(model, ledger),
        scheduler,
        shape=shape,
        num_inference_steps=num_inference_steps,
        step_kwargs=step_kwargs,
        stochastic=stochastic,
        device=device,
        dtype=dtype,
    )
    with torch.no_grad():
        return _run(process, method, reward, ledger, generator, latents, num_outputs)


def _run(
    process: SchedulerProcess,
    method: Method,
    reward: Reward,
    ledger: CostLedger,
    generator: torch.Generator | None,
    latents: torch.Tensor | None,
    num_outputs: int,
) -> SamplingResult:
    num_particles = method.num_particles
    potential = method.make_potential()
    reward_steps = method.reward_steps(process.num_inference_steps)
    particles = process.init(num_particles, generator, latents)
    particles.log_weights = torch.zeros(num_particles, dtype=torch.float64, device=process.device)
    if potential is not None:
        particles.potential_state = potential.init_state(num_particles, process.device)
    trace: list[StepRecord] = []

    for step in process.steps():
        process.predict(particles, step)
        rewarded = potential is not None and step.at_boundary and step.full_step in reward_steps
        resampled, ancestors = False, None
        if rewarded:
            rewards = _score(reward, particles.x0_hat, ledger)
            log_potential, particles.potential_state = potential.step(
                particles.potential_state, rewards, step.progress
            )
            particles.log_weights = _add_log_potential(particles.log_weights, log_potential)
        current_ess = ess(particles.log_weights)
        if rewarded and method.should_resample(current_ess, num_particles):
            process.check_particle_state(num_particles)
            ancestors = resample(particles.log_weights, num_particles, method.resampling, generator)
            log_mean = log_mean_exp(particles.log_weights)
            particles.reindex(ancestors)
            # Reset to the log-mean, not to zero, so log_mean_exp(log_weights) keeps estimating log Z.
            particles.log_weights = torch.full_like(particles.log_weights, float(log_mean))
            resampled = True
            ledger.resampling_steps += 1
        trace.append(StepRecord(step.index, float(step.timestep), rewarded, current_ess, resampled, ancestors))
        process.transition(particles, step, generator)

    samples = particles.latents
    final_rewards = _score(reward, samples, ledger)
    log_weights = particles.log_weights
    if potential is not None:
        log_weights = _add_log_potential(
            log_weights, potential.final_correction(particles.potential_state, final_rewards)
        )
    log_normalizer = float(log_mean_exp(log_weights)) if potential is not None else None
    log_weights = normalize(log_weights)
    selected_indices = _select(method, log_weights, final_rewards, num_outputs, generator)
    ledger.stop()
    return SamplingResult(
        samples=samples,
        log_weights=log_weights,
        rewards=final_rewards,
        log_normalizer=log_normalizer,
        selected=samples[selected_indices.to(samples.device)],
        selected_indices=selected_indices,
        trace=trace,
        cost=ledger,
        changes=list(process.changes),
    )


def _counting(model: Model, ledger: CostLedger) -> Model:
    def counted(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        ledger.add_model(sample.shape[0])
        return model(sample, timestep)

    return counted


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
        return multinomial(log_weights, num_outputs, generator)
    # Particles of zero weight are out of the population, whatever their reward.
    eligible = torch.where(torch.isneginf(log_weights), -math.inf, rewards)
    return torch.topk(eligible.cpu(), num_outputs, sorted=True).indices
