"""The output of every steering pipeline."""

from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from diffsteer.outputs import CostLedger, StepRecord, origins


@dataclass
class SteeringPipelineOutput(BaseOutput):
    """Output of a `<Family>SteeringPipeline` called with a `method`.

    Attributes:
        images: the parent pipeline's images, `num_images_per_prompt` per prompt, chosen by the method's `select`, in
            the requested `output_type`.
        nsfw_content_detected: the safety checker's flags for `images`, where the family has one (else None).
        particles: every final particle decoded to an image, prompt-major (`num_particles` per prompt), in the same
            `output_type`, through the parent's postprocessing (its safety checker included); `images` are rows of
            it.
        rewards: final reward of every particle, shape (num_prompts, num_particles).
        log_weights: final log-weights normalised per prompt, shape (num_prompts, num_particles).
        log_normalizers: estimate of log E[exp(lambda r)] per prompt, or None for methods without a tilt.
        selected_indices: which particles `images` are, shape (num_prompts, num_images_per_prompt), indexing the
            flattened particles.
        trace: one `StepRecord` per model call (ESS, resampling, ancestors; per prompt in `group_ess`).
        cost: the ledger: denoiser rows (classifier-free guidance counts both halves), VAE decodes, reward rows,
            resampling steps, wall time.
        changes: what the pipeline changed on the caller's behalf (for example a switch to a stochastic scheduler).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None = None
    particles: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    log_weights: torch.Tensor | None = None
    log_normalizers: torch.Tensor | None = None
    selected_indices: torch.Tensor | None = None
    trace: list[StepRecord] = field(default_factory=list)
    cost: CostLedger | None = None
    changes: list[str] = field(default_factory=list)

    def origins(self) -> torch.Tensor:
        """Index (into the flattened particles) of each final particle's initial latent."""
        return origins(self.trace, self.rewards.numel())
