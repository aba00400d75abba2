"""The steering engine shared by every pipeline family: written once, used by each `<Family>SteeringPipeline`.

A family contributes one method, `_steering_setup`, that reuses its parent's own preparation (`check_inputs`,
`encode_prompt`, `prepare_latents`, ...) and returns a `FamilySetup`: the guided denoiser as a
`model(sample, timestep, **conditioning)` callable, the initial latents, the per-particle conditioning (re-indexed
with the particles), and how to decode latents. The engine runs `diffsteer.loop.run_steering` with one particle
group per prompt, scores x0-hat through the VAE in chunks, and assembles a `SteeringPipelineOutput`.
"""

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from diffsteer.loop import run_steering
from diffsteer.methods import FK, BestOfN
from diffsteer.outputs import CostLedger
from diffsteer.pipelines.pipeline_output import SteeringPipelineOutput
from diffsteer.processes.scheduler_process import STOCHASTIC_MODES, SchedulerProcess, Step
from diffsteer.rewards import get_spec as get_reward_spec
from diffsteer.rewards import load as load_reward
from diffsteer.smc.particles import Particles


RewardFn = Callable[[torch.Tensor, Sequence[str]], Any]


@dataclass
class FamilySetup:
    """What a family's preparation hands to the engine.

    Attributes:
        model: the guided denoiser `model(sample, timestep, **conditioning)`; it counts its rows in the ledger.
        latents: initial latents, shape (num_prompts * num_particles, *shape), prompt-major.
        conditioning: per-particle tensors (leading dimension num_prompts * num_particles).
        prompts: one string per prompt group (for rewards that read the prompt).
        decode: (latents, vae) -> images in [-1, 1], shape (n, 3, H, W), with that VAE's own scaling (so a cheaper
            `AutoencoderTiny` can stand in for intermediate rewards).
        step_kwargs: extra `scheduler.step` arguments (for example `eta`).
        timesteps_kwargs: custom `timesteps`, `sigmas` or `mu` for the scheduler.
        finish: called when the run ends, even by an error (for example to cast an upcast VAE back).
    """

    model: Callable[..., torch.Tensor]
    latents: torch.Tensor
    conditioning: dict[str, torch.Tensor]
    prompts: list[str]
    decode: Callable[[torch.Tensor, Any], torch.Tensor]
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    timesteps_kwargs: dict[str, Any] = field(default_factory=dict)
    finish: Callable[[], None] | None = None


def classifier_free_guidance(noise_pred: torch.Tensor, guidance_scale: float, guidance_rescale: float) -> torch.Tensor:
    """Combine a [unconditional; conditional] batch the way diffusers' pipelines do (with optional rescale)."""
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    guided = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
    if guidance_rescale > 0.0:
        guided = rescale_noise_cfg(guided, noise_pred_text, guidance_rescale=guidance_rescale)
    return guided


def prompt_list(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> list[str]:
    """One string per prompt group (empty strings when only embeddings were given)."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt is not None:
        return list(prompt)
    return [""] * prompt_embeds.shape[0]


class SteeringMixin:
    """Adds `reward=`, `method=`, `decode_batch_size=` and `stochastic=` to a diffusers pipeline's call."""

    _steering_parent: type

    def __call__(
        self,
        *args: Any,
        reward: str | RewardFn | None = None,
        method: FK | BestOfN | None = None,
        decode_batch_size: int = 8,
        stochastic: str = "auto",
        reward_decoder: Any | None = None,
        **kwargs: Any,
    ) -> Any:
        """The parent pipeline's call (same positional and keyword arguments) plus:

        Args:
            reward (`str` or `Callable`, *optional*): a name from `diffsteer.rewards.available()` (loaded with its
                default weights on the pipeline's device), a `diffsteer.rewards.Reward`, or any callable
                `reward(images, prompts) -> N scores`, images float in [0, 1] of shape
                (N, 3, H, W), higher is better.
            method (`diffsteer.FK` or `diffsteer.BestOfN`, *optional*): `None` runs the parent pipeline unchanged.
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
        method: FK | BestOfN | None,
        decode_batch_size: int,
        stochastic: str,
        reward_decoder: Any | None = None,
    ) -> Any:
        parent_call = self._steering_parent.__call__
        if method is None:
            if reward is not None:
                raise ValueError("reward= is only used with a method=; pass method=diffsteer.FK(...) or BestOfN(...).")
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
        method: FK | BestOfN,
        decode_batch_size: int,
        stochastic: str,
        reward_decoder: Any | None,
        ledger: CostLedger,
    ) -> Any:
        num_prompts = len(setup.prompts)
        if not method.requires_stochastic and stochastic == "auto":
            stochastic = "off"
        process = SchedulerProcess(
            setup.model,
            self.scheduler,
            shape=tuple(setup.latents.shape[1:]),
            num_inference_steps=call["num_inference_steps"],
            step_kwargs=setup.step_kwargs,
            stochastic=stochastic,
            device=setup.latents.device,
            dtype=setup.latents.dtype,
            timesteps_kwargs=setup.timesteps_kwargs,
        )
        scorer = _ChunkedScorer(setup, reward, method.num_particles, decode_batch_size, ledger)
        scorer.vae = reward_decoder if reward_decoder is not None else self.vae
        num_calls = len(process.scheduler.timesteps)
        with self.progress_bar(total=num_calls) as progress_bar:
            callback = self._steering_callback(call, progress_bar)

            def on_step_end(step: Step, particles: Particles) -> None:
                callback(step, particles)
                if step.index == num_calls - 1:
                    scorer.vae = self.vae  # the final reward and the particles' images use the full VAE

            run = run_steering(
                process,
                method,
                scorer,
                ledger,
                num_groups=num_prompts,
                generator=call["generator"],
                latents=setup.latents,
                conditioning=setup.conditioning,
                num_outputs=call["num_images_per_prompt"] or 1,
                on_step_end=on_step_end,
            )
        output_type = call["output_type"]
        selected = run.selected_indices.flatten()
        if output_type == "latent":
            images, particles, nsfw = run.samples[selected], run.samples, None
        else:
            decoded = setup.decode(run.samples[selected], self.vae)
            ledger.add_decode(decoded.shape[0])
            images, nsfw = self._steering_postprocess(decoded, output_type, setup)
            particles, _ = self._steering_postprocess(scorer.last_decoded, output_type, setup, safety=False)
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
        return output if call["return_dict"] else (images, nsfw)

    def _check_parent_inputs(self, call: dict[str, Any], height: int, width: int) -> None:
        """The parent's own `check_inputs`, fed by name from the bound call (its parameters are call arguments)."""
        values = {**call, "height": height, "width": width}
        self.check_inputs(**{name: values.get(name) for name in inspect.signature(self.check_inputs).parameters})

    def _steering_postprocess(
        self, images: torch.Tensor, output_type: str, setup: FamilySetup, safety: bool = True
    ) -> tuple[Any, list[bool] | None]:
        """The parent's postprocessing, with its safety checker where it has one."""
        nsfw = None
        if safety and getattr(self, "safety_checker", None) is not None:
            images, nsfw = self.run_safety_checker(images, images.device, images.dtype)
        if getattr(self, "watermark", None) is not None:
            images = self.watermark.apply_watermark(images)
        denormalize = [True] * images.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
        return self.image_processor.postprocess(images, output_type=output_type, do_denormalize=denormalize), nsfw

    def _steering_callback(self, call: dict[str, Any], progress_bar: Any) -> Callable[[Step, Particles], None]:
        """Progress, and the parent's `callback_on_step_end` with the particles' latents and conditioning."""
        callback = call.get("callback_on_step_end")
        names = call.get("callback_on_step_end_tensor_inputs") or ["latents"]

        def on_step_end(step: Step, particles: Particles) -> None:
            if callback is not None:
                fields = {"latents": particles.latents, **particles.conditioning}
                outputs = callback(self, step.index, step.timestep, {name: fields[name] for name in names})
                if "latents" in outputs:
                    particles.latents = outputs.pop("latents")
                conditioning = dict(particles.conditioning)
                conditioning.update({name: value for name, value in outputs.items() if name in conditioning})
                particles.conditioning = conditioning
            progress_bar.update()

        return on_step_end


class _ChunkedScorer:
    """The loop's reward: decodes latents through the VAE and scores them, `decode_batch_size` rows at a time, so
    memory beyond the latents grows with the chunk, not with the number of particles."""

    def __init__(
        self,
        setup: FamilySetup,
        reward: RewardFn,
        num_particles: int,
        decode_batch_size: int,
        ledger: CostLedger,
    ) -> None:
        self.setup, self.reward, self.num_particles = setup, reward, num_particles
        self.decode_batch_size, self.ledger = decode_batch_size, ledger
        self.last_decoded: torch.Tensor | None = None
        self.vae: Any = None  # set by the engine: the decoder of the next call

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        # A batch-relative reward (a rank ensemble) must see one prompt's particles together: decode them in chunks,
        # then score the group at once. Any other reward scores each chunk as it is decoded.
        batch_relative = getattr(self.reward, "batch_relative", False)
        span = self.num_particles if batch_relative else latents.shape[0]
        scores, decoded = [], []
        for group_start in range(0, latents.shape[0], span):
            pending: list[torch.Tensor] = []
            for start in range(group_start, group_start + span, self.decode_batch_size):
                chunk = latents[start : min(start + self.decode_batch_size, group_start + span)]
                images = self.setup.decode(chunk, self.vae)
                self.ledger.add_decode(chunk.shape[0])
                decoded.append(images.cpu())
                pending.append(images)
                if not batch_relative:
                    scores.append(self._score(torch.cat(pending), start))
                    pending = []
            if pending:
                scores.append(self._score(torch.cat(pending), group_start))
        self.last_decoded = torch.cat(decoded)
        return torch.cat(scores)

    def _score(self, images: torch.Tensor, start: int) -> torch.Tensor:
        """Score decoded rows `start ...` against their prompts; one finite-shaped score per image."""
        prompts = [self.setup.prompts[row // self.num_particles] for row in range(start, start + images.shape[0])]
        scores = torch.as_tensor(self.reward((images / 2 + 0.5).clamp(0, 1), prompts)).flatten()
        if scores.shape != (images.shape[0],):
            raise ValueError(
                f"The reward must return one score per image: it got {images.shape[0]} images and returned "
                f"shape {tuple(scores.shape)}."
            )
        return scores.to(torch.float64).cpu()


def refuse_with_a_method(call: dict[str, Any], names: Sequence[str], what: str) -> None:
    """Raise for parent arguments that steering does not support yet, naming them and the way out."""
    given = [name for name in names if call.get(name) is not None]
    if given:
        raise ValueError(f"{what} ({', '.join(given)}) not supported with a steering method yet; pass method=None.")


def _check_steering_inputs(
    call: dict[str, Any], reward: Any, method: Any, decode_batch_size: Any, stochastic: Any
) -> None:
    if not isinstance(method, FK | BestOfN):
        raise ValueError(f"method must be diffsteer.FK(...), diffsteer.BestOfN(...) or None, got {method!r}.")
    if isinstance(reward, str):
        get_reward_spec(reward)  # an unknown name fails here, before any model is built
    elif not callable(reward):
        raise ValueError(
            f"reward must be a name from diffsteer.rewards.available() or a callable reward(images, prompts) -> "
            f"scores, got {reward!r}."
        )
    if isinstance(decode_batch_size, bool) or not isinstance(decode_batch_size, int) or decode_batch_size < 1:
        raise ValueError(f"decode_batch_size must be a positive integer, got {decode_batch_size!r}.")
    if stochastic not in STOCHASTIC_MODES:
        raise ValueError(f"stochastic must be one of {list(STOCHASTIC_MODES)}, got {stochastic!r}.")
    per_prompt = call.get("num_images_per_prompt") or 1
    if per_prompt > method.num_particles:
        raise ValueError(
            f"num_images_per_prompt={per_prompt} exceeds the method's num_particles={method.num_particles}: each "
            "prompt's images are selected from its particles, so raise num_particles."
        )
