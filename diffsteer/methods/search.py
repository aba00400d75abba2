"""Noise search on the rounds driver: zero-order search and search over paths (Ma et al., 2025).

A round proposes starting points (initial noises, or states re-noised from a noise level), runs windows of the
process from them, and scores what it reached; the running best finished samples of every group are kept across
rounds (`Archive`), not the best of the last round.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from diffsteer.loop import RunContext, SteeringRun
from diffsteer.methods.base import (
    Archive,
    denoise,
    generator_device,
    group_conditioning,
    repeat_rows,
    score,
    search_run,
    set_field,
    settings_of,
    window_calls,
)
from diffsteer.processes.base import Step
from diffsteer.smc.checks import check_int, check_number


def neighbours(pivots: torch.Tensor, count: int, radius: float, generator: torch.Generator | None) -> torch.Tensor:
    """`count` noises around each pivot at angle `radius` (radians) from it, with the pivot's norm.

    For a pivot x (one row, flattened): u = x / |x|, w = the unit part of v ~ N(0, I) orthogonal to u, and the
    neighbour is |x| (cos(radius) u + sin(radius) w). It lies on the sphere of radius |x|, where Gaussian noise of
    this dimension concentrates, so the model sees noise of the norm it was trained on. Computed in float64.

    Returns:
        Shape (len(pivots) * count, *pivots.shape[1:]), each pivot's neighbours contiguous.
    """
    flat = pivots.reshape(pivots.shape[0], -1).to(torch.float64)
    norms = flat.norm(dim=1, keepdim=True)
    units = (flat / norms).repeat_interleave(count, dim=0)
    draws = torch.randn(units.shape, generator=generator, dtype=torch.float64, device=generator_device(generator))
    draws = draws.to(units.device)
    orthogonal = draws - (draws * units).sum(dim=1, keepdim=True) * units
    orthogonal = orthogonal / orthogonal.norm(dim=1, keepdim=True)
    moved = norms.repeat_interleave(count, dim=0) * (math.cos(radius) * units + math.sin(radius) * orthogonal)
    return moved.reshape(-1, *pivots.shape[1:]).to(pivots.dtype)


@dataclass(frozen=True)
class ZeroOrder:
    """Zero-order search (Ma et al., 2025): a pivot noise and neighbours around it; the best neighbour becomes the
    pivot, and when no neighbour improves on the pivot, the search restarts from fresh noise.

    Each round runs whole trajectories of its candidates and scores the finished samples. The first round runs the
    pivot and `num_neighbors` neighbours; a round after an improvement runs `num_neighbors` neighbours of the new
    pivot; a round after none runs fresh noise and `num_neighbors - 1` neighbours of it (the fresh noise is then
    judged in the round, like the first pivot). That answers the fixed point tt-scale-flux users reported: a search
    that keeps a pivot no neighbour beats only re-draws the same neighbourhood. Cost per group: (1 + num_neighbors *
    num_rounds) plain samples.

    Args:
        num_rounds (`int`, defaults to 4): rounds R.
        num_neighbors (`int`, defaults to 2): neighbours K per round (ZO-2, as in the paper's text-to-image runs).
        radius (`float`, defaults to acos(0.95) = 0.318): the angle in radians between a neighbour and its pivot
            (tt-scale-flux's cosine threshold 0.95), in (0, pi / 2].
        budget (`float`, *optional*): the budget `diffsteer.make_method` built it for, in plain samples.

    The population it returns (per group) is the best `num_neighbors + 1` finished samples of all rounds.
    """

    num_rounds: int = 4
    num_neighbors: int = 2
    radius: float = math.acos(0.95)
    budget: float | None = field(default=None, compare=False)

    name = "zero-order"
    requires_stochastic = False
    takes_generator_lists = False

    def __post_init__(self) -> None:
        set_field(self, "num_rounds", check_int("num_rounds", self.num_rounds, minimum=1))
        set_field(self, "num_neighbors", check_int("num_neighbors", self.num_neighbors, minimum=1))
        radius = check_number(
            "radius",
            self.radius,
            minimum=0.0,
            maximum=math.pi / 2,
            minimum_open=True,
            hint="It is the angle in radians between a neighbour and its pivot; acos(0.95) = 0.318 is the default.",
        )
        set_field(self, "radius", radius)

    @property
    def num_particles(self) -> int:
        return self.num_neighbors + 1

    def model_passes(self, num_inference_steps: int, num_model_calls: int) -> int:
        return (1 + self.num_neighbors * self.num_rounds) * num_model_calls

    def settings(self) -> dict[str, Any]:
        return settings_of(self)

    def run(self, ctx: RunContext) -> SteeringRun:
        process, num_groups, k = ctx.process, ctx.num_groups, self.num_neighbors
        conditioning = group_conditioning(ctx, self.num_particles)
        if ctx.latents is not None:
            pivots = ctx.latents[:: self.num_particles].clone()
        else:
            pivots = process.init(num_groups, ctx.generator).latents
        archive, trace = Archive(num_groups, self.num_particles), []
        pivot_rewards = torch.full((num_groups,), -math.inf, dtype=torch.float64)
        fresh = torch.ones(num_groups, dtype=torch.bool)  # the pivot is judged in this round (first, or restart)
        for round_index in range(self.num_rounds):
            # Every group runs the same count: K + 1 in the first round (pivot and neighbours), then K (K neighbours,
            # or after no improvement fresh noise and K - 1 of its neighbours), so the groups run as one batch.
            candidates = []
            for g in range(num_groups):
                restart = round_index > 0 and bool(fresh[g])
                if restart:
                    pivots[g] = process.init(1, ctx.generator).latents[0]
                base = pivots[g : g + 1] if fresh[g] else pivots[g : g + 1][:0]
                around = neighbours(pivots[g : g + 1], k - int(restart), self.radius, ctx.generator)
                candidates.append(torch.cat([base, around]))
            count = candidates[0].shape[0]
            result = self._run_candidates(ctx, torch.cat(candidates), conditioning, trace)
            if result is None:
                break  # interrupted
            samples, rewards = result[0], result[1].cpu()
            archive.add(samples, rewards)
            for g in range(num_groups):
                rows, starting = rewards[g * count : (g + 1) * count], candidates[g]
                if fresh[g]:
                    pivot_rewards[g] = rows[0]
                    rows, starting = rows[1:], starting[1:]
                best = int(torch.argmax(rows)) if rows.numel() else -1
                improved = best >= 0 and rows[best] > pivot_rewards[g]
                if improved:
                    pivots[g], pivot_rewards[g] = starting[best], rows[best]
                fresh[g] = not improved
        return search_run(ctx, archive, trace)

    def _run_candidates(
        self, ctx: RunContext, noises: torch.Tensor, conditioning: dict[str, torch.Tensor], trace: list[Step]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Finished samples and final rewards of whole runs from `noises` (equal blocks per group), or None if the
        run was interrupted."""
        process = ctx.process
        rows = repeat_rows(conditioning, noises.shape[0] // ctx.num_groups)
        particles = process.init(noises.shape[0], ctx.generator, latents=noises, conditioning=rows)
        if not denoise(ctx, particles, 0, process.num_inference_steps, trace=trace):
            return None
        return particles.latents, score(ctx.final_reward, particles.latents, ctx, "the final samples")


@dataclass(frozen=True)
class Paths:
    """Search over paths (Ma et al., 2025): `num_paths` noises denoised to a low noise level, each re-noised forward
    into `num_branches` branches, denoised again, the top `num_paths` kept by the reward of their x0-hat; repeated
    until the end of the schedule, where the survivors' final rewards pick the result.

    Noise levels are fractions of the schedule's full steps: the search starts when `start` of it is left
    (full step T - round(start T)); a hop re-noises `forward` of it back (round(forward T) steps, with the process's
    own forward kernel) and denoises `backward` of it (at least one step more than it re-noised). The defaults are
    the paper's sigma = 0.11, delta_f = 0.78, delta_b = 0.81. On a T-step schedule a hop costs
    round(backward T) + 1 model calls per branch (the extra call gives x0-hat where the hop ends short of the
    end); the paper's own runs took 4 coarse ODE steps per hop, which a fixed schedule cannot.

    Args:
        num_paths (`int`, defaults to 2): paths N kept (Paths-2).
        num_branches (`int`, defaults to 4): branches M per path and hop.
        start, forward, backward (`float`): as above, in (0, 1].
        budget (`float`, *optional*): the budget `diffsteer.make_method` built it for, in plain samples.
    """

    num_paths: int = 2
    num_branches: int = 4
    start: float = 0.11
    forward: float = 0.78
    backward: float = 0.81
    budget: float | None = field(default=None, compare=False)

    name = "paths"
    requires_stochastic = False
    takes_generator_lists = False

    def __post_init__(self) -> None:
        set_field(self, "num_paths", check_int("num_paths", self.num_paths, minimum=1))
        set_field(self, "num_branches", check_int("num_branches", self.num_branches, minimum=1))
        for name in ("start", "forward", "backward"):
            value = check_number(
                name,
                getattr(self, name),
                minimum=0.0,
                maximum=1.0,
                minimum_open=True,
                hint="It is a fraction of the schedule.",
            )
            set_field(self, name, value)

    @property
    def num_particles(self) -> int:
        return self.num_paths

    def hops(self, num_inference_steps: int) -> tuple[int, list[tuple[int, int]]]:
        """(first full step of the search, [(re-noised to, denoised to) of each hop]) on a T-step schedule."""
        t = num_inference_steps
        first = t - round(self.start * t)
        forward = max(1, round(self.forward * t))
        backward = max(forward + 1, round(self.backward * t))
        hops, level = [], first
        while level < t:
            renoised = max(0, level - forward)
            level = min(t, renoised + backward)
            hops.append((renoised, level))
        return first, hops

    def model_passes(self, num_inference_steps: int, num_model_calls: int) -> int:
        first, hops = self.hops(num_inference_steps)
        calls = self.num_paths * window_calls(0, first, num_inference_steps, num_model_calls)
        for renoised, level in hops:
            hop = window_calls(renoised, level, num_inference_steps, num_model_calls) + (level < num_inference_steps)
            calls += self.num_paths * self.num_branches * hop
        return calls

    def settings(self) -> dict[str, Any]:
        return settings_of(self)

    def run(self, ctx: RunContext) -> SteeringRun:
        process, num_groups, n, m = ctx.process, ctx.num_groups, self.num_paths, self.num_branches
        t = process.num_inference_steps
        first, hops = self.hops(t)
        conditioning = repeat_rows(group_conditioning(ctx, n), n)
        survivors = process.init(num_groups * n, ctx.generator, latents=ctx.latents, conditioning=conditioning)
        trace: list[Step] = []
        archive = Archive(num_groups, n)
        finished = denoise(ctx, survivors, 0, first, trace=trace) if first > 0 else True
        level, final_rewards = first, None
        for renoised, end in hops if finished else []:
            branches = survivors.take(torch.arange(num_groups * n).repeat_interleave(m))
            process.renoise(branches, level, renoised, ctx.generator)
            if not denoise(ctx, branches, renoised, end, trace=trace):
                survivors, finished = branches, False
                break
            if end == t:
                rewards = score(ctx.final_reward, branches.latents, ctx, "the final samples")
            else:
                step = next(iter(process.steps(end, end + 1)))
                process.predict(branches, step)
                trace.append(step)
                rewards = score(ctx.reward, branches.x0_hat, ctx, f"x0-hat at step {step.index}")
            kept = torch.topk(rewards.view(num_groups, n * m), n, dim=1, sorted=True).indices.cpu()
            rows = (kept + (torch.arange(num_groups) * n * m)[:, None]).flatten()
            survivors = branches.take(rows)
            if end == t:
                final_rewards = rewards.index_select(0, rows.to(rewards.device))
            level = end
        if final_rewards is None:  # no hop (the search starts at the end), or an interrupt
            final_rewards = score(ctx.final_reward, survivors.latents, ctx, "the final samples")
        archive.add(survivors.latents, final_rewards.cpu())
        return search_run(ctx, archive, trace)
