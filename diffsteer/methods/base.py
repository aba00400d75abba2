"""What every method is to the entry points, and the pieces the search drivers share.

A method is a frozen settings object with a few hooks; the drivers own the mechanism:

- `run(ctx)` runs the method on a `diffsteer.loop.RunContext` and returns a `SteeringRun`. FK and best-of-N hand
  themselves to the SMC driver (`diffsteer.loop.run_steering`); zero-order search and search over paths to the
  rounds driver (`diffsteer.methods.search`); SVDD and rollover budget forcing to the per-step branching driver
  (`diffsteer.methods.branching`).
- `num_particles`: the rows per group the method starts from and returns (its population).
- `model_passes(num_inference_steps, num_model_calls)`: the particle-model calls the method spends per group, which
  its budget is checked against (one plain sample spends `num_model_calls`).
- `settings()`: its settings as plain values, for `summary.json` and benchmarks.
- `requires_stochastic`, `takes_generator_lists`: what the entry points check before any work.

The entry points never test a method's type: anything with these hooks runs.
"""

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any, Protocol, runtime_checkable

import torch

from diffsteer.loop import RunContext, SteeringRun, _name, check_scores
from diffsteer.processes.base import Step
from diffsteer.smc.particles import Particles


@runtime_checkable
class Method(Protocol):
    """The hooks an entry point uses (see the module docstring)."""

    name: str
    num_particles: int
    requires_stochastic: bool
    takes_generator_lists: bool

    def run(self, ctx: RunContext) -> SteeringRun: ...

    def model_passes(self, num_inference_steps: int, num_model_calls: int) -> int: ...

    def settings(self) -> dict[str, Any]: ...


def check_method(method: Any, allowed: str) -> None:
    """Raise a `TypeError` naming what is allowed unless `method` has the hooks of `Method`."""
    from diffsteer.smc.checks import describe

    if not (callable(getattr(method, "run", None)) and hasattr(method, "num_particles")):
        raise TypeError(f"method must be {allowed}, got {describe(method)}.")


def run_method(method: Any, ctx: RunContext) -> SteeringRun:
    """`method.run(ctx)`, with the ledger completed: rows per particle call, one plain sample's rows, the budget."""
    ledger, process = ctx.ledger, ctx.process
    calls_before = getattr(process, "particle_calls", 0)
    if isinstance(ctx.generator, list) and not method.takes_generator_lists:
        refuse_generator_lists(ctx, type(method).__name__)
    from diffsteer.smc.checks import check_int

    num_outputs = check_int("num_outputs", ctx.num_outputs, minimum=1)
    if num_outputs > method.num_particles:
        raise ValueError(
            f"num_outputs must be an integer in [1, num_particles={method.num_particles}], got {num_outputs}: outputs "
            f"are selected from the {method.num_particles} samples per group that {type(method).__name__} returns, "
            "so raise its particle count or ask for fewer outputs."
        )
    run = method.run(ctx)
    particle_calls = getattr(process, "particle_calls", 0) - calls_before
    ledger.particle_calls = particle_calls
    ledger.num_groups = ctx.num_groups
    rows_per_call = ledger.model_rows / particle_calls if particle_calls else 1.0
    ledger.plain_model_rows = round(process.num_model_calls * rows_per_call)
    ledger.budget = getattr(method, "budget", None)
    return run


def set_field(method: Any, name: str, value: Any) -> None:
    """Store a checked value (a plain int or float for numpy scalars) on a frozen dataclass."""
    object.__setattr__(method, name, value)


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Where `generator` draws (torch's default generator draws on the CPU)."""
    return generator.device if generator is not None else torch.device("cpu")


def settings_of(method: Any) -> dict[str, Any]:
    """A frozen dataclass method's fields as plain values (callables by name), without the budget it was made for."""
    values = {}
    for field in fields(method):
        if field.name == "budget":
            continue
        value = getattr(method, field.name)
        values[field.name] = getattr(value, "__name__", repr(value)) if callable(value) else value
    return values


def window_calls(start: int, stop: int, num_inference_steps: int, num_model_calls: int) -> int:
    """Model calls of full steps start .. stop - 1: one each for first-order solvers; two each for order-2 solvers
    (which make 2T - 1 calls in all), except the last step, which makes one."""
    if num_model_calls == num_inference_steps:
        return stop - start
    return 2 * (stop - start) - (1 if stop == num_inference_steps else 0)


def group_conditioning(ctx: RunContext, rows_per_group: int) -> dict[str, torch.Tensor]:
    """The context's conditioning (laid out for `num_particles` rows per group) as one row per group, from each
    group's first row."""
    conditioning = dict(ctx.conditioning or {})
    if not conditioning:
        return {}
    first_rows = torch.arange(ctx.num_groups) * rows_per_group
    return {name: value.index_select(0, first_rows.to(value.device)) for name, value in conditioning.items()}


def repeat_rows(values: dict[str, torch.Tensor], repeats: int) -> dict[str, torch.Tensor]:
    """Each row of each tensor repeated `repeats` times in place (group-major blocks)."""
    return {name: value.repeat_interleave(repeats, dim=0) for name, value in values.items()}


def refuse_generator_lists(ctx: RunContext, method_name: str) -> None:
    if isinstance(ctx.generator, list):
        raise ValueError(
            f"{method_name} changes how many rows it runs from step to step, so it draws from one generator: pass a "
            "single torch.Generator (not a list of them)."
        )


def denoise(
    ctx: RunContext,
    particles: Particles,
    start: int,
    stop: int,
    *,
    trace: list[Step],
) -> bool:
    """Run full steps start .. stop - 1 from `particles` (in place); False if the run was interrupted."""
    process = ctx.process
    expected = _expected_calls(process, start, stop)
    done = 0
    for step in process.steps(start, stop):
        process.predict(particles, step, with_x0_hat=False)
        process.transition(particles, step, ctx.generator)
        trace.append(step)
        done += 1
        if ctx.on_step_end is not None:
            ctx.on_step_end(step, particles)
    return done == expected


def _expected_calls(process: Any, start: int, stop: int) -> int:
    return window_calls(start, stop, process.num_inference_steps, process.num_model_calls)


def score(
    reward: Callable[[torch.Tensor], Any],
    batch: torch.Tensor,
    ctx: RunContext,
    what: str,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rewards of a batch as float64 on the batch's device, counted in the ledger and checked (`check_scores`).

    `groups` (each row's group) is passed to rewards that declare `takes_row_groups` (a pipeline's scorer, which
    reads each row's prompt); without it a batch is equal contiguous blocks, one per group.
    """
    import time

    if not bool(torch.isfinite(batch).all()):
        raise ValueError(
            f"The reward's input ({what}) is not finite: the model or the scheduler produced NaN or inf. Check the "
            "model, its dtype (float16 overflows where float32 does not) and the scheduler."
        )
    started = time.perf_counter()
    scores = reward(batch, groups=groups) if getattr(reward, "takes_row_groups", False) else reward(batch)
    ctx.ledger.add_reward(batch.shape[0], time.perf_counter() - started)
    return check_scores(scores, batch.shape[0], f"reward {_name(reward)}").to(batch.device)


class Archive:
    """The best `size` finished samples seen so far in each group (the running best across rounds, not the best of
    the last round)."""

    def __init__(self, num_groups: int, size: int) -> None:
        self.num_groups, self.size = num_groups, size
        self.samples: list[torch.Tensor | None] = [None] * num_groups
        self.rewards: list[torch.Tensor | None] = [None] * num_groups

    def add(self, samples: torch.Tensor, rewards: torch.Tensor) -> None:
        """Offer `samples` (group-major, the same number per group) with their rewards."""
        per_group = samples.shape[0] // self.num_groups
        for g in range(self.num_groups):
            rows = slice(g * per_group, (g + 1) * per_group)
            new_samples, new_rewards = samples[rows], rewards[rows]
            if self.samples[g] is not None:
                new_samples = torch.cat([self.samples[g], new_samples])
                new_rewards = torch.cat([self.rewards[g], new_rewards])
            # Stable: among equal rewards, the earlier sample stays first.
            order = torch.sort(new_rewards, descending=True, stable=True).indices[: self.size]
            self.samples[g], self.rewards[g] = new_samples[order.to(new_samples.device)], new_rewards[order]

    @property
    def filled(self) -> int:
        """Rows every group holds."""
        return min((0 if rewards is None else rewards.numel()) for rewards in self.rewards)


def search_run(ctx: RunContext, archive: Archive, trace: list[Step]) -> SteeringRun:
    """A search's result: each group's archive (best first) as the population, with uniform weights (a search does
    not sample the tilted target), the top `num_outputs` selected."""
    from diffsteer.outputs import StepRecord

    size = archive.filled
    if size < ctx.num_outputs:
        raise ValueError(
            f"The search finished {size} samples per group before it stopped, fewer than the {ctx.num_outputs} "
            "outputs asked for (an interrupt stops it early): ask for fewer outputs."
        )
    samples = torch.cat([group[:size] for group in archive.samples])
    rewards = torch.stack([group[:size] for group in archive.rewards])
    if torch.isneginf(rewards[:, 0]).any():
        group = int(torch.isneginf(rewards[:, 0]).nonzero()[0])
        raise ValueError(
            f"Every sample the search finished{f' for group {group}' if ctx.num_groups > 1 else ''} has a reward of "
            "-inf, so there is nothing to select: a reward of -inf forbids a sample. Check the reward."
        )
    log_weights = torch.full((ctx.num_groups, size), -math.log(size), dtype=torch.float64, device=rewards.device)
    selected = torch.arange(ctx.num_outputs).repeat(ctx.num_groups, 1) + (torch.arange(ctx.num_groups) * size)[:, None]
    timesteps = (
        torch.stack([torch.as_tensor(step.timestep) for step in trace]).cpu().double().tolist() if trace else []
    )
    records = [
        StepRecord(step.index, t, False, float(size), False, None, (float(size),) * ctx.num_groups)
        for step, t in zip(trace, timesteps, strict=True)
    ]
    ctx.ledger.stop()
    return SteeringRun(
        samples=samples,
        log_weights=log_weights,
        rewards=rewards,
        log_normalizers=None,
        selected_indices=selected,
        trace=records,
        cost=ctx.ledger,
        changes=list(ctx.process.changes),
    )
