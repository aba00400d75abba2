"""What diffsteer knows about each diffusers scheduler class.

For every supported scheduler the registry records:

- the attributes that hold per-particle state across calls to `step` (a multistep solver's `model_outputs`, Heun's
  half-step `sample`, ...). Resampling must move them with the latents, or copies of a particle drift apart;
- the space its samples live in (`"vp"`: alphas_cumprod with epsilon/v/sample prediction; `"flow"`: rectified flow
  with velocity prediction), which fixes how x0-hat is computed;
- when its transition is deterministic, and the stochastic variant that replaces it under `stochastic="auto"`.

Attributes are whitelisted per class rather than guessed from shapes, because `sigmas`, `timesteps` or
`alphas_cumprod` can have the particle count as their length by coincidence. `unregistered_particle_state` is the
safety net that finds sample-shaped attributes the registry does not know.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SASolverScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffsteer.processes.flow_sde import FLOW_SDE_COST, FlowMatchEulerSDEScheduler
from diffsteer.processes.kernels import (
    KernelFn,
    ddim_kernel,
    ddpm_kernel,
    dpmsolver_kernel,
    euler_ancestral_kernel,
    flow_sde_kernel,
)
from diffsteer.smc.particles import reindex_value


StepKwargs = dict[str, Any]
# (scheduler, step kwargs) -> (stochastic scheduler, step kwargs, a sentence saying what changed)
MakeStochastic = Callable[[SchedulerMixin, StepKwargs], tuple[SchedulerMixin, StepKwargs, str]]


@dataclass(frozen=True)
class SchedulerSpec:
    """Registry entry for one scheduler class.

    Args:
        per_particle (`tuple[str, ...]`): attributes holding per-particle tensors (or lists of them) between steps.
        is_deterministic (`Callable[[SchedulerMixin, dict], bool]`): whether `step` with these kwargs draws no noise.
        make_stochastic (`Callable`, *optional*): builds the stochastic variant; `None` when always stochastic.
        space (`str`, defaults to `"vp"`): `"vp"` or `"flow"`.
        kernel (`Callable`, *optional*): the Gaussian kernel (mean, std) of a stochastic `step`, read without side
            effects (`diffsteer.processes.kernels`); `None` where the step has none diffsteer knows.
        make_kernel (`Callable`, *optional*): for a scheduler without a kernel, the switch (as `make_stochastic`) to
            the nearest one with a kernel, for methods that need one; `None` where no switch keeps the model's
            sampling (a distilled model's LCM or TCD steps).
    """

    per_particle: tuple[str, ...]
    is_deterministic: Callable[[SchedulerMixin, StepKwargs], bool]
    make_stochastic: MakeStochastic | None = None
    space: str = "vp"
    kernel: KernelFn | None = None
    make_kernel: MakeStochastic | None = None


SCHEDULER_REGISTRY: dict[type[SchedulerMixin], SchedulerSpec] = {}


def register_scheduler(scheduler_class: type[SchedulerMixin], spec: SchedulerSpec) -> None:
    """Add (or replace) the registry entry of `scheduler_class`; subclasses inherit it."""
    SCHEDULER_REGISTRY[scheduler_class] = spec


def scheduler_spec(scheduler: SchedulerMixin) -> SchedulerSpec:
    """The registry entry of `scheduler`'s class or its nearest registered base class.

    Raises:
        ValueError: naming the supported classes, if the class is unknown.
    """
    for cls in type(scheduler).__mro__:
        if cls in SCHEDULER_REGISTRY:
            return SCHEDULER_REGISTRY[cls]
    names = sorted(cls.__name__ for cls in SCHEDULER_REGISTRY)
    raise ValueError(
        f"{type(scheduler).__name__} is not in diffsteer's scheduler registry, so diffsteer does not know which of "
        f"its attributes hold per-particle state that resampling must move. Use one of {names}, or register it with "
        "`diffsteer.processes.register_scheduler`."
    )


class SchedulerState:
    """A scheduler's whole mutable state, held by the particles rather than by the live scheduler.

    It is a copy of the scheduler's instance attributes (its step index, a multistep solver's past outputs, Heun's
    half step, and the constant timesteps and sigmas, which cost nothing to share). The process loads it into its
    one scheduler before a call and captures it after, so every set of particles carries the solver history of its
    own trajectory: a process can be reused, windows can start from any particles, and `Particles.take` copies,
    drops or multiplies the history with the rows. Only the registry's per-particle attributes are re-indexed (see
    the module docstring for why they are whitelisted).
    """

    def __init__(self, attributes: dict[str, Any], per_particle: tuple[str, ...]) -> None:
        self.attributes = attributes
        self.per_particle = per_particle

    @classmethod
    def capture(cls, scheduler: SchedulerMixin) -> "SchedulerState":
        """The state `scheduler` is in now (lists are copied: solvers update their history lists in place)."""
        return cls(_copy_lists(vars(scheduler)), scheduler_spec(scheduler).per_particle)

    def load(self, scheduler: SchedulerMixin) -> None:
        """Put `scheduler` in this state (its attributes become exactly these)."""
        scheduler.__dict__.clear()
        scheduler.__dict__.update(_copy_lists(self.attributes))

    def replace(self, **attributes: Any) -> "SchedulerState":
        """A copy with some attributes set (for example a step index)."""
        return SchedulerState({**self.attributes, **attributes}, self.per_particle)

    def take(self, indices: torch.Tensor) -> "SchedulerState":
        """The state of the particles at `indices` (a `Particles.take` or resampling)."""
        attributes = dict(self.attributes)
        for name in self.per_particle:
            if name in attributes:
                attributes[name] = reindex_value(attributes[name], indices)
        return SchedulerState(attributes, self.per_particle)

    @classmethod
    def cat(cls, states: list["SchedulerState"]) -> "SchedulerState":
        """The state of several particle sets at the same step, joined (per-particle attributes concatenated)."""
        from diffsteer.smc.particles import concat_values

        attributes = dict(states[0].attributes)
        for name in states[0].per_particle:
            if name in attributes:
                attributes[name] = concat_values([state.attributes[name] for state in states])
        return cls(attributes, states[0].per_particle)


def _copy_lists(attributes: dict[str, Any]) -> dict[str, Any]:
    return {name: list(value) if isinstance(value, list) else value for name, value in attributes.items()}


def schedulers_with_kernel() -> list[str]:
    """The names of the registered schedulers whose step has a Gaussian kernel, for messages."""
    return sorted(cls.__name__ for cls, spec in SCHEDULER_REGISTRY.items() if spec.kernel is not None)


def unregistered_particle_state(scheduler: SchedulerMixin, num_particles: int) -> list[str]:
    """Attributes of `scheduler` that look per-particle (tensors of ndim >= 2 and leading dimension
    `num_particles`, or lists of them) but are not in its registry entry."""
    known = set(scheduler_spec(scheduler).per_particle)
    return sorted(
        name
        for name, value in vars(scheduler).items()
        if name not in known and _has_particle_dim(value, num_particles)
    )


def _has_particle_dim(value: Any, num_particles: int) -> bool:
    if isinstance(value, torch.Tensor):
        return value.ndim >= 2 and value.shape[0] == num_particles
    if isinstance(value, list | tuple):
        return any(_has_particle_dim(item, num_particles) for item in value)
    return False


# ---- stochasticity rules -------------------------------------------------------------------------------------------


def _never_deterministic(scheduler: SchedulerMixin, step_kwargs: StepKwargs) -> bool:
    return False


def _always_deterministic(scheduler: SchedulerMixin, step_kwargs: StepKwargs) -> bool:
    return True


def effective_config(scheduler: SchedulerMixin) -> dict[str, Any]:
    """The config `scheduler` runs with, as a plain dict that `from_config` rebuilds faithfully.

    `from_config(scheduler.config)` drops the keys listed in `_use_default_values` (those the original config file
    lacked), which undoes the fixes a pipeline's `__init__` applies to old configs (`steps_offset` 0 -> 1,
    `clip_sample`): the copy would then step through other timesteps than the pipeline's own scheduler.
    """
    return {key: value for key, value in scheduler.config.items() if key != "_use_default_values"}


def copy_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """A fresh scheduler of the same class and effective config (no timesteps set, no step state)."""
    return type(scheduler).from_config(effective_config(scheduler))


def _switch_to(
    target: type[SchedulerMixin],
    cost: str = "",
    *,
    because: str = "is deterministic",
    so_that: str = " to give the particles fresh noise at each step",
    **config_overrides: Any,
) -> MakeStochastic:
    """Replace the scheduler by `target` built from the same effective config (keeping the noise schedule). The note
    says why (`because`, `so_that`); `cost` is appended to it (what the switch costs the samples)."""

    def make(scheduler: SchedulerMixin, step_kwargs: StepKwargs) -> tuple[SchedulerMixin, StepKwargs, str]:
        new = target.from_config(effective_config(scheduler), **config_overrides)
        settings = "".join(f", {key}={value!r}" for key, value in config_overrides.items())
        note = (
            f"{type(scheduler).__name__} {because}, so it was replaced by {target.__name__} "
            f"(built from the same config{settings}){so_that}.{cost}"
        )
        return new, step_kwargs, note

    return make


def _set_step_kwarg(name: str, value: float, cost: str = "") -> MakeStochastic:
    def make(scheduler: SchedulerMixin, step_kwargs: StepKwargs) -> tuple[SchedulerMixin, StepKwargs, str]:
        before = step_kwargs.get(name)
        note = (
            f"{type(scheduler).__name__} with {name}={before!r} is deterministic, so {name} was set to {value} to "
            f"give the particles fresh noise at each step.{cost}"
        )
        return scheduler, {**step_kwargs, name: value}, note

    return make


def _ddim_deterministic(scheduler: SchedulerMixin, step_kwargs: StepKwargs) -> bool:
    return step_kwargs.get("eta", 0.0) == 0 and step_kwargs.get("variance_noise") is None


def _dpmsolver_deterministic(scheduler: SchedulerMixin, step_kwargs: StepKwargs) -> bool:
    return not scheduler.config.algorithm_type.startswith("sde-") and step_kwargs.get("variance_noise") is None


def _sasolver_deterministic(scheduler: SchedulerMixin, step_kwargs: StepKwargs) -> bool:
    timesteps = range(scheduler.config.num_train_timesteps)
    return all(scheduler.tau_func(t) == 0 for t in timesteps)


_SDE_DPMSOLVER = _switch_to(DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++")


def _switch_for_kernel(target: type[SchedulerMixin], **config_overrides: Any) -> MakeStochastic:
    """A `make_kernel` switch: to `target`, whose step has a Gaussian kernel."""
    reason = "has no Gaussian transition kernel, which the method reweights its shifted transitions by"
    return _switch_to(target, because=reason, so_that="", **config_overrides)


_KERNEL_SDE_DPMSOLVER = _switch_for_kernel(DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++")

for _cls, _spec in {
    DDPMScheduler: SchedulerSpec((), _never_deterministic, kernel=ddpm_kernel),
    DDIMScheduler: SchedulerSpec((), _ddim_deterministic, _set_step_kwarg("eta", 1.0), kernel=ddim_kernel),
    EulerDiscreteScheduler: SchedulerSpec(
        (), lambda s, kw: kw.get("s_churn", 0.0) == 0, _switch_to(EulerAncestralDiscreteScheduler)
    ),
    EulerAncestralDiscreteScheduler: SchedulerSpec((), _never_deterministic, kernel=euler_ancestral_kernel),
    LCMScheduler: SchedulerSpec((), _never_deterministic),
    TCDScheduler: SchedulerSpec((), lambda s, kw: kw.get("eta", 0.3) == 0, _set_step_kwarg("eta", 0.3)),
    # diffusers' stochastic_sampling=True re-noises x0-hat from scratch at every step, which shrinks the modes even at
    # 100 steps, so the stochastic variant is FlowMatchEulerSDEScheduler, whose posterior step keeps the Euler step's
    # x0-hat term and refreshes only part of the noise (`s_churn` is accepted by `step` but unused).
    FlowMatchEulerDiscreteScheduler: SchedulerSpec(
        (),
        lambda s, kw: not s.config.stochastic_sampling,
        _switch_to(FlowMatchEulerSDEScheduler, cost=FLOW_SDE_COST),
        space="flow",
    ),
    FlowMatchEulerSDEScheduler: SchedulerSpec(
        (),
        lambda s, kw: kw.get("diffusion_scale", FlowMatchEulerSDEScheduler.default_diffusion_scale) == 0,
        _set_step_kwarg("diffusion_scale", FlowMatchEulerSDEScheduler.default_diffusion_scale, cost=FLOW_SDE_COST),
        space="flow",
        kernel=flow_sde_kernel,
    ),
    DPMSolverMultistepScheduler: SchedulerSpec(
        ("model_outputs",), _dpmsolver_deterministic, _SDE_DPMSOLVER, kernel=dpmsolver_kernel
    ),
    DPMSolverSinglestepScheduler: SchedulerSpec(
        ("model_outputs", "sample"),
        _dpmsolver_deterministic,
        _switch_to(DPMSolverSinglestepScheduler, algorithm_type="sde-dpmsolver++"),
        make_kernel=_KERNEL_SDE_DPMSOLVER,
    ),
    UniPCMultistepScheduler: SchedulerSpec(("model_outputs", "last_sample"), _always_deterministic, _SDE_DPMSOLVER),
    DEISMultistepScheduler: SchedulerSpec(("model_outputs",), _always_deterministic, _SDE_DPMSOLVER),
    SASolverScheduler: SchedulerSpec(
        ("model_outputs", "last_sample", "last_noise"),
        _sasolver_deterministic,
        _switch_to(SASolverScheduler, tau_func=lambda t: 1),
        make_kernel=_KERNEL_SDE_DPMSOLVER,
    ),
    PNDMScheduler: SchedulerSpec(
        ("ets", "cur_sample", "cur_model_output"), _always_deterministic, _switch_to(DDIMScheduler)
    ),
    HeunDiscreteScheduler: SchedulerSpec(
        ("prev_derivative", "sample"), _always_deterministic, _switch_to(KDPM2AncestralDiscreteScheduler)
    ),
    KDPM2DiscreteScheduler: SchedulerSpec(
        ("sample",), _always_deterministic, _switch_to(KDPM2AncestralDiscreteScheduler)
    ),
    KDPM2AncestralDiscreteScheduler: SchedulerSpec(
        ("sample",), _never_deterministic, make_kernel=_switch_for_kernel(EulerAncestralDiscreteScheduler)
    ),
    LMSDiscreteScheduler: SchedulerSpec(
        ("derivatives",), _always_deterministic, _switch_to(EulerAncestralDiscreteScheduler)
    ),
}.items():
    register_scheduler(_cls, _spec)
