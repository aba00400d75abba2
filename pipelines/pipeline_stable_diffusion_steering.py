"""Stable Diffusion 1.x/2.x with inference-time steering: a drop-in `StableDiffusionPipeline`."""

from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from diffsteer.outputs import CostLedger
from diffsteer.pipelines.denoiser import ClassifierFreeCombine, DenoiserParts
from diffsteer.pipelines.steering import (
    FamilySetup,
    SteeringMixin,
    prompt_list,
    refuse_with_a_method,
)


class StableDiffusionSteeringPipeline(SteeringMixin, StableDiffusionPipeline):
    """`StableDiffusionPipeline` plus `reward=` and `method=`.

    Loads, saves and offloads exactly like its parent. Called with `method=None` (the default) it *is* the parent
    pipeline; with a method, each prompt gets its own group of `method.num_particles` particles, denoised through
    the same UNet calls as the parent (classifier-free guidance included), weighted by the reward of their x0-hat
    decoded through the VAE, and resampled within the group.

    Examples:

    ```py
    >>> import diffsteer
    >>> from diffsteer.pipelines import StableDiffusionSteeringPipeline

    >>> pipe = StableDiffusionSteeringPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    >>> out = pipe("a red cube left of a blue ball", reward=my_reward, method=diffsteer.FK(num_particles=8, lmbda=10.0,
    ...            interval=10), num_inference_steps=50)
    >>> out.images[0]       # the best of the 8 particles; out.particles has them all, out.cost what it took
    ```
    """

    _steering_parent = StableDiffusionPipeline

    def _steering_setup(self, call: dict[str, Any], num_particles: int, ledger: CostLedger) -> FamilySetup:
        """The parent's steps 0-6 (sizes, input checks, prompt encoding, latents, step kwargs) for
        num_prompts x num_particles rows, and its guided UNet call as the model."""
        refuse_with_a_method(call, ("ip_adapter_image", "ip_adapter_image_embeds"), "IP-Adapter inputs are")
        height = call["height"] or self.unet.config.sample_size * self.vae_scale_factor
        width = call["width"] or self.unet.config.sample_size * self.vae_scale_factor
        prompt, negative_prompt = call["prompt"], call["negative_prompt"]
        self._check_parent_inputs(call, height, width)
        self._guidance_scale = call["guidance_scale"]
        self._guidance_rescale = call["guidance_rescale"]
        self._clip_skip = call["clip_skip"]
        self._cross_attention_kwargs = call["cross_attention_kwargs"]
        self._interrupt = False
        prompts = prompt_list(prompt, call["prompt_embeds"])
        device = self._execution_device
        lora_scale = (self.cross_attention_kwargs or {}).get("scale")
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_particles,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=call["prompt_embeds"],
            negative_prompt_embeds=call["negative_prompt_embeds"],
            lora_scale=lora_scale,
            clip_skip=self.clip_skip,
        )
        rows = len(prompts) * num_particles
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
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            guidance = torch.tensor(self.guidance_scale - 1).repeat(rows)
            timestep_cond = self.get_guidance_scale_embedding(
                guidance, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)
        conditioning = {"prompt_embeds": prompt_embeds}
        if self.do_classifier_free_guidance:
            conditioning["negative_prompt_embeds"] = negative_prompt_embeds

        def denoise(
            sample: torch.Tensor,
            timestep: torch.Tensor,
            prompt_embeds: torch.Tensor,
            negative_prompt_embeds: torch.Tensor | None = None,
        ) -> DenoiserParts:
            # A callback may turn guidance off mid-run (diffusers' dynamic-CFG recipe), as in the parent.
            cfg = negative_prompt_embeds is not None and self.do_classifier_free_guidance
            model_input = torch.cat([sample] * 2) if cfg else sample
            embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds
            ledger.add_model(model_input.shape[0])
            noise_pred = self.unet(
                model_input,
                timestep,
                encoder_hidden_states=embeds,
                timestep_cond=timestep_cond,
                cross_attention_kwargs=self.cross_attention_kwargs,
                return_dict=False,
            )[0]
            return DenoiserParts.from_batch(noise_pred, cfg)

        def decode(latents: torch.Tensor, vae: Any) -> torch.Tensor:
            return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]

        step_kwargs = self.prepare_extra_step_kwargs(None, call["eta"])
        step_kwargs.pop("generator", None)  # the engine passes the generators itself
        return FamilySetup(
            denoise=denoise,
            combine=ClassifierFreeCombine(lambda: self.guidance_scale, lambda: self.guidance_rescale),
            latents=latents,
            conditioning=conditioning,
            prompts=prompts,
            decode=decode,
            step_kwargs=step_kwargs,
            timesteps_kwargs={"timesteps": call["timesteps"], "sigmas": call["sigmas"]},
        )
