"""A steppable diffusion process over any registered diffusers scheduler and a user model callable."""

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from diffsteer.processes.schedulers import (
    SchedulerSpec,
    SchedulerState,
    copy_scheduler,
    scheduler_spec,
    unregistered_particle_state,
)
from diffsteer.processes.x0 import alpha_bar, flow_x0, vp_x0
from diffsteer.smc.checks import check_choice, check_int
from diffsteer.smc.particles import Particles


# model(sample, timestep, **conditioning) -> model_output; conditioning holds per-particle tensors, if any.
Model = Callable[..., torch.Tensor]
Generators = torch.Generator | list[torch.Generator] | None
STOCHASTIC_MODES = ("auto", "require", "off")


@dataclass(frozen=True)
class Step:
    """One model call of the sampling loop.

    Attributes:
        index: position in `scheduler.timesteps` (one model call each).
        timestep: the scheduler's timestep for this call.
        full_step: index of the full solver step this call belongs to (0 .. num_inference_steps - 1).
        at_boundary: True when this call starts a full step, so the particles sit on the solver's grid with no
            half-step state (always True for first-order schedulers; every other call for Heun and KDPM2).
        progress: full_step / num_inference_steps, 0 at pure noise.
    """

    index: int
    timestep: torch.Tensor
    full_step: int
    at_boundary: bool
    progress: float


class SchedulerProcess:
    """`model(sample, timestep) -> model_output` driven by a diffusers scheduler, one particle per batch row.

    The process owns a fresh copy of the scheduler (built from its effective config, including the fixes a
    pipeline applied to an old config), so the caller's scheduler is never mutated and every run starts from the
    same state.

    Args:
        model (`Callable[[Tensor, Tensor], Tensor]`): the denoiser; it returns epsilon, v or the sample as the
            scheduler's `prediction_type` says (velocity for flow-matching schedulers).
        scheduler (`SchedulerMixin`): any scheduler in `diffsteer.processes.SCHEDULER_REGISTRY` (or a subclass).
        shape (`tuple[int, ...]`): the shape of one sample, without the particle dimension.
        num_inference_steps (`int`, *optional*): full solver steps; ignored (and may be `None`) when
            `timesteps_kwargs` gives custom `timesteps` or `sigmas`, whose length sets it, as in diffusers'
            `retrieve_timesteps`.
        step_kwargs (`dict`, *optional*): extra arguments of `scheduler.step` (for example `eta` for DDIM).
        stochastic (`str`, defaults to `"auto"`): what to do when the transition is deterministic. `"auto"` switches
            to the stochastic variant and records it in `changes`; `"require"` raises; `"off"` runs the scheduler
            exactly as given.
        device, dtype: where and in which precision samples live.
        timesteps_kwargs (`dict`, *optional*): custom `timesteps`, `sigmas` or `mu` for `set_timesteps`, as
            diffusers' `retrieve_timesteps` takes them.
        interrupt (`Callable[[], bool]`, *optional*): polled before each model call; once it returns True, `steps`
            ends and the current particles are the run's result (a pipeline's `interrupt` property).
    """

    def __init__(
        self,
        model: Model,
        scheduler: SchedulerMixin,
        *,
        shape: tuple[int, ...],
        num_inference_steps: int | None,
        step_kwargs: dict[str, Any] | None = None,
        stochastic: str = "auto",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        timesteps_kwargs: dict[str, Any] | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> None:
        check_choice("stochastic", stochastic, STOCHASTIC_MODES)
        timesteps_kwargs = {name: value for name, value in (timesteps_kwargs or {}).items() if value is not None}
        custom_schedule = "timesteps" in timesteps_kwargs or "sigmas" in timesteps_kwargs
        if custom_schedule:
            num_inference_steps = None  # the custom schedule's length sets it, as in the pipelines
        else:
            num_inference_steps = check_int(
                "num_inference_steps", num_inference_steps, minimum=1, hint="Or pass custom timesteps or sigmas."
            )
        self.interrupt = interrupt
        self.model = model
        self.shape = tuple(shape)
        self.num_inference_steps = num_inference_steps
        self.device = torch.device(device)
        self.dtype = dtype
        self.changes: list[str] = []
        self.scheduler, self.step_kwargs = self._resolve_stochastic(
            copy_scheduler(scheduler), dict(step_kwargs or {}), stochastic
        )
        self.spec: SchedulerSpec = scheduler_spec(self.scheduler)
        # Flow matching: FlowMatch schedulers, and VP solvers run with flow sigmas (DPM-Solver, UniPC for SANA/Flux).
        self.is_flow = self.spec.space == "flow" or self.scheduler.config.get("prediction_type") == "flow_prediction"
        try:
            _, self.num_inference_steps = retrieve_timesteps(
                self.scheduler, num_inference_steps, self.device, **timesteps_kwargs
            )
        except ValueError as error:
            if not (custom_schedule and self.changes):
                raise
            raise ValueError(
                f"{self.changes[-1]} But {type(self.scheduler).__name__} takes no custom timesteps or sigmas "
                f"({error}). Pass a stochastic scheduler that takes them (for example DDPMScheduler or "
                "DPMSolverMultistepScheduler with algorithm_type='sde-dpmsolver++'), or stochastic='off'."
            ) from None
        # The noise level of every model call, read once (one host sync per run, not one per step on a GPU).
        if self.is_flow:
            self._sigmas = self.scheduler.sigmas.tolist()
        else:
            self._alpha_bars = [alpha_bar(self.scheduler, t) for t in self.scheduler.timesteps.tolist()]
        parameters = inspect.signature(self.scheduler.step).parameters
        self._step_parameters = set(parameters)
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        if accepts_any:
            self._step_parameters.add("generator")
        unknown = set() if accepts_any else set(self.step_kwargs) - self._step_parameters
        if unknown:
            raise ValueError(
                f"step_kwargs {sorted(unknown)} are not arguments of {type(self.scheduler).__name__}.step; "
                f"it accepts {sorted(self._step_parameters - {'self', 'model_output', 'timestep', 'sample'})}."
            )

    def _resolve_stochastic(
        self, scheduler: SchedulerMixin, step_kwargs: dict[str, Any], stochastic: str
    ) -> tuple[SchedulerMixin, dict[str, Any]]:
        # A switch can land on a scheduler that is itself deterministic by default (PNDM -> DDIM with eta=0), so
        # keep switching until the transition draws noise.
        for _ in range(3):
            spec = scheduler_spec(scheduler)
            if stochastic == "off" or not spec.is_deterministic(scheduler, step_kwargs):
                return scheduler, step_kwargs
            if stochastic == "require" or spec.make_stochastic is None:
                raise ValueError(
                    f"{type(scheduler).__name__} with step_kwargs={step_kwargs} has a deterministic transition, so "
                    "resampled copies of a particle would never separate. Use a stochastic sampler (for example "
                    "DDIMScheduler with step_kwargs={'eta': 1.0}, DDPMScheduler, EulerAncestralDiscreteScheduler, "
                    "or DPMSolverMultistepScheduler with algorithm_type='sde-dpmsolver++'), or pass "
                    "stochastic='auto' to let diffsteer switch, or stochastic='off' to run it as it is."
                )
            scheduler, step_kwargs, note = spec.make_stochastic(scheduler, step_kwargs)
            self.changes.append(note)
        raise RuntimeError("The stochastic variant of the scheduler is still deterministic.")

    def init(
        self,
        num_particles: int,
        generator: Generators = None,
        latents: torch.Tensor | None = None,
        conditioning: Mapping[str, torch.Tensor] | None = None,
    ) -> Particles:
        """Initial particles: x_T (given, or drawn as diffusers' `randn_tensor` draws it), the scheduler's
        per-particle state, per-particle conditioning and, for a list of generators, the generators themselves."""
        shape = (num_particles, *self.shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
            latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (num_particles, *shape), got {tuple(latents.shape)}.")
        else:
            latents = latents.to(device=self.device, dtype=self.dtype)
        particles = Particles(
            num_particles,
            latents=latents,
            model_output=None,
            x0_hat=None,
            scheduler_state=SchedulerState(self.scheduler),
            conditioning=dict(conditioning or {}),
        )
        if isinstance(generator, list):
            particles.generators = list(generator)
        return particles

    def steps(self) -> Iterator[Step]:
        """The model calls of one run, in order, until `interrupt` says stop. Lazy: `at_boundary` is read off the
        scheduler's live state."""
        full_step = -1
        for index, timestep in enumerate(self.scheduler.timesteps):
            if self.interrupt is not None and self.interrupt():
                return
            at_boundary = getattr(self.scheduler, "state_in_first_order", True)
            full_step += int(at_boundary)
            yield Step(index, timestep, full_step, at_boundary, full_step / self.num_inference_steps)

    def predict(self, particles: Particles, step: Step, with_x0_hat: bool = True) -> None:
        """Run the model at the current particles and store `model_output` and `x0_hat` on them.

        With `with_x0_hat=False` (a step no potential reads), `x0_hat` is set to None instead of computed.
        """
        sample = particles.latents
        scale = getattr(self.scheduler, "scale_model_input", None)
        model_input = scale(sample, step.timestep) if scale is not None else sample
        model_output = self.model(model_input, step.timestep, **particles.conditioning)
        if model_output.shape != sample.shape:
            raise ValueError(
                f"The model returned shape {tuple(model_output.shape)} for samples of shape {tuple(sample.shape)}; "
                "it must return one output per particle with the sample's shape."
            )
        particles.model_output = model_output
        if not with_x0_hat:
            particles.x0_hat = None
            return
        if self.is_flow:
            # The scheduler's own sigma for this step: solvers such as DPM-Solver in flow mode round their
            # timesteps, so timestep / num_train_timesteps would be off by up to 1e-3.
            index = self.scheduler.step_index if self.scheduler.step_index is not None else step.index
            x0_hat = flow_x0(sample, model_output, self._sigmas[index])
        else:
            x0_hat = vp_x0(
                model_input, model_output, self._alpha_bars[step.index], self.scheduler.config.prediction_type
            )
        particles.x0_hat = x0_hat

    def check_particle_state(self, num_particles: int) -> None:
        """Raise if the scheduler holds per-particle state the registry does not know (resampling would miss it)."""
        unknown = unregistered_particle_state(self.scheduler, num_particles)
        if unknown:
            raise RuntimeError(
                f"{type(self.scheduler).__name__} holds per-particle attributes {unknown} that diffsteer's scheduler "
                "registry does not list, so resampling would leave them behind and corrupt the particles. Add them "
                "with `diffsteer.processes.register_scheduler`."
            )

    def transition(self, particles: Particles, step: Step, generator: Generators = None) -> None:
        """One `scheduler.step` from the current particles; noise comes only from `generator` (a list of
        generators, re-indexed with the particles, gives each particle its own stream)."""
        kwargs = dict(self.step_kwargs)
        if "generator" in self._step_parameters:
            kwargs["generator"] = particles.generators if isinstance(generator, list) else generator
        output = self.scheduler.step(particles.model_output, step.timestep, particles.latents, **kwargs)
        particles.latents = output.prev_sample
