"""The steering engine shared by every pipeline family: written once, used by each `<Family>SteeringPipeline`.

A family contributes one method, `_steering_setup`, that reuses its parent's own preparation (`check_inputs`,
`encode_prompt`, `prepare_latents`, ...) and returns a `FamilySetup`: the denoiser, which makes the parent's calls
and returns their conditional and unconditional parts (`diffsteer.pipelines.denoiser`), the guidance that combines
them, the initial latents, the per-particle conditioning (re-indexed with the particles), and how to decode
latents. The engine runs `diffsteer.loop.run_steering` with one particle
group per prompt, scores x0-hat through the VAE in chunks, and assembles a `SteeringPipelineOutput`.
"""

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from diffsteer.loop import RunContext, check_scores
from diffsteer.methods.base import Method, check_method, run_method
from diffsteer.outputs import CostLedger
from diffsteer.pipelines.denoiser import Combine, Denoise, combined
from diffsteer.pipelines.pipeline_output import SteeringPipelineOutput
from diffsteer.processes.scheduler_process import STOCHASTIC_MODES, SchedulerProcess, Step, method_scheduler_options
from diffsteer.rewards import get_spec as get_reward_spec
from diffsteer.rewards import load as load_reward
from diffsteer.smc.checks import check_callable, check_choice, check_int, check_number
from diffsteer.smc.particles import Particles


RewardFn = Callable[[torch.Tensor, Sequence[str]], Any]


@dataclass
class FamilySetup:
    """What a family's preparation hands to the engine.

    Attributes:
        denoise: the denoiser `denoise(sample, timestep, **conditioning) -> DenoiserParts`, making the parent's
            calls (its conditional and, under classifier-free guidance, unconditional outputs); it counts its rows
            in the ledger.
        combine: `combine(parts) -> model_output`, the guidance the parent applies to those parts.
        latents: initial latents, shape (num_prompts * num_particles, *shape), prompt-major.
        conditioning: per-particle tensors (leading dimension num_prompts * num_particles).
        prompts: one string per prompt group (for rewards that read the prompt).
        decode: (latents, vae) -> images in [-1, 1], shape (n, 3, H, W), with that VAE's own scaling (so a cheaper
            `AutoencoderTiny` can stand in for intermediate rewards).
        step_kwargs: extra `scheduler.step` arguments (for example `eta`).
        timesteps_kwargs: custom `timesteps`, `sigmas` or `mu` for the scheduler.
        finish: called when the run ends, even by an error (for example to cast an upcast VAE back).
    """

    denoise: Denoise
    combine: Combine
    latents: torch.Tensor
    conditioning: dict[str, torch.Tensor]
    prompts: list[str]
    decode: Callable[[torch.Tensor, Any], torch.Tensor]
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    timesteps_kwargs: dict[str, Any] = field(default_factory=dict)
    finish: Callable[[], None] | None = None

    @property
    def model(self) -> Callable[..., torch.Tensor]:
        """The guided denoiser `model(sample, timestep, **conditioning)` that a plain run steps with."""
        return combined(self.denoise, self.combine)


def prompt_list(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> list[str]:
    """One string per prompt group (empty strings when only embeddings were given)."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt is not None:
        return list(prompt)
    return [""] * prompt_embeds.shape[0]


def steering_signature(parent_call: Callable[..., Any]) -> inspect.Signature:
    """The parent's call signature with the steering arguments added as keyword-only parameters (before the parent's
    `**kwargs`, if it has one), so that tools reading `inspect.signature(pipe.__call__)` (diffusers' helpers and test
    mixins, UIs that build forms, IDEs) see every parameter of the parent with its default."""
    parent = inspect.signature(parent_call)
    steering = [
        parameter
        for parameter in inspect.signature(SteeringMixin.__call__).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    parameters = list(parent.parameters.values())
    var_keyword = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in parameters}
    clashes = names & {p.name for p in steering}
    if clashes:
        raise TypeError(f"{parent_call.__qualname__} already has parameters {sorted(clashes)} that steering adds.")
    regular = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return parent.replace(parameters=[*regular, *steering, *var_keyword], return_annotation=inspect.Signature.empty)


class SteeringMixin:
    """Adds `reward=`, `method=`, `decode_batch_size=`, `stochastic=` and `reward_decoder=` to a diffusers
    pipeline's call. A subclass names its parent in `_steering_parent`; its `__call__` then carries the parent's
    full signature plus these arguments."""

    _steering_parent: type
    # Whether the parent concatenates conditioning as [negative; positive] under classifier-free guidance before its
    # denoising loop (SD, SDXL, SD3), so that its callbacks see, for example, `prompt_embeds` with 2 rows per image.
    # Flux runs its true-CFG passes separately and shows the positive rows alone.
    _callback_concatenates_cfg: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        parent = cls.__dict__.get("_steering_parent")
        if parent is None:
            return

        def __call__(self: SteeringMixin, *args: Any, **kwargs: Any) -> Any:
            return SteeringMixin.__call__(self, *args, **kwargs)

        __call__.__signature__ = steering_signature(parent.__call__)
        __call__.__doc__ = (
            f"{SteeringMixin.__call__.__doc__}\n\n{parent.__name__}.__call__:\n{parent.__call__.__doc__}"
        )
        __call__.__qualname__ = f"{cls.__qualname__}.__call__"
        __call__.__module__ = cls.__module__
        cls.__call__ = __call__

    def __call__(
        self,
        *args: Any,
        reward: str | RewardFn | None = None,
        method: Method | None = None,
        decode_batch_size: int = 8,
        stochastic: str = "auto",
        reward_decoder: Any | None = None,
        **kwargs: Any,
    ) -> Any:
        """The parent pipeline's call (same positional and keyword arguments, same defaults) plus:

        Args:
            reward (`str` or `Callable`, *optional*): a name from `diffsteer.rewards.available()` (loaded with its
                default weights on the pipeline's device), a `diffsteer.rewards.Reward`, or any callable
                `reward(images, prompts) -> N scores`, images float in [0, 1] of shape
                (N, 3, H, W), higher is better.
            method (*optional*): `None` runs the parent pipeline unchanged. Otherwise a steering method:
                `diffsteer.FK`, `BestOfN`, `ZeroOrder`, `Paths`, `SVDD`, `RBF`, or
                `diffsteer.make_method(name, budget=B, num_inference_steps=T)`. With a method,
                `num_images_per_prompt=k` returns k images per prompt selected from the `num_particles` samples the
                method returns for that prompt (k may not exceed them), and an interrupt (`pipe._interrupt = True`
                in a callback) stops the denoising loop as in the parent: the current particles are scored, selected
                and decoded.
            decode_batch_size (`int`, defaults to 8): rows decoded and scored at a time.
            stochastic (`str`, defaults to `"auto"`): `"auto"` switches a deterministic scheduler (DDIM with
                `eta=0`, ...) to its stochastic variant for FK and reports it in `changes`; `"require"` raises;
                `"off"` runs the scheduler as given.
            reward_decoder (`AutoencoderTiny`, *optional*): a cheaper decoder for the intermediate rewards (for
                example `AutoencoderTiny.from_pretrained("madebyollin/taesd")`); the final reward and the images use
                the pipeline's VAE.

        Returns:
            [`~diffsteer.pipelines.SteeringPipelineOutput`] with a method, else the parent's output.
        """
        with torch.no_grad():
            return self._steering_call(args, kwargs, reward, method, decode_batch_size, stochastic, reward_decoder)

    def _steering_setup(self, call: dict[str, Any], num_particles: int, ledger: CostLedger) -> FamilySetup:
        raise NotImplementedError

    def _steering_call(
        self,
        args: tuple,
        kwargs: dict[str, Any],
        reward: str | RewardFn | None,
        method: Method | None,
        decode_batch_size: int,
        stochastic: str,
        reward_decoder: Any | None = None,
    ) -> Any:
        parent_call = self._steering_parent.__call__
        if method is None:
            if reward is not None:
                raise ValueError(
                    "reward= is only used with a method=; pass method=diffsteer.FK(...), BestOfN(...) or "
                    "diffsteer.make_method(name, budget=..., num_inference_steps=...)."
                )
            return parent_call(self, *args, **kwargs)
        call = inspect.signature(parent_call).bind(self, *args, **kwargs)
        call.apply_defaults()
        call = dict(call.arguments)
        call.pop("self")
        _check_steering_inputs(call, reward, method, decode_batch_size, stochastic)
        if isinstance(reward, str):
            reward = load_reward(reward).to(self._execution_device)

        ledger = CostLedger()
        setup = self._steering_setup(call, method.num_particles, ledger)
        try:
            return self._steer(call, setup, reward, method, decode_batch_size, stochastic, reward_decoder, ledger)
        finally:
            if setup.finish is not None:
                setup.finish()

    def _steer(
        self,
        call: dict[str, Any],
        setup: FamilySetup,
        reward: RewardFn,
        method: Method,
        decode_batch_size: int,
        stochastic: str,
        reward_decoder: Any | None,
        ledger: CostLedger,
    ) -> Any:
        num_prompts = len(setup.prompts)
        progress: dict[str, Any] = {"bar": None}  # a search's bar counts particle model calls (see below)
        scorer = _ChunkedScorer(setup, reward, num_prompts, decode_batch_size, ledger)
        scorer.intermediate_vae = reward_decoder if reward_decoder is not None else self.vae
        scorer.vae = self.vae  # the final reward and the images use the full VAE
        scorer.keep_decoded = call["output_type"] != "latent"
        process = SchedulerProcess(
            _timed(setup.model, ledger, progress),
            self.scheduler,
            shape=tuple(setup.latents.shape[1:]),
            num_inference_steps=call["num_inference_steps"],
            step_kwargs=setup.step_kwargs,
            **method_scheduler_options(method, stochastic),
            device=setup.latents.device,
            dtype=setup.latents.dtype,
            timesteps_kwargs=setup.timesteps_kwargs,
            interrupt=lambda: self.interrupt,
        )
        num_calls = process.num_model_calls
        self._num_timesteps = num_calls
        # A method that makes a plain run's transitions (FK, best-of-N) counts steps, as the parent's bar does; the
        # searches make a varying number of transitions, so their bar counts particle model calls against the
        # method's plan (rollover budget forcing may finish under it).
        passes = method.model_passes(process.num_inference_steps, num_calls)
        plain_like = passes == method.num_particles * num_calls
        with self.progress_bar(total=num_calls if plain_like else passes * num_prompts) as progress_bar:
            if not plain_like:
                progress["bar"] = progress_bar
            ctx = RunContext(
                process,
                scorer.score_x0_hat,
                scorer.score_final,
                ledger,
                num_groups=num_prompts,
                generator=call["generator"],
                latents=setup.latents,
                conditioning=setup.conditioning,
                num_outputs=call["num_images_per_prompt"],
                on_step_end=self._steering_callback(call, progress_bar, plain_like),
                gradient_reward=scorer.gradient_reward,
                gradient_chunk_size=decode_batch_size,
            )
            run = run_method(method, ctx)
        output_type = call["output_type"]
        selected = run.selected_indices.flatten()
        if output_type == "latent":
            images, particles, nsfw = _take(run.samples, selected), run.samples, None
        else:
            # The final reward decoded every particle with the full VAE, and every particle goes through the
            # parent's postprocessing (its safety checker included): the images are those particles, made once. A
            # search returns the best samples of several rounds, which are decoded again.
            decoded = scorer.decoded if scorer.last_final is run.samples else scorer.decode(run.samples)
            particles, particle_nsfw = self._steering_postprocess(decoded, output_type)
            images = _take(particles, selected)
            nsfw = None if particle_nsfw is None else [particle_nsfw[int(i)] for i in selected]
        self.maybe_free_model_hooks()
        ledger.stop()
        output = SteeringPipelineOutput(
            images=images,
            nsfw_content_detected=nsfw,
            particles=particles,
            rewards=run.rewards,
            log_weights=run.log_weights,
            log_normalizers=run.log_normalizers,
            selected_indices=run.selected_indices,
            trace=run.trace,
            cost=ledger,
            changes=run.changes,
        )
        if call["return_dict"]:
            return output
        return (images, nsfw) if "safety_checker" in self.components else (images,)  # the parent's tuple

    def _check_parent_inputs(self, call: dict[str, Any], height: int, width: int) -> None:
        """The parent's own `check_inputs`, fed by name from the bound call (its parameters are call arguments)."""
        values = {**call, "height": height, "width": width}
        self.check_inputs(**{name: values.get(name) for name in inspect.signature(self.check_inputs).parameters})

    def _steering_postprocess(self, images: torch.Tensor, output_type: str) -> tuple[Any, list[bool] | None]:
        """The parent's postprocessing, with its safety checker where it has one."""
        nsfw = None
        if getattr(self, "safety_checker", None) is not None:
            images, nsfw = self.run_safety_checker(images, images.device, images.dtype)
        if getattr(self, "watermark", None) is not None:
            images = self.watermark.apply_watermark(images)
        denormalize = [True] * images.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
        return self.image_processor.postprocess(images, output_type=output_type, do_denormalize=denormalize), nsfw

    def _steering_callback(
        self, call: dict[str, Any], progress_bar: Any, progress_counts_steps: bool = True
    ) -> Callable[[Step, Particles], None]:
        """Progress, and the parent's `callback_on_step_end` with the particles' tensors laid out as the parent lays
        out its own (see `_callback_tensors`)."""
        callback = call.get("callback_on_step_end")
        names = call.get("callback_on_step_end_tensor_inputs") or ["latents"]
        if isinstance(callback, PipelineCallback | MultiPipelineCallbacks):
            names = callback.tensor_inputs  # as the parent does

        def on_step_end(step: Step, particles: Particles) -> None:
            if callback is not None:
                tensors = self._callback_tensors(particles, names)
                outputs = callback(self, step.index, step.timestep, tensors)
                self._apply_callback_outputs(particles, outputs)
            if progress_counts_steps:
                progress_bar.update()

        return on_step_end

    def _callback_tensors(self, particles: Particles, names: Sequence[str]) -> dict[str, torch.Tensor | None]:
        """The callback's tensors as the parent shows them: under classifier-free guidance SD, SDXL and SD3
        concatenate [negative; positive] rows (so a callback can, for example, keep `prompt_embeds.chunk(2)[1]` and
        turn guidance off, as diffusers' dynamic-CFG recipe does); a name the run does not have is None, as in the
        parent."""
        conditioning = particles.conditioning
        tensors: dict[str, torch.Tensor | None] = {}
        for name in names:
            negative = conditioning.get(f"negative_{name}")
            if name == "latents":
                tensors[name] = particles.latents
            elif self._callback_concatenates_cfg and negative is not None and name in conditioning:
                tensors[name] = torch.cat([negative, conditioning[name]])
            else:
                tensors[name] = conditioning.get(name)
        return tensors

    def _apply_callback_outputs(self, particles: Particles, outputs: dict[str, Any]) -> None:
        """Take the callback's edits back into the particles, splitting concatenated [negative; positive] rows.

        A concatenated tensor returned with one row per particle keeps only the positive rows: classifier-free
        guidance is then off for it, as in the parent. Edits of a negative tensor that the parent concatenated
        earlier change nothing there, so they change nothing here either.
        """
        if "latents" in outputs:
            particles.latents = outputs["latents"]
        conditioning = dict(particles.conditioning)
        for name, value in outputs.items():
            negative = f"negative_{name}"
            concatenated = self._callback_concatenates_cfg and negative in conditioning
            if name == "latents" or name not in conditioning or value is None:
                continue
            if self._callback_concatenates_cfg and name.startswith("negative_") and name[9:] in conditioning:
                continue
            if concatenated and value.shape[0] == 2 * particles.num_particles:
                conditioning[negative], conditioning[name] = value.chunk(2)
            elif concatenated and value.shape[0] == particles.num_particles:
                conditioning[name] = value
                del conditioning[negative]
            elif concatenated:
                raise ValueError(
                    f"callback_on_step_end returned {name} with {value.shape[0]} rows; under classifier-free guidance "
                    f"it takes {2 * particles.num_particles} ([negative; positive], as it was given) or "
                    f"{particles.num_particles} (positive rows only, turning guidance off)."
                )
            else:
                conditioning[name] = value
        particles.conditioning = conditioning


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """`torch.cat`, without the copy when there is one tensor (one chunk, the common case)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _take(images: Any, indices: torch.Tensor) -> Any:
    """Rows `indices` of postprocessed images, whatever their `output_type` (PIL list, numpy array, tensor)."""
    if isinstance(images, list):
        return [images[int(i)] for i in indices]
    if isinstance(images, np.ndarray):
        return images[indices.cpu().numpy()]
    # index_select, not images[indices]: advanced indexing enters a parallel region that costs milliseconds on a
    # loaded CPU.
    return images.index_select(0, indices.to(images.device))


def _timed(
    model: Callable[..., torch.Tensor], ledger: CostLedger, progress: dict[str, Any]
) -> Callable[..., torch.Tensor]:
    """The family's denoiser, with the time spent inside it added to the ledger (and its particle rows to the
    progress bar, where the bar counts them)."""

    def timed(sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        started = time.perf_counter()
        output = model(sample, *args, **kwargs)
        ledger.model_time_s += time.perf_counter() - started
        if progress["bar"] is not None:
            progress["bar"].update(sample.shape[0])
        return output

    return timed


class _ChunkedScorer:
    """The run's rewards: decode latents through a VAE and score them, `decode_batch_size` rows at a time, so memory
    beyond the latents grows with the chunk, not with the number of particles.

    `score_x0_hat` decodes with `intermediate_vae` (a cheaper `reward_decoder`, if given); `score_final` with the
    full VAE, and it keeps its decoded images (`keep_decoded`) with the latents they came from (`last_final`): they
    are the output images, so the selected particles are not decoded a second time.
    """

    def __init__(
        self,
        setup: FamilySetup,
        reward: RewardFn,
        num_groups: int,
        decode_batch_size: int,
        ledger: CostLedger,
    ) -> None:
        self.setup, self.reward, self.num_groups = setup, reward, num_groups
        self.decode_batch_size, self.ledger = decode_batch_size, ledger
        # The name errors use: the loop names the reward it calls, which is this scorer.
        self.__name__ = getattr(reward, "__name__", type(reward).__name__)
        self.gradient_reward = _named(self._gradient_reward, self.__name__)
        self.vae: Any = None  # the full VAE (set by the engine)
        self.intermediate_vae: Any = None
        self.keep_decoded = False
        self.decoded: torch.Tensor | None = None
        self.last_final: torch.Tensor | None = None

    def score_x0_hat(self, latents: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return self._scores(latents, self.intermediate_vae, keep=False, groups=groups)

    def score_final(self, latents: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        scores = self._scores(latents, self.vae, keep=self.keep_decoded, groups=groups)
        self.last_final = latents
        return scores

    # The drivers pass each row's group (prompt) where a batch is not made of equal blocks per group (rollover
    # budget forcing tries only the chains still trying). Set on the functions: the drivers hold bound methods.
    score_x0_hat.takes_row_groups = True  # type: ignore[attr-defined]
    score_final.takes_row_groups = True  # type: ignore[attr-defined]

    def _gradient_reward(self, x0_hat: torch.Tensor, rows: slice) -> torch.Tensor:
        """The reward of rows `rows` of the run's x0-hat batch (group-major, one block per prompt), decoded through
        `intermediate_vae` with autograd history: the differentiable path (`diffsteer.gradients`) calls it on one
        chunk at a time, under `torch.enable_grad()`. The scores are returned unchecked (the loop checks them)."""
        rows_per_group = self.setup.latents.shape[0] // self.num_groups
        prompts = [self.setup.prompts[row // rows_per_group] for row in range(rows.start, rows.stop)]
        images = self._decode(x0_hat, self.intermediate_vae)
        return self.reward((images / 2 + 0.5).clamp(0, 1), prompts)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images of `latents` through the full VAE, in chunks (counted in the ledger)."""
        chunks = range(0, latents.shape[0], self.decode_batch_size)
        return _cat([self._decode(latents[start : start + self.decode_batch_size], self.vae) for start in chunks])

    def _decode(self, chunk: torch.Tensor, vae: Any) -> torch.Tensor:
        """One chunk's images through `vae`, counted (rows and seconds) in the ledger."""
        started = time.perf_counter()
        images = self.setup.decode(chunk, vae)
        self.ledger.add_decode(chunk.shape[0], time.perf_counter() - started)
        return images

    def _scores(self, latents: torch.Tensor, vae: Any, keep: bool, groups: torch.Tensor | None) -> torch.Tensor:
        if groups is None:  # equal contiguous blocks, one per group
            groups = torch.arange(self.num_groups).repeat_interleave(latents.shape[0] // self.num_groups)
        self.row_groups = groups.tolist()
        # A batch-relative reward (a rank ensemble) must see one prompt's rows together: decode them in chunks, then
        # score the group at once. Any other reward scores each chunk as it is decoded.
        batch_relative = getattr(self.reward, "batch_relative", False)
        spans = _runs(self.row_groups) if batch_relative else [(0, latents.shape[0])]
        scores: list[torch.Tensor] = []
        decoded: list[torch.Tensor] = []
        for group_start, group_stop in spans:
            pending: list[torch.Tensor] = []
            for start in range(group_start, group_stop, self.decode_batch_size):
                chunk = latents[start : min(start + self.decode_batch_size, group_stop)]
                images = self._decode(chunk, vae)
                if keep:
                    decoded.append(images)
                if batch_relative:
                    pending.append(images)
                else:
                    scores.append(self._score(images, latents, start))
            if pending:
                scores.append(self._score(torch.cat(pending), latents, group_start))
        if keep:
            self.decoded = _cat(decoded)
        return _cat(scores)

    def _score(self, images: torch.Tensor, latents: torch.Tensor, start: int) -> torch.Tensor:
        """Score decoded rows `start ...` (of `latents`) against their prompts; one score per image, checked as the
        core API checks rewards ((N,) or (N, 1), finite or -inf)."""
        prompts = [self.setup.prompts[self.row_groups[row]] for row in range(start, start + images.shape[0])]
        scores = self.reward((images / 2 + 0.5).clamp(0, 1), prompts)
        try:
            checked = check_scores(scores, images.shape[0], f"reward {self.__name__!r}", item="image", first_row=start)
        except ValueError:
            rows = slice(start, start + images.shape[0])
            # Non-finite latents are the model's doing, which the loop explains; finite ones decoded to NaN are not.
            if torch.isfinite(latents[rows]).all() and not torch.isfinite(images).all():
                raise ValueError(
                    f"The decoder produced NaN or infinite images (rows {start} to {start + images.shape[0] - 1}), "
                    "so the reward could not score them; this is not the reward's fault. A float16 VAE overflowing "
                    "is the usual cause: run the VAE in float32 (or pass a reward_decoder in float32)."
                ) from None
            raise
        return checked.cpu()


def _named(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`function` under `name` (errors name the reward it wraps)."""

    def named(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    named.__name__ = name
    return named


def _runs(groups: list[int]) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal consecutive values."""
    runs, start = [], 0
    for index in range(1, len(groups) + 1):
        if index == len(groups) or groups[index] != groups[start]:
            runs.append((start, index))
            start = index
    return runs


def refuse_with_a_method(call: dict[str, Any], names: Sequence[str], what: str) -> None:
    """Raise for parent arguments that steering does not support yet, naming them and the way out."""
    given = [name for name in names if call.get(name) is not None]
    if given:
        raise ValueError(f"{what} ({', '.join(given)}) not supported with a steering method yet; pass method=None.")


def _check_steering_inputs(
    call: dict[str, Any], reward: Any, method: Any, decode_batch_size: Any, stochastic: Any
) -> None:
    """The steering arguments, and the parent arguments whose meaning a method changes, checked before any work."""
    check_method(
        method,
        "a steering method (diffsteer.FK(...), BestOfN(...), ZeroOrder(), Paths(), SVDD(), RBF(), or "
        "diffsteer.make_method(name, budget=..., num_inference_steps=...)) or None",
    )
    follows_gradient = getattr(method, "make_guide", None) is not None
    if isinstance(reward, str):
        spec = get_reward_spec(reward)  # an unknown name fails here, before any model is built
        if follows_gradient and not spec.differentiable:
            raise ValueError(
                f"reward {reward!r} is not differentiable, and {type(method).__name__} follows the reward's "
                "gradient. Pass a differentiable reward (diffsteer.rewards.available() lists which are), or a "
                "derivative-free method (fk, bon, zero-order, paths, svdd)."
            )
    else:
        check_callable(
            "reward",
            reward,
            "a name from diffsteer.rewards.available() or a callable reward(images, prompts) -> scores",
        )
    if follows_gradient and getattr(reward, "batch_relative", False):
        raise ValueError(
            f"reward {getattr(reward, '__name__', type(reward).__name__)!r} scores each image relative to its batch "
            f"(a rank ensemble), so it has no per-image gradient for {type(method).__name__}; pass a reward that "
            "scores each image on its own."
        )
    if follows_gradient and getattr(reward, "differentiable", True) is False:
        raise ValueError(
            f"reward {getattr(reward, '__name__', type(reward).__name__)!r} says it is not differentiable, and "
            f"{type(method).__name__} follows the reward's gradient; pass a differentiable reward, or a "
            "derivative-free method (fk, bon, zero-order, paths, svdd)."
        )
    check_int("decode_batch_size", decode_batch_size, minimum=1)
    check_choice("stochastic", stochastic, STOCHASTIC_MODES)
    extra = call.get("kwargs") or {}
    if extra:
        raise ValueError(
            f"Arguments {sorted(extra)} are not supported with a steering method (the deprecated `callback` and "
            "`callback_steps` included: use callback_on_step_end); pass method=None to give them to the parent."
        )
    prompt = call.get("prompt")
    if isinstance(prompt, list | tuple) and len(prompt) == 0:
        raise ValueError("prompt is an empty list; pass at least one prompt (or prompt_embeds).")
    per_prompt = check_int("num_images_per_prompt", call.get("num_images_per_prompt"), minimum=1)
    if per_prompt > method.num_particles:
        raise ValueError(
            f"num_images_per_prompt={per_prompt} exceeds the method's num_particles={method.num_particles}: each "
            "prompt's images are selected from the samples the method returns for it, so raise its particle count."
        )
    call["num_images_per_prompt"] = per_prompt
    if "guidance_scale" in call:
        check_number("guidance_scale", call["guidance_scale"], hint="Values <= 1 turn classifier-free guidance off.")
