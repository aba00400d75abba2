"""Drop-in diffusers steering pipelines (installed as `diffsteer.pipelines`).

Each `<Family>SteeringPipeline` subclasses the diffusers pipeline of its family: same `from_pretrained`, same call,
plus `reward=` and `method=`.
"""

from diffsteer.pipelines.auto_steering import AutoSteeringPipeline
from diffsteer.pipelines.pipeline_flux_steering import FluxSteeringPipeline
from diffsteer.pipelines.pipeline_output import SteeringPipelineOutput
from diffsteer.pipelines.pipeline_stable_diffusion_3_steering import StableDiffusion3SteeringPipeline
from diffsteer.pipelines.pipeline_stable_diffusion_steering import StableDiffusionSteeringPipeline
from diffsteer.pipelines.pipeline_stable_diffusion_xl_steering import StableDiffusionXLSteeringPipeline


__all__ = [
    "AutoSteeringPipeline",
    "FluxSteeringPipeline",
    "StableDiffusion3SteeringPipeline",
    "StableDiffusionSteeringPipeline",
    "StableDiffusionXLSteeringPipeline",
    "SteeringPipelineOutput",
]
