"""The four pipeline families on tiny seeded components: parent class, steering class, components and call."""

from pathlib import Path

from diffusers import (
    DPMSolverMultistepScheduler,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

import diffsteer
from diffsteer.pipelines import (
    FluxSteeringPipeline,
    StableDiffusion3SteeringPipeline,
    StableDiffusionSteeringPipeline,
    StableDiffusionXLSteeringPipeline,
)

from .components import flux_components, sd3_components, sd_components, sdxl_components


BASE_CALL = {"num_inference_steps": 4, "height": 32, "width": 32, "output_type": "pt"}
PIPELINES = Path(diffsteer.pipelines.__file__).parent


def flow_multistep_solver(config, **overrides) -> DPMSolverMultistepScheduler:
    """A deterministic multistep solver for flow models (DPM-Solver++ with flow sigmas, as SANA uses)."""
    return DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", **overrides)


def flux_multistep_solver(config) -> DPMSolverMultistepScheduler:
    """Flux always passes `mu`, which DPM-Solver takes only with exponential dynamic shifting."""
    return flow_multistep_solver(config, use_dynamic_shifting=True, time_shift_type="exponential")


class Family:
    def __init__(
        self,
        parent,
        steering,
        components,
        file,
        latent_shape,
        scheduler,
        conditioning_name,
        rows=2,
        concatenated=(),
        **call,
    ):
        self.parent, self.steering, self.components, self.file = parent, steering, components, PIPELINES / file
        self.latent_shape, self.deterministic_scheduler = latent_shape, scheduler  # config -> scheduler
        self.conditioning_name = conditioning_name
        self.rows_per_particle = rows  # denoiser rows per particle and call: 2 with classifier-free guidance
        # Callback tensors the parent concatenates as [negative; positive] under classifier-free guidance.
        self.concatenated = concatenated
        self.call = {**BASE_CALL, **call}


FAMILIES = {
    "sd": Family(
        StableDiffusionPipeline,
        StableDiffusionSteeringPipeline,
        sd_components,
        "pipeline_stable_diffusion_steering.py",
        (4, 16, 16),
        DPMSolverMultistepScheduler.from_config,
        "prompt_embeds",
        concatenated=("prompt_embeds",),
    ),
    "sdxl": Family(
        StableDiffusionXLPipeline,
        StableDiffusionXLSteeringPipeline,
        sdxl_components,
        "pipeline_stable_diffusion_xl_steering.py",
        (4, 16, 16),
        DPMSolverMultistepScheduler.from_config,
        "add_text_embeds",
        concatenated=("prompt_embeds", "add_text_embeds", "add_time_ids"),
    ),
    "sd3": Family(
        StableDiffusion3Pipeline,
        StableDiffusion3SteeringPipeline,
        sd3_components,
        "pipeline_stable_diffusion_3_steering.py",
        (4, 32, 32),
        flow_multistep_solver,
        "pooled_prompt_embeds",
        concatenated=("prompt_embeds", "pooled_prompt_embeds"),
        max_sequence_length=16,
    ),
    "flux": Family(
        FluxPipeline,
        FluxSteeringPipeline,
        flux_components,
        "pipeline_flux_steering.py",
        (256, 16),
        flux_multistep_solver,
        "prompt_embeds",
        rows=1,  # no classifier-free guidance without a negative prompt
        max_sequence_length=16,
    ),
}
