"""A steppable diffusion process over any registered diffusers scheduler and a user model callable."""

import copy
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from diffsteer.processes.base import Generators, Model, Step
from diffsteer.processes.kernels import GaussianKernel
from diffsteer.processes.schedulers import (
    SchedulerSpec,
    SchedulerState,
    copy_scheduler,
    effective_config,
    scheduler_spec,
    schedulers_with_kernel,
    unregistered_particle_state,
)
from diffsteer.processes.x0 import alpha_bar, flow_x0, vp_x0
from diffsteer.smc.checks import check_choice, check_int
from diffsteer.smc.particles import Particles


STOCHASTIC_MODES = ("auto", "require", "off")
__all__ = ["STOCHASTIC_MODES", "Generators", "Model", "SchedulerProcess", "Step", "method_scheduler_options"]


def method_scheduler_options(method: Any, stochastic: str = "auto") -> dict[str, Any]:
    """`SchedulerProcess`'s `stochastic`, `require_kernel` and `first_order` for `method` when the caller asked for
    `stochastic`: a method that needs no noise runs the scheduler as given under "auto"; one that reweights by the
    step's kernel or differentiates through whole runs may switch the scheduler only under "auto"."""
    first_order = "any"
    if getattr(method, "requires_first_order", False):
        first_order = "switch" if stochastic == "auto" else "require"
    if not method.requires_stochastic and stochastic == "auto":
        stochastic = "off"
    return {
        "stochastic": stochastic,
        "require_kernel": getattr(method, "requires_kernel", False),
        "first_order": first_order,
    }


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
        require_kernel (`bool`, defaults to `False`): the method reweights shifted transitions by the scheduler's
            Gaussian kernel (twisted SMC): under `stochastic="auto"` a stochastic scheduler without one is switched
            to the nearest that has one (recorded in `changes`); otherwise, or where no switch keeps the model's
            sampling, it is refused here, before any model call.
        first_order (`str`, defaults to `"any"`): `"switch"` replaces a scheduler that keeps history between steps
            or makes two calls per step by the deterministic first-order one of its space (`DDIMScheduler` or
            `FlowMatchEulerDiscreteScheduler`, built from the same config; said in `changes`), for methods that
            differentiate through whole runs; `"require"` refuses it instead; `"any"` takes every scheduler.
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
        require_kernel: bool = False,
        first_order: str = "any",
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
        if require_kernel:
            self.scheduler, self.step_kwargs = self._resolve_kernel(self.scheduler, self.step_kwargs, stochastic)
        check_choice("first_order", first_order, ("any", "switch", "require"))
        if first_order != "any":
            self.scheduler, self.step_kwargs = self._resolve_first_order(self.scheduler, self.step_kwargs, first_order)
        self.spec: SchedulerSpec = scheduler_spec(self.scheduler)
        # Flow matching: FlowMatch schedulers, and VP solvers run with flow sigmas (DPM-Solver, UniPC for SANA/Flux).
        self.is_flow = self.spec.space == "flow" or self.scheduler.config.get("prediction_type") == "flow_prediction"
        try:
            retrieve_timesteps(self.scheduler, num_inference_steps, self.device, **timesteps_kwargs)
        except ValueError as error:
            if not (custom_schedule and self.changes):
                raise
            raise ValueError(
                f"{self.changes[-1]} But {type(self.scheduler).__name__} takes no custom timesteps or sigmas "
                f"({error}). Pass a stochastic scheduler that takes them (for example DDPMScheduler or "
                "DPMSolverMultistepScheduler with algorithm_type='sde-dpmsolver++'), or stochastic='off'."
            ) from None
        self._timesteps = list(self.scheduler.timesteps)
        self.num_model_calls = len(self._timesteps)
        # Order-2 solvers (Heun, KDPM2) make two calls per full step but one for the last: 2T - 1 calls, the full
        # steps starting at the even calls. Counting full steps here, not taking diffusers' count, keeps T right for
        # custom schedules too (`retrieve_timesteps` then reports the calls).
        self._order = 2 if getattr(self.scheduler, "order", 1) == 2 else 1
        self.num_inference_steps = (self.num_model_calls + 1) // 2 if self._order == 2 else self.num_model_calls
        self._boundaries = [k * self._order for k in range(self.num_inference_steps)] + [self.num_model_calls]
        self.stochastic_transition = not self.spec.is_deterministic(self.scheduler, self.step_kwargs)
        # Every run starts from this state; particles carry their own copy from then on (see `SchedulerState`).
        self._initial_state = SchedulerState.capture(self.scheduler)
        self._loaded: SchedulerState | None = self._initial_state
        self._sample_scales: dict[int, float] = {}
        self.particle_calls = 0  # model calls counted per particle row, over every run of this process
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

    def _resolve_first_order(
        self, scheduler: SchedulerMixin, step_kwargs: dict[str, Any], first_order: str
    ) -> tuple[SchedulerMixin, dict[str, Any]]:
        if not scheduler_spec(scheduler).per_particle and getattr(scheduler, "order", 1) == 1:
            return scheduler, step_kwargs
        name = type(scheduler).__name__
        if first_order == "require":
            raise ValueError(
                f"{name} keeps history between steps or makes two model calls per step, so a run is not a chain of "
                "pure steps to differentiate through. Use a first-order scheduler without history (DDIM, DDPM, "
                "Euler, Euler ancestral, flow-matching Euler), or pass stochastic='auto' to let diffsteer switch."
            )
        flow = scheduler_spec(scheduler).space == "flow" or scheduler.config.get("prediction_type") == (
            "flow_prediction"
        )
        target = FlowMatchEulerDiscreteScheduler if flow else DDIMScheduler
        self.changes.append(
            f"{name} keeps history between steps or makes two model calls per step, so it was replaced by "
            f"{target.__name__} (built from the same config), whose steps the method differentiates through."
        )
        return target.from_config(effective_config(scheduler)), {}

    def _resolve_kernel(
        self, scheduler: SchedulerMixin, step_kwargs: dict[str, Any], stochastic: str
    ) -> tuple[SchedulerMixin, dict[str, Any]]:
        # A switch can land on a scheduler that needs one more (Heun -> KDPM2 ancestral -> Euler ancestral).
        for _ in range(3):
            spec = scheduler_spec(scheduler)
            if spec.kernel is not None:
                return scheduler, step_kwargs
            if stochastic != "auto" or spec.make_kernel is None:
                why = (
                    "no switch keeps this model's sampling"
                    if spec.make_kernel is None
                    else f"stochastic={stochastic!r} forbids switching it"
                )
                raise ValueError(
                    f"{type(scheduler).__name__} has no Gaussian transition kernel in diffsteer's scheduler "
                    f"registry, which this method reweights its shifted transitions by, and {why}. Use one of "
                    f"{schedulers_with_kernel()} (DDIM with eta > 0, DPM-Solver with algorithm_type='sde-dpmsolver++')"
                    + (", or pass stochastic='auto' to let diffsteer switch." if spec.make_kernel else ".")
                )
            scheduler, step_kwargs, note = spec.make_kernel(scheduler, step_kwargs)
            self.changes.append(note)
        raise RuntimeError("The scheduler switched to for its kernel still has none.")

    def init(
        self,
        num_particles: int,
        generator: Generators = None,
        latents: torch.Tensor | None = None,
        conditioning: Mapping[str, torch.Tensor] | None = None,
        start: int = 0,
    ) -> Particles:
        """Particles at the start of full step `start` with fresh solver state: the given `latents`, or x_T drawn as
        diffusers' `randn_tensor` draws it (for `start=0` only), and per-particle conditioning.

        A list of generators is not kept with the particles: row i always draws from `generator[i]` (diffusers'
        convention), whatever resampling copies into that row.
        """
        num_particles = check_int("num_particles", num_particles, minimum=1)
        start = self._check_full_step("start", start, allow_end=False)
        shape = (num_particles, *self.shape)
        if latents is None:
            if start != 0:
                raise ValueError(f"latents are needed to start at full step {start}; only step 0 starts from noise.")
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
            latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (num_particles, *shape), got {tuple(latents.shape)}.")
        else:
            latents = latents.to(device=self.device, dtype=self.dtype)
        return Particles(
            num_particles,
            latents=latents,
            model_output=None,
            x0_hat=None,
            scheduler_state=self._state_at(start),
            conditioning=dict(conditioning or {}),
        )

    def steps(self, start: int = 0, stop: int | None = None) -> Iterator[Step]:
        """The model calls of full steps `start` .. `stop - 1` (the whole run by default), until `interrupt` says
        stop."""
        start = self._check_full_step("start", start, allow_end=False)
        stop = self.num_inference_steps if stop is None else self._check_full_step("stop", stop, allow_end=True)
        if stop <= start:
            raise ValueError(f"stop must be greater than start={start}, got {stop}.")
        for index in range(self._boundaries[start], self._boundaries[stop]):
            if self.interrupt is not None and self.interrupt():
                return
            full_step = index // self._order if self._order == 2 else index
            at_boundary = self._order == 1 or index % 2 == 0
            yield Step(index, self._timesteps[index], full_step, at_boundary, full_step / self.num_inference_steps)

    def is_stochastic(self) -> bool:
        """Whether the transition draws noise, as resolved (after any stochastic switch)."""
        return self.stochastic_transition

    def predict(self, particles: Particles, step: Step, with_x0_hat: bool = True) -> None:
        """Run the model at the current particles and store `model_output` and `x0_hat` on them.

        With `with_x0_hat=False` (a step no potential reads), `x0_hat` is set to None instead of computed.
        """
        self._load(particles)
        sample = particles.latents
        model_input = self._scale(sample, step)
        model_output = self._call_model(model_input, sample, step, particles.conditioning)
        particles.model_output = model_output
        particles.x0_hat = self._x0(sample, model_input, model_output, step) if with_x0_hat else None
        self._capture(particles)  # scale_model_input may have set the step index

    def predict_with_gradient(
        self,
        particles: Particles,
        step: Step,
        objective: Callable[[torch.Tensor, slice], torch.Tensor],
        *,
        through_model: bool,
        chunk_size: int | None = None,
        what: str = "the reward",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict`, plus every particle's score `objective(x0_hat_rows, rows)` and its gradient with respect to the
        particle's latents, `chunk_size` rows at a time (see `diffsteer.gradients.chunked_gradient`).

        With `through_model=True` (DPS) the model runs under autograd, one chunk at a time, and the gradient goes
        through its Jacobian: this replaces the step's model call (same forward rows) and adds one backward row per
        particle row. With `through_model=False` the model runs once as in `predict`, x0-hat is held fixed, and the
        reward's gradient with respect to x0-hat is carried to the latents by the Jacobian x0-hat would have for
        unit-variance Gaussian data (`x0_jacobian_scale`): no backward pass through the model. That Jacobian is
        exact for such data and right as the noise vanishes, and it shrinks the gradient at high noise, where
        x0-hat hardly depends on x_t.

        Returns:
            the scores (float64, shape (N,)) and the gradients (the latents' shape); `model_output` and `x0_hat` are
            set on the particles as `predict` sets them.
        """
        from diffsteer.gradients import chunked_gradient

        if not through_model:
            self.predict(particles, step, with_x0_hat=True)
            scores, grads = chunked_gradient(objective, particles.x0_hat, chunk_size=chunk_size, what=what)
            return scores, grads * self.x0_jacobian_scale(step)

        self._load(particles)
        outputs: list[torch.Tensor] = []

        def through(rows_latents: torch.Tensor, rows: slice) -> torch.Tensor:
            conditioning = {name: value[rows] for name, value in particles.conditioning.items()}
            model_input = self._scale(rows_latents, step)
            model_output = self._call_model(model_input, rows_latents, step, conditioning)
            outputs.append(model_output.detach())
            return objective(self._x0(rows_latents, model_input, model_output, step), rows)

        scores, grads = chunked_gradient(through, particles.latents, chunk_size=chunk_size, what=what)
        particles.model_output = torch.cat(outputs)
        latents = particles.latents
        particles.x0_hat = self._x0(latents, self._scale(latents, step), particles.model_output, step)
        self._capture(particles)
        return scores, grads

    def pure_step(
        self, step: Step, conditioning: Mapping[str, torch.Tensor], noise_seed: int
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """`step_fn(x) -> x'`: full step `step` of a first-order scheduler without history, as a pure function of the
        latents, for differentiating through the sampler with gradient checkpointing.

        Every call starts from the fresh solver state of that step on a throwaway copy of the scheduler, and a
        stochastic step draws its noise from a generator seeded with `noise_seed`, so calling it again (as
        checkpointing does in the backward pass) replays exactly the same step: no `_step_index` moves twice, no
        history is appended, no caller's generator is drawn from. Model calls are counted as `predict` counts them.

        Raises:
            ValueError: for a scheduler that keeps history between steps or makes two calls per step (the step is
                then not a function of the latents alone).
        """
        if self.spec.per_particle or self._order != 1:
            raise ValueError(
                f"{type(self.scheduler).__name__} keeps history between steps or makes two model calls per step, so "
                "one step is not a function of the latents alone; differentiating through the sampler needs a "
                "first-order scheduler without history (DDIM, DDPM, Euler, Euler ancestral, flow-matching Euler)."
            )
        state = self._state_at(step.full_step)
        scheduler = self.scheduler
        kwargs = dict(self.step_kwargs)

        def step_fn(x: torch.Tensor) -> torch.Tensor:
            probe = copy.copy(scheduler)
            state.load(probe)
            output = self._call_model(self._scale(x, step, probe), x, step, conditioning)
            if "generator" in self._step_parameters:
                kwargs["generator"] = torch.Generator(device=x.device).manual_seed(noise_seed)
            return probe.step(output, step.timestep, x, **kwargs).prev_sample

        return step_fn

    def x0_jacobian_scale(self, step: Step) -> float:
        """d x0-hat / d x_t at `step` for unit-variance Gaussian data, where x0-hat = E[x0 | x_t] is linear in x_t:
        sqrt(alpha_bar) times the model-input scale for VP schedulers (x_in = sqrt(a) x0 + sqrt(1 - a) eps, so
        E[x0 | x_in] = sqrt(a) x_in), and (1 - s) / ((1 - s)^2 + s^2) for flow matching at sigma s."""
        if self.is_flow:
            sigma = self._flow_sigma(step)
            return (1 - sigma) / ((1 - sigma) ** 2 + sigma**2)
        input_scale = float(self._scale(torch.ones((), dtype=torch.float64), step))
        return math.sqrt(self._alpha_bars[step.index]) * input_scale

    def _scale(self, sample: torch.Tensor, step: Step, scheduler: SchedulerMixin | None = None) -> torch.Tensor:
        """The model input: `scale_model_input` of `scheduler` (the live one by default), where it has one."""
        scale = getattr(self.scheduler if scheduler is None else scheduler, "scale_model_input", None)
        return scale(sample, step.timestep) if scale is not None else sample

    def _call_model(
        self, model_input: torch.Tensor, sample: torch.Tensor, step: Step, conditioning: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """One counted model call on `sample`'s rows, its output's shape checked."""
        model_output = self.model(model_input, step.timestep, **conditioning)
        self.particle_calls += sample.shape[0]
        if model_output.shape != sample.shape:
            raise ValueError(
                f"The model returned shape {tuple(model_output.shape)} for samples of shape {tuple(sample.shape)}; "
                "it must return one output per particle with the sample's shape."
            )
        return model_output

    def _flow_sigma(self, step: Step) -> float:
        # The scheduler's own sigma for this step: solvers such as DPM-Solver in flow mode round their timesteps,
        # so timestep / num_train_timesteps would be off by up to 1e-3.
        index = self.scheduler.step_index if self.scheduler.step_index is not None else step.index
        return self._sigmas[index]

    def _x0(
        self, sample: torch.Tensor, model_input: torch.Tensor, model_output: torch.Tensor, step: Step
    ) -> torch.Tensor:
        """x0-hat at `step` from the sample, its model input and the model's output (differentiable in all)."""
        if self.is_flow:
            return flow_x0(sample, model_output, self._flow_sigma(step))
        prediction_type = self.scheduler.config.prediction_type
        return vp_x0(model_input, model_output, self._alpha_bars[step.index], prediction_type)

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
        """One `scheduler.step` from the current particles; noise comes only from `generator` (with a list of
        generators, row i draws from `generator[i]`)."""
        kwargs = dict(self.step_kwargs)
        if "generator" in self._step_parameters:
            if isinstance(generator, list) and len(generator) != particles.num_particles:
                raise ValueError(
                    f"A list of generators needs one per particle row: {particles.num_particles} rows, "
                    f"{len(generator)} generators."
                )
            kwargs["generator"] = generator
        self._load(particles)
        output = self.scheduler.step(particles.model_output, step.timestep, particles.latents, **kwargs)
        particles.latents = output.prev_sample
        self._capture(particles)

    def kernel(self, particles: Particles, step: Step) -> GaussianKernel:
        """The Gaussian kernel N(mean, std^2) that `transition` draws from at `step`, given the particles' latents,
        `model_output` and solver history; reading it steps no scheduler and draws no noise.

        Raises:
            ValueError: if the scheduler (as resolved, after any stochastic switch) has no kernel in the registry.
        """
        kernel = self.spec.kernel
        if kernel is None:
            raise ValueError(
                f"{type(self.scheduler).__name__} has no Gaussian transition kernel in diffsteer's scheduler "
                "registry, so a method that reweights its shifted transitions cannot run on it. Use one of "
                f"{schedulers_with_kernel()} (with eta > 0 for DDIM, algorithm_type='sde-dpmsolver++' for "
                "DPM-Solver), or register a kernel with `diffsteer.processes.register_scheduler`."
            )
        self._load(particles)
        return kernel(self.scheduler, particles.model_output, step.timestep, particles.latents, self.step_kwargs)

    def renoise(self, particles: Particles, start: int, to: int, generator: Generators = None) -> None:
        """Draw x at the start of full step `to` from the forward kernel q(x_to | x_start) of the scheduler's own
        noising process (`to < start`: noisier), and give the particles fresh solver state there.

        In VP coordinates y = s x (s is what `scale_model_input` multiplies by: 1 for DDPM/DDIM, 1/sqrt(sigma^2 + 1)
        for Euler-type schedulers), y_to = sqrt(a_to / a_start) y_start + sqrt(1 - a_to / a_start) z; for flow
        matching, x_to = (1 - s_to) / (1 - s_start) x_start + sqrt(s_to^2 - ((1 - s_to) / (1 - s_start))^2
        s_start^2) z, so that both compose with the forward process q(x_t | x0) exactly. `start` may be
        `num_inference_steps` (clean samples, noise level 0).
        """
        start = self._check_full_step("start", start, allow_end=True)
        to = self._check_full_step("to", to, allow_end=False)
        if to >= start:
            raise ValueError(f"to must be a noisier full step than start={start} (to < start), got {to}.")
        x = particles.latents.to(torch.float64)
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.is_flow:
            s_from, s_to = self._full_step_sigma(start), self._full_step_sigma(to)
            decay = (1 - s_to) / (1 - s_from)
            renoised = decay * x + math.sqrt(max(s_to**2 - (decay * s_from) ** 2, 0.0)) * noise
        else:
            a_from, a_to = self._full_step_alpha_bar(start), self._full_step_alpha_bar(to)
            scale_from, scale_to = self._full_step_sample_scale(start), self._full_step_sample_scale(to)
            ratio = a_to / a_from
            renoised = (math.sqrt(ratio) * scale_from * x + math.sqrt(1 - ratio) * noise) / scale_to
        particles.latents = renoised.to(particles.latents.dtype)
        particles.model_output, particles.x0_hat = None, None
        particles.scheduler_state = self._state_at(to)

    # ---- solver state: loaded into the one live scheduler before a call, captured after ----

    def _load(self, particles: Particles) -> None:
        state = particles.scheduler_state
        if state is not self._loaded:
            state.load(self.scheduler)
            self._loaded = state

    def _capture(self, particles: Particles) -> None:
        state = SchedulerState.capture(self.scheduler)
        particles.scheduler_state = self._loaded = state

    def _state_at(self, full_step: int) -> SchedulerState:
        """Fresh solver state (no history) at the start of `full_step`."""
        if full_step == 0 or "_step_index" not in self._initial_state.attributes:
            return self._initial_state
        return self._initial_state.replace(_step_index=self._boundaries[full_step])

    def _check_full_step(self, name: str, value: Any, *, allow_end: bool) -> int:
        last = self.num_inference_steps if allow_end else self.num_inference_steps - 1
        return check_int(name, value, minimum=0, maximum=last, hint=f"Full steps run 0 .. {last}.")

    # ---- noise levels at full-step boundaries (index num_inference_steps: the clean end) ----

    def _full_step_sigma(self, full_step: int) -> float:
        if full_step == self.num_inference_steps:
            return 0.0
        return self._sigmas[self._boundaries[full_step]]

    def _full_step_alpha_bar(self, full_step: int) -> float:
        if full_step == self.num_inference_steps:
            return 1.0
        return self._alpha_bars[self._boundaries[full_step]]

    def _full_step_sample_scale(self, full_step: int) -> float:
        """s with model input = s * sample at the start of `full_step` (1 at the clean end)."""
        if full_step == self.num_inference_steps:
            return 1.0
        call = self._boundaries[full_step]
        if call not in self._sample_scales:
            probe = copy.copy(self.scheduler)  # a throwaway scheduler: the live one's state stays as it is
            self._state_at(full_step).load(probe)
            scale = getattr(probe, "scale_model_input", None)
            ones = torch.ones((), dtype=torch.float64)
            self._sample_scales[call] = float(scale(ones, self._timesteps[call])) if scale is not None else 1.0
        return self._sample_scales[call]
