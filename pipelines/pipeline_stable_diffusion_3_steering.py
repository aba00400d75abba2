"""Stable Diffusion 3 with inference-time steering: a drop-in `StableDiffusion3Pipeline`."""

from typing import Any

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

from diffsteer.outputs import CostLedger
from diffsteer.pipelines.denoiser import ClassifierFreeCombine, DenoiserParts
from diffsteer.pipelines.steering import (
    FamilySetup,
    SteeringMixin,
    prompt_list,
    refuse_with_a_method,
)


class StableDiffusion3SteeringPipeline(SteeringMixin, StableDiffusion3Pipeline):
    """`StableDiffusion3Pipeline` plus `reward=` and `method=` (see `SteeringMixin.__call__`).

    Flow-matching sampling is deterministic, so under FK (with `stochastic="auto"`) the scheduler becomes
    `diffsteer.processes.FlowMatchEulerSDEScheduler`, whose step solves the flow's reverse SDE with x0-hat held
    fixed, giving the particles fresh noise at each step about as accurately as the Euler ODE; `changes` says so.

    Examples:

    ```py
    >>> pipe = StableDiffusion3SteeringPipeline.from_pretrained("stabilityai/stable-diffusion-3.5-medium")
    >>> out = pipe("a red cube left of a blue ball", reward=my_reward, method=diffsteer.FK(num_particles=4))
    ```
    """

    _steering_parent = StableDiffusion3Pipeline

    def _steering_setup(self, call: dict[str, Any], num_particles: int, ledger: CostLedger) -> FamilySetup:
        refuse_with_a_method(call, ("ip_adapter_image", "ip_adapter_image_embeds"), "IP-Adapter inputs are")
        refuse_with_a_method(call, ("skip_guidance_layers",), "Skip-layer guidance is")
        height = call["height"] or self.default_sample_size * self.vae_scale_factor
        width = call["width"] or self.default_sample_size * self.vae_scale_factor
        prompt = call["prompt"]
        self._check_parent_inputs(call, height, width)
        self._guidance_scale = call["guidance_scale"]
        self._clip_skip = call["clip_skip"]
        self._joint_attention_kwargs = call["joint_attention_kwargs"]
        self._interrupt = False
        prompts = prompt_list(prompt, call["prompt_embeds"])
        device = self._execution_device
        prompt_embeds, negative_prompt_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt=prompt,
            prompt_2=call["prompt_2"],
            prompt_3=call["prompt_3"],
            negative_prompt=call["negative_prompt"],
            negative_prompt_2=call["negative_prompt_2"],
            negative_prompt_3=call["negative_prompt_3"],
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            prompt_embeds=call["prompt_embeds"],
            negative_prompt_embeds=call["negative_prompt_embeds"],
            pooled_prompt_embeds=call["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=call["negative_pooled_prompt_embeds"],
            device=device,
            clip_skip=self.clip_skip,
            num_images_per_prompt=num_particles,
            max_sequence_length=call["max_sequence_length"],
            lora_scale=(self.joint_attention_kwargs or {}).get("scale"),
        )
        latents = self.prepare_latents(
            len(prompts) * num_particles,
            self.transformer.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            call["generator"],
            call["latents"],
        )
        timesteps_kwargs: dict[str, Any] = {"sigmas": call["sigmas"]}
        mu = call["mu"]
        if self.scheduler.config.get("use_dynamic_shifting", None) and mu is None:
            patch = self.transformer.config.patch_size
            mu = calculate_shift(
                (latents.shape[2] // patch) * (latents.shape[3] // patch),
                self.scheduler.config.get("base_image_seq_len", 256),
                self.scheduler.config.get("max_image_seq_len", 4096),
                self.scheduler.config.get("base_shift", 0.5),
                self.scheduler.config.get("max_shift", 1.16),
            )
        if mu is not None:
            timesteps_kwargs["mu"] = mu
        conditioning = {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}
        if self.do_classifier_free_guidance:
            conditioning.update(
                negative_prompt_embeds=negative_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled
            )

        def denoise(
            sample: torch.Tensor,
            timestep: torch.Tensor,
            prompt_embeds: torch.Tensor,
            pooled_prompt_embeds: torch.Tensor,
            negative_prompt_embeds: torch.Tensor | None = None,
            negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ) -> DenoiserParts:
            # A callback may turn guidance off mid-run (diffusers' dynamic-CFG recipe), as in the parent.
            cfg = negative_prompt_embeds is not None and self.do_classifier_free_guidance
            if cfg:
                sample = torch.cat([sample] * 2)
                prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
                pooled_prompt_embeds = torch.cat([negative_pooled_prompt_embeds, pooled_prompt_embeds])
            ledger.add_model(sample.shape[0])
            velocity = self.transformer(
                hidden_states=sample,
                timestep=timestep.expand(sample.shape[0]),
                encoder_hidden_states=prompt_embeds,
                pooled_projections=pooled_prompt_embeds,
                joint_attention_kwargs=self.joint_attention_kwargs,
                return_dict=False,
            )[0]
            return DenoiserParts.from_batch(velocity, cfg)

        def decode(latents: torch.Tensor, vae: Any) -> torch.Tensor:
            latents = (latents / vae.config.scaling_factor) + (vae.config.get("shift_factor") or 0.0)
            return vae.decode(latents, return_dict=False)[0]

        return FamilySetup(
            denoise=denoise,
            combine=ClassifierFreeCombine(lambda: self.guidance_scale),
            latents=latents,
            conditioning=conditioning,
            prompts=prompts,
            decode=decode,
            timesteps_kwargs=timesteps_kwargs,
        )
