"""Stable Diffusion XL with inference-time steering: a drop-in `StableDiffusionXLPipeline`."""

from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from diffsteer.outputs import CostLedger
from diffsteer.pipelines.denoiser import ClassifierFreeCombine, DenoiserParts
from diffsteer.pipelines.steering import (
    FamilySetup,
    SteeringMixin,
    prompt_list,
    refuse_with_a_method,
)


class StableDiffusionXLSteeringPipeline(SteeringMixin, StableDiffusionXLPipeline):
    """`StableDiffusionXLPipeline` plus `reward=` and `method=` (see `SteeringMixin.__call__`).

    Each particle carries its own rows of the two text encoders' embeddings, the pooled embedding and the micro-
    conditioning time ids, so resampling moves them with the latents.

    Examples:

    ```py
    >>> pipe = StableDiffusionXLSteeringPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
    >>> out = pipe("a red cube left of a blue ball", reward=my_reward, method=diffsteer.FK(num_particles=4))
    ```
    """

    _steering_parent = StableDiffusionXLPipeline

    def _steering_setup(self, call: dict[str, Any], num_particles: int, ledger: CostLedger) -> FamilySetup:
        refuse_with_a_method(call, ("ip_adapter_image", "ip_adapter_image_embeds"), "IP-Adapter inputs are")
        refuse_with_a_method(call, ("denoising_end",), "An ensemble of experts is")
        height = call["height"] or self.default_sample_size * self.vae_scale_factor
        width = call["width"] or self.default_sample_size * self.vae_scale_factor
        prompt = call["prompt"]
        self._check_parent_inputs(call, height, width)
        self._guidance_scale = call["guidance_scale"]
        self._guidance_rescale = call["guidance_rescale"]
        self._clip_skip = call["clip_skip"]
        self._cross_attention_kwargs = call["cross_attention_kwargs"]
        self._denoising_end = None
        self._interrupt = False
        prompts = prompt_list(prompt, call["prompt_embeds"])
        rows = len(prompts) * num_particles
        device = self._execution_device
        prompt_embeds, negative_prompt_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt=prompt,
            prompt_2=call["prompt_2"],
            device=device,
            num_images_per_prompt=num_particles,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=call["negative_prompt"],
            negative_prompt_2=call["negative_prompt_2"],
            prompt_embeds=call["prompt_embeds"],
            negative_prompt_embeds=call["negative_prompt_embeds"],
            pooled_prompt_embeds=call["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=call["negative_pooled_prompt_embeds"],
            lora_scale=(self.cross_attention_kwargs or {}).get("scale"),
            clip_skip=self.clip_skip,
        )
        latents = self.prepare_latents(
            rows,
            self.unet.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            call["generator"],
            call["latents"],
        )
        projection_dim = (
            int(pooled.shape[-1]) if self.text_encoder_2 is None else self.text_encoder_2.config.projection_dim
        )

        def time_ids(original_size, crops_coords_top_left, target_size) -> torch.Tensor:
            ids = self._get_add_time_ids(
                original_size,
                crops_coords_top_left,
                target_size,
                dtype=prompt_embeds.dtype,
                text_encoder_projection_dim=projection_dim,
            )
            return ids.to(device).repeat(rows, 1)

        add_time_ids = time_ids(
            call["original_size"] or (height, width),
            call["crops_coords_top_left"],
            call["target_size"] or (height, width),
        )
        conditioning = {"prompt_embeds": prompt_embeds, "add_text_embeds": pooled, "add_time_ids": add_time_ids}
        if self.do_classifier_free_guidance:
            negative_time_ids = add_time_ids
            if call["negative_original_size"] is not None and call["negative_target_size"] is not None:
                negative_time_ids = time_ids(
                    call["negative_original_size"],
                    call["negative_crops_coords_top_left"],
                    call["negative_target_size"],
                )
            conditioning.update(
                negative_prompt_embeds=negative_prompt_embeds,
                negative_add_text_embeds=negative_pooled,
                negative_add_time_ids=negative_time_ids,
            )
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            guidance = torch.tensor(self.guidance_scale - 1).repeat(rows)
            timestep_cond = self.get_guidance_scale_embedding(
                guidance, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)

        def denoise(
            sample: torch.Tensor,
            timestep: torch.Tensor,
            prompt_embeds: torch.Tensor,
            add_text_embeds: torch.Tensor,
            add_time_ids: torch.Tensor,
            negative_prompt_embeds: torch.Tensor | None = None,
            negative_add_text_embeds: torch.Tensor | None = None,
            negative_add_time_ids: torch.Tensor | None = None,
        ) -> DenoiserParts:
            # A callback may turn guidance off mid-run (diffusers' dynamic-CFG recipe), as in the parent.
            cfg = negative_prompt_embeds is not None and self.do_classifier_free_guidance
            if cfg:
                sample = torch.cat([sample] * 2)
                prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
                add_text_embeds = torch.cat([negative_add_text_embeds, add_text_embeds])
                add_time_ids = torch.cat([negative_add_time_ids, add_time_ids])
            ledger.add_model(sample.shape[0])
            noise_pred = self.unet(
                sample,
                timestep,
                encoder_hidden_states=prompt_embeds,
                timestep_cond=timestep_cond,
                cross_attention_kwargs=self.cross_attention_kwargs,
                added_cond_kwargs={"text_embeds": add_text_embeds, "time_ids": add_time_ids},
                return_dict=False,
            )[0]
            return DenoiserParts.from_batch(noise_pred, cfg)

        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.upcast_vae()

        def decode(latents: torch.Tensor, vae: Any) -> torch.Tensor:
            config = vae.config
            latents = latents.to(next(iter(vae.parameters())).dtype)
            if config.get("latents_mean") is not None and config.get("latents_std") is not None:
                mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
                std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
                return vae.decode(latents * std / config.scaling_factor + mean, return_dict=False)[0]
            return vae.decode(latents / config.scaling_factor, return_dict=False)[0]

        step_kwargs = self.prepare_extra_step_kwargs(None, call["eta"])
        step_kwargs.pop("generator", None)
        return FamilySetup(
            denoise=denoise,
            combine=ClassifierFreeCombine(lambda: self.guidance_scale, lambda: self.guidance_rescale),
            latents=latents,
            conditioning=conditioning,
            prompts=prompts,
            decode=decode,
            step_kwargs=step_kwargs,
            timesteps_kwargs={"timesteps": call["timesteps"], "sigmas": call["sigmas"]},
            finish=(lambda: self.vae.to(dtype=torch.float16)) if needs_upcasting else None,
        )
