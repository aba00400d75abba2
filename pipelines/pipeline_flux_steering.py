"""Flux with inference-time steering: a drop-in `FluxPipeline`."""

from typing import Any

import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from diffsteer.outputs import CostLedger
from diffsteer.pipelines.denoiser import ClassifierFreeCombine, DenoiserParts
from diffsteer.pipelines.steering import FamilySetup, SteeringMixin, prompt_list, refuse_with_a_method


class FluxSteeringPipeline(SteeringMixin, FluxPipeline):
    """`FluxPipeline` plus `reward=` and `method=` (see `SteeringMixin.__call__`).

    Particles are Flux's packed latents; each carries its own rows of the T5 and pooled CLIP embeddings (and of the
    negative ones under true CFG). Under FK (with `stochastic="auto"`) the flow scheduler becomes
    `diffsteer.processes.FlowMatchEulerSDEScheduler`, whose stochastic step solves the flow's reverse SDE with x0-hat
    held fixed; at FLUX.1-schnell's 4 steps it samples about as accurately as the Euler ODE (`changes` says what it
    costs).

    Examples:

    ```py
    >>> pipe = FluxSteeringPipeline.from_pretrained("black-forest-labs/FLUX.1-schnell")
    >>> out = pipe("a red cube left of a blue ball", reward=my_reward, method=diffsteer.FK(num_particles=4))
    ```
    """

    _steering_parent = FluxPipeline
    _callback_concatenates_cfg = False  # true CFG runs two passes; callbacks see the positive rows, as in the parent

    def _steering_setup(self, call: dict[str, Any], num_particles: int, ledger: CostLedger) -> FamilySetup:
        ip_adapter = ("ip_adapter_image", "ip_adapter_image_embeds")
        refuse_with_a_method(
            call, (*ip_adapter, *(f"negative_{name}" for name in ip_adapter)), "IP-Adapter inputs are"
        )
        height = call["height"] or self.default_sample_size * self.vae_scale_factor
        width = call["width"] or self.default_sample_size * self.vae_scale_factor
        prompt = call["prompt"]
        self._check_parent_inputs(call, height, width)
        self._guidance_scale = call["guidance_scale"]
        self._joint_attention_kwargs = call["joint_attention_kwargs"] or {}
        self._current_timestep = None
        self._interrupt = False
        prompts = prompt_list(prompt, call["prompt_embeds"])
        device = self._execution_device
        lora_scale = self.joint_attention_kwargs.get("scale")
        has_negative = call["negative_prompt"] is not None or (
            call["negative_prompt_embeds"] is not None and call["negative_pooled_prompt_embeds"] is not None
        )
        true_cfg_scale = call["true_cfg_scale"]
        true_cfg = true_cfg_scale > 1 and has_negative

        def encode(prompt: Any, prompt_2: Any, embeds: Any, pooled: Any) -> tuple[torch.Tensor, ...]:
            return self.encode_prompt(
                prompt=prompt,
                prompt_2=prompt_2,
                prompt_embeds=embeds,
                pooled_prompt_embeds=pooled,
                device=device,
                num_images_per_prompt=num_particles,
                max_sequence_length=call["max_sequence_length"],
                lora_scale=lora_scale,
            )

        prompt_embeds, pooled, text_ids = encode(
            prompt, call["prompt_2"], call["prompt_embeds"], call["pooled_prompt_embeds"]
        )
        conditioning = {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}
        negative_text_ids = None
        if true_cfg:
            negative_embeds, negative_pooled, negative_text_ids = encode(
                call["negative_prompt"],
                call["negative_prompt_2"],
                call["negative_prompt_embeds"],
                call["negative_pooled_prompt_embeds"],
            )
            # The parent accepts one negative prompt for several prompts (the transformer broadcasts it); particles
            # need one row each.
            copies = prompt_embeds.shape[0] // negative_embeds.shape[0]
            conditioning.update(
                negative_prompt_embeds=negative_embeds.repeat(copies, 1, 1),
                negative_pooled_prompt_embeds=negative_pooled.repeat(copies, 1),
            )
        latents, image_ids = self.prepare_latents(
            len(prompts) * num_particles,
            self.transformer.config.in_channels // 4,
            height,
            width,
            prompt_embeds.dtype,
            device,
            call["generator"],
            call["latents"],
        )
        steps = call["num_inference_steps"]
        sigmas = np.linspace(1.0, 1 / steps, steps) if call["sigmas"] is None else call["sigmas"]
        if getattr(self.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(
            latents.shape[1],
            self.scheduler.config.get("base_image_seq_len", 256),
            self.scheduler.config.get("max_image_seq_len", 4096),
            self.scheduler.config.get("base_shift", 0.5),
            self.scheduler.config.get("max_shift", 1.15),
        )
        guidance_scale = call["guidance_scale"]

        def transformer(sample: torch.Tensor, timestep: torch.Tensor, embeds, pooled, ids, context: str):
            guidance = None
            if self.transformer.config.guidance_embeds:
                guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(sample.shape[0])
            ledger.add_model(sample.shape[0])
            with self.transformer.cache_context(context):
                return self.transformer(
                    hidden_states=sample,
                    timestep=timestep.expand(sample.shape[0]).to(sample.dtype) / 1000,
                    guidance=guidance,
                    pooled_projections=pooled,
                    encoder_hidden_states=embeds,
                    txt_ids=ids,
                    img_ids=image_ids,
                    joint_attention_kwargs=self.joint_attention_kwargs,
                    return_dict=False,
                )[0]

        def denoise(
            sample: torch.Tensor,
            timestep: torch.Tensor,
            prompt_embeds: torch.Tensor,
            pooled_prompt_embeds: torch.Tensor,
            negative_prompt_embeds: torch.Tensor | None = None,
            negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ) -> DenoiserParts:
            # Two passes, as the parent's true CFG makes them (guidance-distilled Flux makes the first alone).
            velocity = transformer(sample, timestep, prompt_embeds, pooled_prompt_embeds, text_ids, "cond")
            if negative_prompt_embeds is None:
                return DenoiserParts(velocity)
            negative = transformer(
                sample, timestep, negative_prompt_embeds, negative_pooled_prompt_embeds, negative_text_ids, "uncond"
            )
            return DenoiserParts(velocity, negative)

        def decode(latents: torch.Tensor, vae: Any) -> torch.Tensor:
            latents = self._unpack_latents(latents, height, width, self.vae_scale_factor)
            latents = (latents / vae.config.scaling_factor) + (vae.config.get("shift_factor") or 0.0)
            return vae.decode(latents, return_dict=False)[0]

        return FamilySetup(
            denoise=denoise,
            combine=ClassifierFreeCombine(lambda: true_cfg_scale),
            latents=latents,
            conditioning=conditioning,
            prompts=prompts,
            decode=decode,
            timesteps_kwargs={"sigmas": sigmas, "mu": mu},
        )
