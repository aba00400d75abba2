"""Noise optimisation (ReNO, DNO, DOODL, DITTO): gradient ascent on the initial noise, through the whole sampler.

Each iteration denoises the current initial noise z to x_0 with the scheduler's own steps under autograd, scores
x_0, and takes one optimiser step on z against

    loss(z) = -lmbda r(x_0(z)) + regularization * (|z|^2 / 2 - (d - 1) log |z|),

ReNO's regulariser: the negative log-density of the chi distribution of |z|, which keeps the noise's norm near
sqrt(d), where Gaussian noise of d dimensions lies (the model never saw noise elsewhere). The optimiser is ReNO's:
SGD with Nesterov momentum 0.9 on z (`torch.optim.SGD`), the gradient's norm clipped per chain. The best iterate
(the highest final reward seen, not the last) is returned, and the last iteration takes no gradient step.

The sampler is a deterministic function of z: a deterministic scheduler as it is, a stochastic one with its step
noise frozen (drawn from the same seed in every iteration). Backpropagating through T steps holds T steps of the
model's activations; with `checkpointing=True` (the default) each step is recomputed in the backward pass instead
(`torch.utils.checkpoint` over `SchedulerProcess.pure_step`, which replays the step without side effects), so memory
holds one step's activations and the chain's T latents, at the price of one more forward pass, which the ledger
counts.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from diffsteer.gradients import BACKWARD_COST, require_gradient
from diffsteer.loop import RunContext, SteeringRun, _name, _rows_reward, check_scores
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
from diffsteer.smc.checks import check_int, check_number


def chi_norm_penalty(z: torch.Tensor) -> torch.Tensor:
    """|z|^2 / 2 - (d - 1) log |z| per row, in float64: the chi distribution's negative log-density up to a
    constant, least at |z| = sqrt(d - 1)."""
    flat = z.double().flatten(1)
    norm = flat.norm(dim=1)
    return 0.5 * norm**2 - (flat.shape[1] - 1) * torch.log(norm)


def denoise_through(
    process: Any,
    z: torch.Tensor,
    steps: list[Step],
    seeds: list[int],
    conditioning: dict[str, torch.Tensor],
    checkpointing: bool,
) -> torch.Tensor:
    """x_0 from the initial noise `z` through every step of `process` (a first-order scheduler without history), each
    step's noise frozen by its seed; differentiable in `z` under autograd, each step recomputed in the backward pass
    with `checkpointing`."""
    x = z
    for step, seed in zip(steps, seeds, strict=True):
        step_fn = process.pure_step(step, conditioning, seed)
        x = checkpoint(step_fn, x, use_reentrant=False) if checkpointing and torch.is_grad_enabled() else step_fn(x)
    return x


@dataclass(frozen=True)
class NoiseOpt:
    """Gradient ascent on the initial noise through the sampler (see the module docstring).

    Args:
        num_iterations (`int`, defaults to `3`): forward passes through the sampler; all but the last take a
            gradient step.
        num_chains (`int`, defaults to `1`): independent noises optimised side by side per prompt.
        lmbda (`float`, defaults to `1.0`): the reward's weight in the loss.
        learning_rate (`float`, defaults to `5.0`): SGD's step (ReNO's default, with its gradient clip).
        momentum (`float`, defaults to `0.9`): Nesterov momentum.
        max_grad_norm (`float`, defaults to `0.1`): each chain's gradient is clipped to this norm.
        regularization (`float`, defaults to `0.01`): the weight of the chi norm penalty.
        checkpointing (`bool`, defaults to `True`): recompute each step in the backward pass (memory of one step).
        budget (`float`, *optional*): the budget `diffsteer.make_method` built it for.

    Cost per chain: `num_iterations` plain samples forward, plus per gradient step a backward pass through every
    step (`BACKWARD_COST` forward rows each) and, with checkpointing, one more forward.
    """

    num_iterations: int = 3
    num_chains: int = 1
    lmbda: float = 1.0
    learning_rate: float = 5.0
    momentum: float = 0.9
    max_grad_norm: float = 0.1
    regularization: float = 0.01
    checkpointing: bool = True
    budget: float | None = field(default=None, compare=False)

    name = "noise-opt"
    requires_stochastic = False
    requires_first_order = True  # it differentiates through whole runs of pure steps
    takes_generator_lists = False

    def __post_init__(self) -> None:
        set_field(self, "num_iterations", check_int("num_iterations", self.num_iterations, minimum=1))
        set_field(self, "num_chains", check_int("num_chains", self.num_chains, minimum=1))
        set_field(self, "lmbda", check_number("lmbda", self.lmbda, minimum=0.0, minimum_open=True))
        set_field(self, "learning_rate", check_number("learning_rate", self.learning_rate, minimum=0.0))
        set_field(self, "momentum", check_number("momentum", self.momentum, minimum=0.0, maximum=1.0))
        set_field(
            self, "max_grad_norm", check_number("max_grad_norm", self.max_grad_norm, minimum=0.0, minimum_open=True)
        )
        set_field(self, "regularization", check_number("regularization", self.regularization, minimum=0.0))
        if not isinstance(self.checkpointing, bool):
            raise TypeError(f"checkpointing must be True or False, got {self.checkpointing!r}.")

    @property
    def num_particles(self) -> int:
        return self.num_chains

    @staticmethod
    def iteration_cost(checkpointing: bool) -> float:
        """Plain samples one gradient step adds to a forward pass: the backward pass, and the recomputed forward."""
        return BACKWARD_COST + (1.0 if checkpointing else 0.0)

    def model_passes(self, num_inference_steps: int, num_model_calls: int) -> int:
        """Particle-model calls per group, backward rows at `BACKWARD_COST` forward rows."""
        per_chain = self.num_iterations + (self.num_iterations - 1) * self.iteration_cost(self.checkpointing)
        return math.ceil(self.num_chains * num_model_calls * per_chain - 1e-9)

    def settings(self) -> dict[str, Any]:
        return settings_of(self)

    def run(self, ctx: RunContext) -> SteeringRun:
        process, num_groups = ctx.process, ctx.num_groups
        rows = num_groups * self.num_chains
        conditioning = repeat_rows(group_conditioning(ctx, self.num_chains), self.num_chains)
        z0 = ctx.latents if ctx.latents is not None else process.init(rows, ctx.generator).latents
        z = z0.detach().clone().requires_grad_(True)
        optimiser = torch.optim.SGD([z], lr=self.learning_rate, momentum=self.momentum, nesterov=self.momentum > 0)
        # The frozen step noise: one seed per step, drawn once from the caller's generator.
        steps = list(process.steps())
        seeds = torch.randint(
            0, 2**62, (len(steps),), generator=ctx.generator, device=generator_device(ctx.generator)
        ).tolist()
        gradient_reward = ctx.gradient_reward or _rows_reward(ctx.reward)
        archive, trace = Archive(num_groups, self.num_chains), []
        for iteration in range(self.num_iterations):
            last = iteration == self.num_iterations - 1
            rows_before = ctx.ledger.model_rows
            with torch.enable_grad() if not last else torch.no_grad():
                x = denoise_through(
                    process, z if not last else z.detach(), steps, seeds, conditioning, self.checkpointing
                )
                if iteration == 0:
                    trace.extend(steps)
                forward_rows = ctx.ledger.model_rows - rows_before
                samples = x.detach()
                archive.add(samples, score(ctx.final_reward, samples, ctx, "the final samples").cpu())
                if last:
                    break
                what = f"reward {_name(gradient_reward)}"
                rewards = require_gradient(gradient_reward(x, slice(0, rows)), what)
                check_scores(rewards.detach(), rows, what)
                loss = -self.lmbda * rewards.reshape(rows).sum() + self.regularization * chi_norm_penalty(z).sum()
                optimiser.zero_grad()
                loss.backward()  # checkpointing's recomputed forwards are counted as model rows by the model
            ctx.ledger.add_backward(forward_rows)
            with torch.no_grad():
                norms = z.grad.flatten(1).norm(dim=1).clamp(min=1e-12)
                z.grad.mul_((self.max_grad_norm / norms).clamp(max=1.0).view(-1, *[1] * (z.ndim - 1)))
            optimiser.step()
        return search_run(ctx, archive, trace)
