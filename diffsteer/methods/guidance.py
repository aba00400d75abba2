"""Reward-gradient guidance, and twisted SMC that stays exact.

Both shift each stochastic transition by the reward's gradient at x0-hat, on the SMC driver
(`diffsteer.loop.run_steering`), which reads a method's `make_guide()`:

    x' = step(x_t) + shift,    shift = gradient_scale * lmbda * s_t * grad_{x_t} r(x0-hat(x_t))

with s_t = std_t^2, the variance of the step's Gaussian kernel (`schedule="variance"`, the twisted diffusion
sampler's proposal N(mean + std^2 grad log psi, std^2)), or s_t = 1 (`schedule="constant"`, which also moves a
deterministic step). The gradient goes through the denoiser's Jacobian (`variant="dps"`: one backward pass through
the model per particle and step, budgeted at `diffsteer.gradients.BACKWARD_COST` forward rows each) or holds the
model's output fixed (`variant="x0-fixed"`: x0-hat's own formula only, no backward pass through the model, so
denoiser-free in the budget).

- `Guidance` is the heuristic (DPS, universal guidance): N independently guided particles, the best final reward
  wins. It no longer samples p(x) exp(lmbda r(x)): the shifted chain has no weights that correct it.
- `Twisted` is FK whose proposal is the guided transition: the weights carry the proposal ratio
  log p(x' | x_t) - log q(x' | x_t) (from the scheduler's Gaussian kernel) and the twist ratio, which is FK's diff
  potential lmbda (r(x0-hat(x')) - r(x0-hat(x_t))) at every step, with the exact reward replacing the twist at the
  end. So the target stays p(x) exp(lmbda r(x)) whatever the shift; a good shift only lowers the weights'
  variance.
"""

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from diffsteer.gradients import BACKWARD_COST
from diffsteer.methods.base import set_field, settings_of
from diffsteer.methods.fk import SELECT_MODES, _SMCHooks, _Unweighted
from diffsteer.smc.checks import check_choice, check_int, check_number
from diffsteer.smc.potentials import Potential
from diffsteer.smc.resampling import get_resampling_scheme


if TYPE_CHECKING:
    from diffsteer.processes.kernels import GaussianKernel


GUIDANCE_VARIANTS = ("dps", "x0-fixed")
GUIDANCE_SCHEDULES = ("variance", "constant")


@dataclass(frozen=True)
class Guide:
    """How the SMC driver shifts a transition (built by a method's `make_guide()`).

    Attributes:
        scale: gradient_scale * lmbda, the factor of s_t * grad r.
        through_model: differentiate through the denoiser (DPS) rather than hold its output fixed.
        schedule: `"variance"` (s_t = std_t^2, needs the scheduler's kernel) or `"constant"` (s_t = 1).
        proposal_ratio: add log p(x' | x_t) - log q(x' | x_t) to the weights (twisted SMC).
        chunk_size: rows per backward pass (None: all at once).
    """

    scale: float
    through_model: bool
    schedule: str
    proposal_ratio: bool
    chunk_size: int | None = None

    @property
    def needs_kernel(self) -> bool:
        return self.schedule == "variance" or self.proposal_ratio

    def shift(self, gradient: torch.Tensor, kernel: "GaussianKernel | None") -> torch.Tensor | None:
        """The shift of the transition's result, or None where the step draws no noise under the variance schedule
        (its proposal would have no density)."""
        if self.schedule == "constant":
            return self.scale * gradient
        variance = torch.as_tensor(kernel.std, dtype=torch.float64) ** 2
        if not bool((variance > 0).all()):
            return None
        return (self.scale * variance * gradient.double()).to(gradient.dtype)


def _check_common(method: Any) -> None:
    set_field(method, "num_particles", check_int("num_particles", method.num_particles, minimum=1))
    set_field(method, "lmbda", check_number("lmbda", method.lmbda, hint="Pass a finite tilt strength, e.g. 1.0."))
    set_field(
        method,
        "gradient_scale",
        check_number(
            "gradient_scale",
            method.gradient_scale,
            minimum=0.0,
            hint="It multiplies the reward gradient's shift (1 is the twisted sampler's proposal; it is not "
            "classifier-free guidance's guidance_scale).",
        ),
    )
    check_choice("variant", method.variant, GUIDANCE_VARIANTS)
    set_field(method, "chunk_size", check_int("chunk_size", method.chunk_size, minimum=1, allow_none=True))


class _GradientHooks(_SMCHooks):
    variant: str
    num_particles: int

    def model_passes(self, num_inference_steps: int, num_model_calls: int) -> int:
        """Particle-model calls per group, a backward row counted as `BACKWARD_COST` forward rows (DPS only)."""
        per_call = 1 + (BACKWARD_COST if self.variant == "dps" else 0)
        return math.ceil(self.num_particles * num_model_calls * per_call - 1e-9)

    def settings(self) -> dict[str, Any]:
        return settings_of(self)


@dataclass(frozen=True)
class Guidance(_Unweighted, _GradientHooks):
    """Reward-gradient guidance (DPS, universal guidance): a heuristic, not a sampler of p(x) exp(lmbda r(x)).

    Each of `num_particles` independent particles has every stochastic transition shifted by
    `gradient_scale * lmbda * s_t * grad r(x0-hat)` (see the module docstring); the best final reward wins. The
    shifted chain is not reweighted, so its samples are biased away from the tilted target (more so where the
    posterior p(x0 | x_t) is wide or multimodal, since the gradient is taken at its mean); use `Twisted` for the
    same shift with exact weights.

    Args:
        num_particles (`int`, defaults to `1`): independent guided samples.
        lmbda (`float`, defaults to `1.0`): the tilt the shift aims at.
        gradient_scale (`float`, defaults to `1.0`): a multiplier of the shift.
        variant (`str`, defaults to `"dps"`): `"dps"` (through the denoiser) or `"x0-fixed"` (model output held).
        schedule (`str`, defaults to `"variance"`): `"variance"` (s_t = the step's variance; a deterministic step
            is not moved) or `"constant"` (s_t = 1; moves deterministic steps too).
        chunk_size (`int`, *optional*): rows per backward pass (default: a pipeline's `decode_batch_size`, all rows
            in `diffsteer.sample`).
        budget (`float`, *optional*): the budget `diffsteer.make_method` built it for.
    """

    num_particles: int = 1
    lmbda: float = 1.0
    gradient_scale: float = 1.0
    variant: str = "dps"
    schedule: str = "variance"
    chunk_size: int | None = None
    budget: float | None = field(default=None, compare=False)

    name = "guidance"
    takes_generator_lists = True
    select = "best"

    def __post_init__(self) -> None:
        _check_common(self)
        check_choice("schedule", self.schedule, GUIDANCE_SCHEDULES)

    @property
    def requires_stochastic(self) -> bool:  # the variance schedule moves only the steps that draw noise
        return self.schedule == "variance"

    @property
    def requires_kernel(self) -> bool:  # the variance schedule reads the step's variance off its kernel
        return self.schedule == "variance"

    def make_guide(self) -> Guide:
        return Guide(self.gradient_scale * self.lmbda, self.variant == "dps", self.schedule, False, self.chunk_size)


@dataclass(frozen=True)
class Twisted(_GradientHooks):
    """Twisted SMC (Wu et al. 2023's twisted diffusion sampler): FK with the guided transition as its proposal.

    The weights carry the proposal ratio and the twist ratio (FK's diff potential at every step), so the weighted
    population targets p(x) exp(lmbda r(x)) exactly as FK's does; the twist exp(lmbda r(x0-hat)) only decides how
    many particles it takes. It is a good twist where p(x0 | x_t) is narrow, and a poor one where it is wide or
    multimodal (early steps, several modes), since it scores the posterior's mean.

    Args:
        num_particles (`int`): particles per run.
        lmbda (`float`, defaults to `1.0`): the tilt of the target.
        gradient_scale (`float`, defaults to `1.0`): a multiplier of the proposal's shift (1: the twisted
            sampler's N(mean + std^2 lmbda grad r, std^2)); any value keeps the target, 0 is FK itself.
        variant (`str`, defaults to `"dps"`): `"dps"` or `"x0-fixed"`, as in `Guidance`.
        resampling (`str`, defaults to `"systematic"`), ess_threshold (`float` or `None`, defaults to `0.5`),
        select (`str`, defaults to `"best"`): as in `FK`.
        chunk_size (`int`, *optional*): rows per backward pass.
        budget (`float`, *optional*): the budget `diffsteer.make_method` built it for.
    """

    num_particles: int
    lmbda: float = 1.0
    gradient_scale: float = 1.0
    variant: str = "dps"
    resampling: str = "systematic"
    ess_threshold: float | None = 0.5
    select: str = "best"
    chunk_size: int | None = None
    budget: float | None = field(default=None, compare=False)

    name = "twisted"
    requires_stochastic = True
    requires_kernel = True  # the proposal ratio is the kernel's
    takes_generator_lists = True

    def __post_init__(self) -> None:
        _check_common(self)
        get_resampling_scheme(self.resampling)
        set_field(
            self,
            "ess_threshold",
            check_number(
                "ess_threshold", self.ess_threshold, minimum=0.0, maximum=1.0, minimum_open=True, allow_none=True
            ),
        )
        check_choice("select", self.select, SELECT_MODES)

    def make_guide(self) -> Guide:
        return Guide(self.gradient_scale * self.lmbda, self.variant == "dps", "variance", True, self.chunk_size)

    def make_potential(self) -> Potential:
        return Potential("diff", self.lmbda)

    def reward_steps(self, num_inference_steps: int) -> frozenset[int]:
        return frozenset(range(num_inference_steps))

    def should_resample(self, ess: float, num_particles: int) -> bool:
        return self.ess_threshold is None or ess < self.ess_threshold * num_particles
