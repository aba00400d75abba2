"""What every steering driver asks of a diffusion process: no diffusers here, so a process over a model of one's own
(or, later, a discrete one) needs only torch.

A process turns particles at one point of its schedule into particles at the next. It owns no per-particle state:
whatever a solver remembers between calls (a multistep solver's past outputs, Heun's half step) is a field of the
`Particles`, so a process can be reused, can run a window of steps from particles it is handed, and its particles
can be copied, dropped or multiplied (`Particles.take`) between any two steps.
"""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from diffsteer.smc.particles import Particles


# model(sample, timestep, **conditioning) -> model_output; conditioning holds per-particle tensors, if any.
Model = Callable[..., torch.Tensor]
# One generator for every draw, or one per particle row (diffusers' list convention), or None (torch's global one).
Generators = torch.Generator | list[torch.Generator] | None


@dataclass(frozen=True)
class Step:
    """One model call of a process.

    Attributes:
        index: the call's position in the schedule (one model call each).
        timestep: the model's timestep for this call.
        full_step: the full solver step this call belongs to (0 .. num_inference_steps - 1).
        at_boundary: True when this call starts a full step, so the particles sit on the solver's grid with no
            half-step state (always True for first-order solvers; every other call for Heun and KDPM2).
        progress: full_step / num_inference_steps, 0 at pure noise.
    """

    index: int
    timestep: torch.Tensor
    full_step: int
    at_boundary: bool
    progress: float


@runtime_checkable
class Process(Protocol):
    """A steppable diffusion process, one particle per batch row.

    Attributes:
        num_inference_steps: full solver steps T of a whole run.
        num_model_calls: model calls of a whole plain run (T for first-order solvers, 2T - 1 for Heun).
        device, dtype: where and in which precision the particles live.
        changes: what the process changed on the caller's behalf (a stochastic switch), as sentences.
    """

    num_inference_steps: int
    num_model_calls: int
    device: torch.device
    dtype: torch.dtype
    changes: list[str]

    def init(
        self,
        num_particles: int,
        generator: Generators = None,
        latents: torch.Tensor | None = None,
        conditioning: Mapping[str, torch.Tensor] | None = None,
        start: int = 0,
    ) -> Particles:
        """Particles at the start of full step `start` (pure noise for 0), with fresh solver state."""
        ...

    def steps(self, start: int = 0, stop: int | None = None) -> Iterator[Step]:
        """The model calls of full steps `start` .. `stop - 1`, in order."""
        ...

    def predict(self, particles: Particles, step: Step, with_x0_hat: bool = True) -> None:
        """Run the model at the particles; store `model_output` (and `x0_hat`) on them."""
        ...

    def transition(self, particles: Particles, step: Step, generator: Generators = None) -> None:
        """Move the particles past `step` using their `model_output`; noise only from `generator`."""
        ...

    def renoise(self, particles: Particles, start: int, to: int, generator: Generators = None) -> None:
        """Draw from the forward (noising) kernel: particles at the start of full step `start` are moved to the
        start of the earlier, noisier full step `to`, with fresh solver state."""
        ...

    def is_stochastic(self) -> bool:
        """Whether `transition` draws noise (children of one particle then differ)."""
        ...
