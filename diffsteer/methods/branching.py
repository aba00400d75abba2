"""Per-step selection on the branching driver: SVDD (Li et al., 2024) and rollover budget forcing (Kim et al., 2025).

Every chain draws children from the stochastic transition; a child's model call at the next step gives the x0-hat
that scores it, and the chosen child keeps that call's output as its next prediction, so no call is wasted. The
last transition lands on finished samples, which the final reward scores without a model call.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from diffsteer.loop import RunContext, SteeringRun
from diffsteer.methods.base import (
    Archive,
    generator_device,
    group_conditioning,
    repeat_rows,
    score,
    search_run,
    set_field,
    settings_of,
)
from diffsteer.processes.base import Step
from diffsteer.smc.checks import check_choice, check_int, check_number
from diffsteer.smc.particles import Particles, cat_particles


SELECTIONS = ("argmax", "sample")


def _check_branching_process(ctx: RunContext, method_name: str) -> None:
    process = ctx.process
    if process.num_model_calls != process.num_inference_steps:
        raise ValueError(
            f"{method_name} branches at every solver step, so it needs a solver with one model call per step; this "
            f"schedule makes {process.num_model_calls} calls for {process.num_inference_steps} steps (Heun, KDPM2). "
            "Use a first-order stochastic scheduler (DDPM, DDIM with eta > 0, EulerAncestral, SDE-DPM-Solver++)."
        )
    if not process.is_stochastic():
        raise ValueError(
            f"{method_name} draws children from the stochastic transition, but this scheduler's transition is "
            "deterministic (all children would be the same). Pass stochastic='auto' to switch to its stochastic "
            "variant, or a stochastic scheduler."
        )


def _lookahead(steps: Iterator[Step]) -> Iterator[tuple[Step, Step | None]]:
    """(step, the next step or None); the next one is fetched before the current is used, as the children's
    prediction needs it."""
    current = next(steps, None)
    while current is not None:
        following = next(steps, None)
        yield current, following
        current = following


def _initial(ctx: RunContext, rows_per_group: int, copies: int = 1) -> Particles:
    """`rows_per_group * copies` fresh particles per group (the context's latents where they fit)."""
    process, total = ctx.process, ctx.num_groups * rows_per_group * copies
    conditioning = repeat_rows(group_conditioning(ctx, rows_per_group), rows_per_group * copies)
    latents = ctx.latents if copies == 1 else None
    return process.init(total, ctx.generator, latents=latents, conditioning=conditioning)


@dataclass(frozen=True)
class SVDD:
    """SVDD-PM (Li et al., 2024): at every step each chain draws `num_children` children from the stochastic
    transition and keeps one by the reward of the children's x0-hat: the best (`selection="argmax"`, the released
    code's choice) or a draw from softmax(lmbda * r) (`selection="sample"`, the paper's soft value).

    Cost per group: num_chains * (1 + num_children * (T - 1)) model calls on a T-step schedule (one call at x_T, then
    one per child at every step but the last).

    Args:
        num_children (`int`, defaults to 4): children K per chain and step.
        num_chains (`int`, defaults to 1): chains per group (the outputs are selected from them).
        selection (`str`, defaults to `"argmax"`): `"argmax"` or `"sample"`.
        lmbda (`float`, defaults to 10.0): the inverse temperature of `selection="sample"`.
        budget (`float`, *optional*): the budget `diffsteer.make_method` built it for, in plain samples.
    """

    num_children: int = 4
    num_chains: int = 1
    selection: str = "argmax"
    lmbda: float = 10.0
    budget: float | None = field(default=None, compare=False)

    name = "svdd"
    requires_stochastic = True
    takes_generator_lists = False

    def __post_init__(self) -> None:
        set_field(self, "num_children", check_int("num_children", self.num_children, minimum=1))
        set_field(self, "num_chains", check_int("num_chains", self.num_chains, minimum=1))
        check_choice("selection", self.selection, SELECTIONS)
        set_field(self, "lmbda", check_number("lmbda", self.lmbda, minimum=0.0))

    @property
    def num_particles(self) -> int:
        return self.num_chains

    def model_passes(self, num_inference_steps: int, num_model_calls: int) -> int:
        return self.num_chains * (1 + self.num_children * (num_inference_steps - 1))

    def settings(self) -> dict[str, Any]:
        return settings_of(self)

    def run(self, ctx: RunContext) -> SteeringRun:
        _check_branching_process(ctx, "SVDD")
        process, k = ctx.process, self.num_children
        chains = _initial(ctx, self.num_chains)
        rows = chains.num_particles
        trace: list[Step] = []
        rewards, following = None, None
        for step, following in _lookahead(process.steps()):
            if chains.model_output is None:
                process.predict(chains, step, with_x0_hat=False)
                trace.append(step)
            children = chains.take(torch.arange(rows).repeat_interleave(k))
            process.transition(children, step, ctx.generator)
            if following is not None:
                process.predict(children, following)
                trace.append(following)
                scores = score(ctx.reward, children.x0_hat, ctx, f"x0-hat at step {following.index}")
            else:
                scores = score(ctx.final_reward, children.latents, ctx, "the final samples")
            picked = self._choose(scores.view(rows, k).cpu(), ctx.generator)
            flat = torch.arange(rows) * k + picked
            chains, rewards = children.take(flat), scores.cpu()[flat]
            if ctx.on_step_end is not None:
                ctx.on_step_end(step, chains)
        if rewards is None:  # interrupted before the first step: score the chains where they are
            rewards = score(ctx.final_reward, chains.latents, ctx, "the final samples").cpu()
        archive = Archive(ctx.num_groups, self.num_chains)
        archive.add(chains.latents, rewards)
        return search_run(ctx, archive, trace)

    def _choose(self, scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One child per chain (row of `scores`)."""
        if self.selection == "argmax":
            return torch.argmax(scores, dim=1)
        logits = torch.where(torch.isneginf(scores), -math.inf, self.lmbda * scores)
        dead = torch.isneginf(logits).all(dim=1)
        logits[dead] = 0.0  # every child forbidden: any will do, the final check reports it
        probabilities = torch.softmax(logits, dim=1)
        uniforms = torch.rand(
            scores.shape[0], 1, generator=generator, dtype=torch.float64, device=generator_device(generator)
        ).cpu()
        cdf = torch.cumsum(probabilities, dim=1)
        return torch.searchsorted(cdf, uniforms * cdf[:, -1:], right=True).flatten().clamp_(max=scores.shape[1] - 1)


@dataclass(frozen=True)
class RBF:
    """Rollover budget forcing (Kim et al., 2025): at every step each chain draws children one at a time until one
    improves on the chain's current reward (that child is taken, and the unspent tries roll over to the next step)
    or the step's quota is spent (the best child drawn is taken and the quota resets).

    It starts from the best x0-hat of `init_particles` noises per chain. It runs on any stochastic first-order
    process; a flow model runs on the stochastic flow step diffsteer switches it to (the SDE conversion), not on the
    paper's VP interpolant, which diffsteer does not build. The paper's run returns the last x0-hat; this one
    finishes the chain to x_0. Cost per group: at most num_chains * (init_particles + quota * (T - 1)) model calls,
    exactly that when no try improves early.

    Args:
        quota (`int`, defaults to 4): tries per chain and step, Q.
        num_chains (`int`, defaults to 1): chains per group.
        init_particles (`int`, *optional*): initial noises per chain (defaults to `quota`).
        budget (`float`, *optional*): the budget `diffsteer.make_method` built it for, in plain samples.
    """

    quota: int = 4
    num_chains: int = 1
    init_particles: int | None = None
    budget: float | None = field(default=None, compare=False)

    name = "rbf"
    requires_stochastic = True
    takes_generator_lists = False

    def __post_init__(self) -> None:
        set_field(self, "quota", check_int("quota", self.quota, minimum=1))
        set_field(self, "num_chains", check_int("num_chains", self.num_chains, minimum=1))
        init = check_int("init_particles", self.init_particles, minimum=1, allow_none=True)
        set_field(self, "init_particles", self.quota if init is None else init)

    @property
    def num_particles(self) -> int:
        return self.num_chains

    def model_passes(self, num_inference_steps: int, num_model_calls: int) -> int:
        return self.num_chains * (self.init_particles + self.quota * (num_inference_steps - 1))

    def settings(self) -> dict[str, Any]:
        return settings_of(self)

    def run(self, ctx: RunContext) -> SteeringRun:
        _check_branching_process(ctx, "Rollover budget forcing")
        process = ctx.process
        steps = _lookahead(process.steps())
        first = next(steps, None)
        trace: list[Step] = []
        if first is None:  # interrupted before the first step: score the chains where they are
            chains = _initial(ctx, self.num_chains)
            current = score(ctx.final_reward, chains.latents, ctx, "the final samples").cpu()
            archive = Archive(ctx.num_groups, self.num_chains)
            archive.add(chains.latents, current)
            return search_run(ctx, archive, trace)
        chains, current = self._start(ctx, first[0], trace)
        carry = torch.zeros(chains.num_particles, dtype=torch.long)
        for step, following in _chain([first], steps):
            if following is None:  # the last transition lands on finished samples: no tries, no model call
                process.transition(chains, step, ctx.generator)
                current = score(ctx.final_reward, chains.latents, ctx, "the final samples").cpu()
                if ctx.on_step_end is not None:
                    ctx.on_step_end(step, chains)
                break
            chains, current, carry = self._advance(ctx, chains, current, carry, step, following, trace)
            if ctx.on_step_end is not None:
                ctx.on_step_end(step, chains)
        archive = Archive(ctx.num_groups, self.num_chains)
        archive.add(chains.latents, current)
        return search_run(ctx, archive, trace)

    def _start(self, ctx: RunContext, step: Step, trace: list[Step]) -> tuple[Particles, torch.Tensor]:
        """Each chain's best of `init_particles` noises by the reward of its x0-hat at x_T."""
        candidates = _initial(ctx, self.num_chains, self.init_particles)
        ctx.process.predict(candidates, step)
        trace.append(step)
        scores = score(ctx.reward, candidates.x0_hat, ctx, f"x0-hat at step {step.index}").cpu()
        rows = ctx.num_groups * self.num_chains
        best = torch.argmax(scores.view(rows, self.init_particles), dim=1)
        flat = torch.arange(rows) * self.init_particles + best
        return candidates.take(flat), scores[flat]

    def _advance(
        self,
        ctx: RunContext,
        chains: Particles,
        current: torch.Tensor,
        carry: torch.Tensor,
        step: Step,
        following: Step,
        trace: list[Step],
    ) -> tuple[Particles, torch.Tensor, torch.Tensor]:
        """One step of every chain: tries until an improvement or the quota; returns the chosen children, their
        rewards and the tries carried over."""
        process, rows = ctx.process, chains.num_particles
        allowed = self.quota + carry
        tries = torch.zeros(rows, dtype=torch.long)
        done = torch.zeros(rows, dtype=torch.bool)
        improved = torch.zeros(rows, dtype=torch.bool)
        best: Particles | None = None
        best_rewards = torch.full((rows,), -math.inf, dtype=torch.float64)
        while True:
            active = (~done & (tries < allowed)).nonzero().flatten()
            if active.numel() == 0:
                break
            children = chains.take(active)
            process.transition(children, step, ctx.generator)
            process.predict(children, following)
            trace.append(following)
            groups = active // self.num_chains
            scores = score(ctx.reward, children.x0_hat, ctx, f"x0-hat at step {following.index}", groups).cpu()
            tries[active] += 1
            if best is None:  # the first try covers every chain
                best, best_rewards = children, scores.clone()
            else:
                better = scores > best_rewards[active]
                if better.any():
                    source = torch.arange(rows)
                    source[active[better]] = rows + better.nonzero().flatten()
                    best = cat_particles([best, children]).take(source)
                    best_rewards[active[better]] = scores[better]
            gained = scores > current[active]
            improved[active[gained]] = True
            done[active[gained]] = True
        carry = torch.where(improved, allowed - tries, torch.zeros_like(carry))
        return best, best_rewards, carry


def _chain(
    first: list[tuple[Step, Step | None]], rest: Iterator[tuple[Step, Step | None]]
) -> Iterator[tuple[Step, Step | None]]:
    yield from first
    yield from rest
