"""The one steering loop, written once for the core API and every pipeline.

    particles = process.init(...)
    for step in process.steps():
        process.predict(particles, step)            # model output, and x0-hat where a potential reads it
        potentials from reward(x0-hat)              # only on the method's potential steps
        resample each group whose ESS is low        # one reindex moves every per-particle field
        process.transition(particles, step)         # scheduler.step, noise from the caller's generators
    final correction; select

Particles come in `num_groups` contiguous blocks of `method.num_particles` (one block per prompt in a pipeline).
Each block is its own particle system: weights are normalised, ESS is measured, resampling happens and outputs are
selected within the block, so particles never cross groups.

Log-weights are kept centred (each group's largest is 0) and what centring removes is carried in a per-group
log-offset, so huge tilts lose no precision and log Z = offset + log_mean_exp(log_weights) stays right.

Host syncs: the loop reads device values only where the weights change (reward steps: the reward check and one read
of every group's ESS), when it resamples, and at the end. Finiteness of the latents and of the model's outputs is
recorded on the device at every step but read only to explain an error.
"""

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from diffsteer.outputs import CostLedger, StepRecord
from diffsteer.processes.base import Generators, Process, Step
from diffsteer.smc.checks import check_callable, check_int, describe
from diffsteer.smc.particles import Particles
from diffsteer.smc.potentials import Potential
from diffsteer.smc.resampling import multinomial, resample
from diffsteer.smc.weights import centre, check_log_weights, ess_rows, log_mean_exp


# reward(batch) -> one score per row; see `check_scores`.
Reward = Callable[[torch.Tensor], Any]


class SMCMethod(Protocol):
    """What the SMC driver (`run_steering`) asks of a method: FK and best-of-N implement it."""

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


def check_scores(
    scores: Any, num_rows: int, what: str = "reward", *, item: str = "sample", first_row: int = 0
) -> torch.Tensor:
    """The scores a reward returned for `num_rows` rows, checked and as a float64 tensor of shape (num_rows,).

    Shapes (N,) and (N, 1) are accepted (a reward head often keeps its output dimension); tensors, numpy arrays and
    lists of numbers are accepted, on any device (the result stays there). Scores may be -inf (a hard constraint)
    but not NaN or +inf.

    Args:
        scores: what the reward returned.
        num_rows: how many rows it was given.
        what: the reward as messages name it ("reward", "reward 'clip'").
        item: what one row is in messages ("sample", "image").
        first_row: the index of the first row in the caller's batch, so that messages name rows as the caller counts
            them (a pipeline scores its particles chunk by chunk).

    Raises:
        TypeError: if `scores` is None or not numbers (strings, complex numbers, objects).
        ValueError: for another shape (the one the reward returned is named, not a flattened one), or for NaN or
            +inf scores (the rows are named).
    """
    expected = (
        f"one score per {item}: a tensor, array or list of {num_rows} numbers, shape ({num_rows},) or ({num_rows}, 1)"
    )
    if scores is None:
        raise TypeError(f"The {what} returned None; it must return {expected}.")
    try:
        tensor = scores.detach() if isinstance(scores, torch.Tensor) else torch.as_tensor(scores)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"The {what} returned {describe(scores)}; it must return {expected}.") from None
    if tensor.is_complex():
        raise TypeError(f"The {what} returned scores of dtype {tensor.dtype}; it must return {expected}.")
    if tuple(tensor.shape) not in ((num_rows,), (num_rows, 1)):
        raise ValueError(
            f"The {what} must return {expected}; it returned shape {tuple(tensor.shape)} for {num_rows} {item}s."
        )
    tensor = tensor.reshape(num_rows).to(torch.float64)
    # The sum is finite or -inf when no score is NaN or +inf (-inf scores alone sum to -inf): one reduction and one
    # read when all is well; the rows are looked for only otherwise (huge finite scores can also sum to +inf).
    total = float(tensor.sum())
    if math.isnan(total) or total == math.inf:
        invalid = torch.isnan(tensor) | (tensor == math.inf)
        if invalid.any():
            rows = (invalid.nonzero().flatten() + first_row).tolist()
            shown = str(rows[:10])[:-1] + (f", ... ({len(rows)} in all)]" if len(rows) > 10 else "]")
            raise ValueError(
                f"The {what} returned NaN or +inf for {item}s {shown}; rewards must be finite, or -inf to give a "
                f"{item} zero weight."
            )
    return tensor


@dataclass
class RunContext:
    """Everything a driver needs besides the method's settings: what the entry point (`diffsteer.sample`, a
    pipeline) hands to `method.run`.

    Attributes:
        process: the model and its schedule.
        reward: scores x0-hat at intermediate steps, (rows, *shape) -> (rows,).
        final_reward: scores finished samples (a pipeline decodes them with its full VAE).
        ledger: the cost ledger the run fills.
        num_groups: independent problems G (one per prompt), laid out in contiguous blocks of rows.
        generator: the source of every draw (a list of per-row generators only where a method says it takes one).
        latents: initial noise for G * method.num_particles rows, or None to draw it.
        conditioning: per-row tensors for G * method.num_particles rows (rows of a group are that group's copies).
        num_outputs: outputs selected per group.
        on_step_end: called after every transition with the step and the particles.
        gradient_reward: `gradient_reward(x0_hat_rows, rows)`, the reward of a chunk of x0-hat rows with autograd
            history (a pipeline decodes them through its VAE), for methods that follow the reward's gradient; None:
            `reward` itself, on the rows.
        gradient_chunk_size: rows per backward pass where the method sets none (a pipeline's `decode_batch_size`);
            None: all rows at once.
    """

    process: Process
    reward: Reward
    final_reward: Reward
    ledger: CostLedger
    num_groups: int = 1
    generator: Generators = None
    latents: torch.Tensor | None = None
    conditioning: Mapping[str, torch.Tensor] | None = None
    num_outputs: int = 1
    on_step_end: Callable[[Step, Particles], None] | None = None
    gradient_reward: Callable[[torch.Tensor, slice], torch.Tensor] | None = None
    gradient_chunk_size: int | None = None


def run_steering(
    process: Process,
    method: SMCMethod,
    reward: Reward,
    ledger: CostLedger,
    *,
    num_groups: int = 1,
    generator: Generators = None,
    latents: torch.Tensor | None = None,
    conditioning: Mapping[str, torch.Tensor] | None = None,
    num_outputs: int = 1,
    on_step_end: Callable[[Step, Particles], None] | None = None,
    final_reward: Reward | None = None,
    gradient_reward: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
    gradient_chunk_size: int | None = None,
) -> SteeringRun:
    """Run an SMC method (FK, best-of-N) over `process` with `num_groups` groups of `method.num_particles` particles.

    Args:
        process: the model and scheduler.
        method: FK, best-of-N, or anything with the `SMCMethod` protocol.
        reward: scores x0-hat (and the final samples), shape (G * N, *shape) -> (G * N,) (or (G * N, 1)); see
            `check_scores`.
        ledger: the cost ledger to fill (the caller counts model rows; the loop counts rewards and resampling).
        num_groups: number of independent particle systems G, laid out in contiguous blocks.
        generator: one generator for every draw, or one per particle row (diffusers' list convention): row i always
            draws its transition noise from `generator[i]`, whatever resampling copies into it, and a group's
            resampling draws from its first row's generator.
        latents: initial noise, shape (G * N, *shape).
        conditioning: per-particle tensors (leading dimension G * N) passed to the model as keyword arguments and
            re-indexed with the particles.
        num_outputs: outputs selected per group.
        on_step_end: called after every transition with the step and the particles (pipelines' callbacks).
        final_reward: scores the final samples (defaults to `reward`; a pipeline decodes them with its full VAE).
        gradient_reward: `gradient_reward(x0_hat_rows, rows)`, the reward of a chunk of x0-hat rows with autograd
            history, for methods that shift transitions by its gradient (defaults to `reward` on the rows).
        gradient_chunk_size: rows per backward pass where the method's guide sets none (None: all at once).

    Raises:
        TypeError, ValueError: for bad arguments, bad rewards (see `check_scores`), a group left without weight, or
            non-finite samples (the error says whether the model, the scheduler or the reward produced them).
    """
    num_particles = method.num_particles
    num_groups = check_int("num_groups", num_groups, minimum=1)
    num_outputs = _check_num_outputs(num_outputs, num_particles)
    check_callable("reward", reward, "a callable that scores a batch of samples")
    final_reward = reward if final_reward is None else final_reward
    total = num_groups * num_particles
    if isinstance(generator, list) and not all(isinstance(item, torch.Generator) for item in generator):
        raise TypeError(f"generator must be a torch.Generator, a list of them or None, got {describe(generator)}.")
    if isinstance(generator, list) and len(generator) != total:
        raise ValueError(
            f"A list of generators needs one per particle ({num_groups} groups x {num_particles} particles = "
            f"{total}), got {len(generator)}."
        )
    potential = method.make_potential()
    reward_steps = method.reward_steps(process.num_inference_steps)
    make_guide = getattr(method, "make_guide", None)  # reward-gradient methods shift the transitions
    guide = make_guide() if make_guide is not None else None
    gradient_reward = _rows_reward(reward) if gradient_reward is None else gradient_reward
    particles = process.init(total, generator, latents, conditioning)
    # Log-weights need no place among the particles: resampled groups become uniform, the others keep their order.
    # True log-weight = log_offsets[g] + log_weights[g, i], with each row's largest log-weight kept at 0.
    log_weights = torch.zeros(num_groups, num_particles, dtype=torch.float64, device=process.device)
    log_offsets = torch.zeros(num_groups, dtype=torch.float64, device=process.device)
    if potential is not None:
        particles.potential_state = potential.init_state(total, process.device)
    watch = _FiniteWatch()
    group_ess = (float(num_particles),) * num_groups  # the weights start uniform
    records: list[tuple[Step, bool, tuple[float, ...], tuple[bool, ...], torch.Tensor | None]] = []

    for step in process.steps():
        rewarded = potential is not None and step.at_boundary and step.full_step in reward_steps
        watch.record_input(step, particles.latents)
        guided = guide is not None and step.at_boundary
        if guided:
            rewards, gradient, kernel = _guided_predict(
                process, particles, step, guide, gradient_reward, ledger, gradient_chunk_size
            )
        else:
            process.predict(particles, step, with_x0_hat=rewarded)
        watch.record_output(particles.model_output)
        group_resampled = (False,) * num_groups
        ancestors = None
        if rewarded:
            if not guided:  # a guided step scored x0-hat already, on the way to its gradient
                rewards = _score(reward, particles.x0_hat, ledger, watch, f"x0-hat at step {step.index}")
            particles.x0_hat = None  # only the reward reads it, and the next prediction replaces it: not worth moving
            log_potential, particles.potential_state = potential.step(
                particles.potential_state, rewards, step.progress
            )
            log_weights, log_offsets = _reweight(log_weights, log_offsets, log_potential.view(num_groups, -1))
            group_ess = _group_ess(log_weights)
            group_resampled = tuple(method.should_resample(value, num_particles) for value in group_ess)
        if any(group_resampled):
            check_state = getattr(process, "check_particle_state", None)
            if check_state is not None:
                check_state(total)
            ancestors, log_weights, log_offsets = _resample_groups(
                particles, log_weights, log_offsets, group_resampled, method, generator
            )
            ledger.resampling_steps += 1
            if guided:
                gradient = gradient[ancestors.to(gradient.device)]
                kernel = None if kernel is None else kernel.take(ancestors)
        records.append((step, rewarded, group_ess, group_resampled, ancestors))
        # The weights only change at reward steps: until the next one, the ESS is what resampling left.
        group_ess = tuple(
            float(num_particles) if resampled else value
            for value, resampled in zip(group_ess, group_resampled, strict=True)
        )
        process.transition(particles, step, generator)
        if guided:
            shift = guide.shift(gradient, kernel)
            if shift is not None:
                particles.latents = particles.latents + shift
                if guide.proposal_ratio:
                    ratio = kernel.log_ratio(particles.latents, shift).view(num_groups, num_particles)
                    log_weights, log_offsets = _reweight(log_weights, log_offsets, ratio)
        if on_step_end is not None:
            on_step_end(step, particles)

    samples = particles.latents
    if not bool(torch.isfinite(samples).all()):
        raise ValueError(watch.explain("the final samples"))
    final_rewards = _score(final_reward, samples, ledger, watch, "the final samples").view(num_groups, num_particles)
    log_normalizers = None
    if potential is not None:
        correction = potential.final_correction(particles.potential_state, final_rewards.flatten())
        log_weights, log_offsets = _reweight(log_weights, log_offsets, correction.view(num_groups, num_particles))
        log_normalizers = log_offsets + log_mean_exp(log_weights, dim=-1)
    log_weights = _normalize_groups(log_weights)
    selected = []
    for g in range(num_groups):
        start = g * num_particles
        group_generator = _group_generator(particles, generator, start)
        group = f" of group {g}" if num_groups > 1 else ""
        selected.append(start + _select(method, log_weights[g], final_rewards[g], num_outputs, group_generator, group))
    ledger.stop()
    return SteeringRun(
        samples=samples,
        log_weights=log_weights,
        rewards=final_rewards,
        log_normalizers=log_normalizers,
        selected_indices=torch.stack(selected),
        trace=_trace(records),
        cost=ledger,
        changes=list(process.changes),
    )


def _rows_reward(reward: Reward) -> Callable[[torch.Tensor, slice], torch.Tensor]:
    """The reward as the differentiable path calls it, on a chunk of rows."""

    def on_rows(x0_hat: torch.Tensor, rows: slice) -> torch.Tensor:
        return reward(x0_hat)

    on_rows.__name__ = getattr(reward, "__name__", None) or type(reward).__name__  # errors name the reward
    return on_rows


def _guided_predict(
    process: Process,
    particles: Particles,
    step: Step,
    guide: Any,
    gradient_reward: Callable[[torch.Tensor, slice], torch.Tensor],
    ledger: CostLedger,
    default_chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """The model call of a guided step: the rewards of x0-hat, their gradients with respect to the latents and,
    where the guide needs it, the step's Gaussian kernel (read before the transition moves anything)."""
    predict_with_gradient = getattr(process, "predict_with_gradient", None)
    if predict_with_gradient is None:
        raise TypeError(f"{type(process).__name__} has no predict_with_gradient, which reward guidance needs.")
    rows_before, model_seconds = ledger.model_rows, ledger.model_time_s
    started = time.perf_counter()
    rewards, gradient = predict_with_gradient(
        particles,
        step,
        gradient_reward,
        through_model=guide.through_model,
        chunk_size=guide.chunk_size if guide.chunk_size is not None else default_chunk_size,
        what=f"reward {_name(gradient_reward)}",
    )
    if guide.through_model:
        ledger.add_backward(ledger.model_rows - rows_before)
    # The reward's time is the gradient pass's less the model's (its forward, timed by the model's counter).
    seconds = time.perf_counter() - started - (ledger.model_time_s - model_seconds)
    ledger.add_reward(particles.num_particles, max(seconds, 0.0))
    rewards = check_scores(rewards, particles.num_particles, f"reward {_name(gradient_reward)}").to(process.device)
    kernel = process.kernel(particles, step) if guide.needs_kernel else None
    return rewards, gradient, kernel


def _check_num_outputs(num_outputs: Any, num_particles: int) -> int:
    num_outputs = check_int("num_outputs", num_outputs, minimum=1)
    if num_outputs > num_particles:
        raise ValueError(
            f"num_outputs must be an integer in [1, num_particles={num_particles}], got {num_outputs}: outputs are "
            "selected from the particles, so raise num_particles or ask for fewer outputs."
        )
    return num_outputs


def _reweight(
    log_weights: torch.Tensor, log_offsets: torch.Tensor, log_potential: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiply weights by potentials in log space and re-centre each group, moving the shift into its offset.

    A particle of zero weight stays at zero (-inf + +inf would be NaN).
    """
    log_weights = torch.where(torch.isneginf(log_weights), log_weights, log_weights + log_potential)
    log_weights, shift = centre(log_weights)
    return log_weights, log_offsets + shift


def _group_ess(log_weights: torch.Tensor) -> tuple[float, ...]:
    """The ESS of every group in one host sync; raises, naming the group, for a group no scheme can use."""
    values = ess_rows(log_weights).tolist()
    for g, value in enumerate(values):
        if not math.isfinite(value):  # all -inf, or NaN / +inf weights: let the check say which
            _check_group(log_weights, g)
    return tuple(values)


def _normalize_groups(log_weights: torch.Tensor) -> torch.Tensor:
    """Log-weights normalised within each group (one host sync), or the error of the first group that cannot be."""
    log_sums = torch.logsumexp(log_weights, dim=-1, keepdim=True)
    for g, value in enumerate(log_sums.flatten().tolist()):
        if not math.isfinite(value):
            _check_group(log_weights, g)
    return log_weights - log_sums


def _check_group(log_weights: torch.Tensor, group: int) -> None:
    try:
        check_log_weights(log_weights[group])
    except ValueError as error:
        if log_weights.shape[0] == 1:
            raise
        raise ValueError(f"Group {group}: {error}") from None


def _resample_groups(
    particles: Particles,
    log_weights: torch.Tensor,
    log_offsets: torch.Tensor,
    group_resampled: tuple[bool, ...],
    method: SMCMethod,
    generator: Generators,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resample the groups that asked for it (the others keep their particles) and reindex everything once.

    Returns the flat ancestor indices, the new log-weights and offsets: a resampled group's weights are reset to
    their log-mean, not to zero, so that the final weights still estimate log Z; with centred weights that log-mean
    goes into the offset and the weights become 0.
    """
    num_groups, num_particles = log_weights.shape
    ancestors = torch.arange(num_groups * num_particles)
    host_log_weights = log_weights.cpu()  # the ancestors go to the host anyway; one copy serves every group
    for g, resampled in enumerate(group_resampled):
        if not resampled:
            continue
        start = g * num_particles
        group_generator = _group_generator(particles, generator, start)
        picked = resample(host_log_weights[g], num_particles, method.resampling, group_generator)
        ancestors[start : start + num_particles] = start + picked.cpu()
    mask = torch.tensor(group_resampled, device=log_weights.device)
    log_offsets = torch.where(mask, log_offsets + log_mean_exp(log_weights, dim=-1), log_offsets)
    log_weights = torch.where(mask.unsqueeze(-1), 0.0, log_weights)
    particles.reindex(ancestors)
    return ancestors, log_weights, log_offsets


def _group_generator(particles: Particles, generator: Generators, first_row: int) -> torch.Generator | None:
    """The generator for a group's own draws: the caller's single generator, or the group's first row's."""
    if isinstance(generator, list):
        return generator[first_row]
    return generator


def _score(reward: Reward, batch: torch.Tensor, ledger: CostLedger, watch: "_FiniteWatch", what: str) -> torch.Tensor:
    """Call the reward on a batch and check its scores (`check_scores`).

    If the reward fails or returns NaN because its input was already non-finite, the error says where that came
    from (the model, the scheduler, the initial noise), not that the reward is at fault.
    """
    started = time.perf_counter()
    try:
        scores = reward(batch)
        ledger.add_reward(batch.shape[0], time.perf_counter() - started)
        scores = check_scores(scores, batch.shape[0], f"reward {_name(reward)}")
    except Exception as error:
        if bool(torch.isfinite(batch).all()):  # the error path only: the reward's input was fine, so is its error
            raise
        raise ValueError(watch.explain(what)) from error
    return scores.to(batch.device)


def _select(
    method: SMCMethod,
    log_weights: torch.Tensor,
    rewards: torch.Tensor,
    num_outputs: int,
    generator: torch.Generator | None,
    group: str,
) -> torch.Tensor:
    if method.select == "sample":
        # Independent draws from the weighted population, with replacement: the faithful sample of the tilted
        # target, in which a heavy particle can be drawn more than once (select="best" gives distinct particles).
        return multinomial(log_weights, num_outputs, generator).cpu()
    # Particles of zero weight are out of the population, whatever their reward.
    eligible = torch.where(torch.isneginf(log_weights), -math.inf, rewards).cpu()
    allowed = int((~torch.isneginf(eligible)).sum())
    if allowed == 0:
        raise ValueError(
            f"Every particle{group} has a final reward of -inf (or zero weight), so there is nothing to select: a "
            "reward of -inf forbids a sample. Check the reward, or what it forbids."
        )
    if allowed < num_outputs:
        raise ValueError(
            f"Only {allowed} of the particles{group} have a finite final reward and a non-zero weight, fewer than the "
            f"{num_outputs} outputs asked for; the others were forbidden (a reward of -inf) and are never returned. "
            "Ask for fewer outputs, or run more particles."
        )
    return torch.topk(eligible, num_outputs, sorted=True).indices


def _trace(
    records: list[tuple[Step, bool, tuple[float, ...], tuple[bool, ...], torch.Tensor | None]],
) -> list[StepRecord]:
    """The step records, with every timestep read from the device in one go (not one host sync per step)."""
    if not records:
        return []
    timesteps = torch.stack([torch.as_tensor(record[0].timestep) for record in records]).cpu().double().tolist()
    return [
        StepRecord(step.index, timestep, rewarded, min(ess), any(resampled), ancestors, ess, resampled)
        for (step, rewarded, ess, resampled, ancestors), timestep in zip(records, timesteps, strict=True)
    ]


def _name(reward: Reward) -> str:
    """A function's name, or a callable object's class name, for messages."""
    return repr(getattr(reward, "__name__", None) or type(reward).__name__)


class _FiniteWatch:
    """Where non-finite values first appeared: recorded on the device at every model call, read only to explain an
    error (so the record adds no host sync to a run that goes well)."""

    def __init__(self) -> None:
        self._steps: list[Step] = []
        self._inputs: list[torch.Tensor] = []  # were the latents the model saw finite, per call
        self._outputs: list[torch.Tensor] = []  # was the model's output finite, per call

    # A sum is finite exactly when every entry is (short of overflowing float32, which latents and model outputs do
    # not come near), and it is one reduction where `isfinite(x).all()` is two: this runs at every model call.
    def record_input(self, step: Step, latents: torch.Tensor) -> None:
        self._steps.append(step)
        self._inputs.append(latents.sum())

    def record_output(self, model_output: torch.Tensor) -> None:
        self._outputs.append(model_output.sum())

    def explain(self, what: str) -> str:
        """Why `what` (x0-hat at a step, or the final samples) is not finite: the first model call whose input or
        output was not finite, or else the scheduler's own arithmetic. Reads the record: one host sync."""
        advice = (
            "This is not the reward's fault: check the model, its dtype (float16 overflows to inf where float32 does "
            "not), and the scheduler (its prediction_type and timesteps)."
        )
        subject = f"The reward's input ({what}) is not finite"
        inputs = torch.isfinite(torch.stack(self._inputs)).tolist() if self._inputs else []
        outputs = torch.isfinite(torch.stack(self._outputs)).tolist() if self._outputs else []
        for k, step in enumerate(self._steps):
            at = f"step {step.index} (timestep {float(step.timestep):g})"
            if not inputs[k]:
                if k == 0:
                    return f"{subject}: the initial latents x_T were already NaN or inf. {advice}"
                return (
                    f"{subject}: the latents became NaN or inf in the transition before {at} (the scheduler's step, "
                    f"or an on_step_end callback), although the model's outputs were finite until then. {advice}"
                )
            if k < len(outputs) and not outputs[k]:
                return f"{subject}: the model (denoiser) produced NaN or inf at {at}, from finite latents. {advice}"
        if what == "the final samples":
            return (
                f"{subject}: the scheduler's last step produced NaN or inf, although every model output was finite. "
                f"{advice}"
            )
        return (
            f"{subject}, although the model's output and the latents were finite: the scheduler's conversion of the "
            f"model output to x0-hat divides by zero or overflows there. {advice}"
        )
