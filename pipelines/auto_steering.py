"""`AutoSteeringPipeline`: the steering pipeline of whatever family a pipeline or checkpoint belongs to."""

import os
from typing import Any

from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from diffsteer.pipelines.pipeline_flux_steering import FluxSteeringPipeline
from diffsteer.pipelines.pipeline_stable_diffusion_3_steering import StableDiffusion3SteeringPipeline
from diffsteer.pipelines.pipeline_stable_diffusion_steering import StableDiffusionSteeringPipeline
from diffsteer.pipelines.pipeline_stable_diffusion_xl_steering import StableDiffusionXLSteeringPipeline


STEERING_PIPELINES: dict[str, type[DiffusionPipeline]] = {
    StableDiffusionPipeline.__name__: StableDiffusionSteeringPipeline,
    StableDiffusionXLPipeline.__name__: StableDiffusionXLSteeringPipeline,
    StableDiffusion3Pipeline.__name__: StableDiffusion3SteeringPipeline,
    FluxPipeline.__name__: FluxSteeringPipeline,
}
STEERING_PIPELINES.update({cls.__name__: cls for cls in list(STEERING_PIPELINES.values())})


def steering_class(class_name: str) -> type[DiffusionPipeline]:
    """The steering pipeline for a diffusers pipeline class name (or a steering pipeline's own name)."""
    try:
        return STEERING_PIPELINES[class_name]
    except KeyError:
        families = sorted(name for name in STEERING_PIPELINES if "Steering" not in name)
        raise ValueError(
            f"No steering pipeline for {class_name}; diffsteer steers {families}. For another model, drive "
            "diffsteer.sample with your own model callable."
        ) from None


class AutoSteeringPipeline:
    """Picks `StableDiffusionSteeringPipeline`, `StableDiffusionXLSteeringPipeline`,
    `StableDiffusion3SteeringPipeline` or `FluxSteeringPipeline` from a pipeline or a checkpoint.

    Examples:

    ```py
    >>> pipe = AutoSteeringPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
    >>> pipe = AutoSteeringPipeline.from_pipe(existing_flux_pipeline)   # shares its components
    ```
    """

    def __init__(self) -> None:
        raise OSError("Use AutoSteeringPipeline.from_pretrained(...) or AutoSteeringPipeline.from_pipe(...).")

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> DiffusionPipeline:
        """The steering twin of `pipeline`, built on the same component objects (no copy of the weights)."""
        for base in type(pipeline).__mro__:
            if base.__name__ in STEERING_PIPELINES:
                return steering_class(base.__name__).from_pipe(pipeline, **kwargs)
        return steering_class(type(pipeline).__name__)  # raises, naming the supported families

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> DiffusionPipeline:
        """Load a checkpoint (hub id or local folder) into the steering pipeline of its `model_index.json` class."""
        config = DiffusionPipeline.load_config(
            pretrained_model_name_or_path,
            **{key: kwargs[key] for key in ("cache_dir", "token", "revision", "local_files_only") if key in kwargs},
        )
        return steering_class(config["_class_name"]).from_pretrained(pretrained_model_name_or_path, **kwargs)
