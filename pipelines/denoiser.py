"""A family's denoiser in two parts: the raw outputs of one call, and the component that combines them.

`DenoiserParts` holds what one denoiser call produced: the conditional output and, where classifier-free guidance
runs, the unconditional (or negative-prompt) output. Combining them is a separate component, so that a method can
read both parts (FK correctors weigh the conditional and unconditional models apart; reward guidance shifts the
combined output) while every family still makes exactly the calls its parent makes: one batched [uncond; cond] call
for SD, SDXL and SD3, two passes for Flux's true CFG, one pass for guidance-distilled Flux (which has no
unconditional part: its guidance is an embedding inside the one pass).

The combine step is diffusers' own `ClassifierFreeGuidance` guider. Where it does not fit, the families keep their
parents' behaviour:

- The guider's `prepare_inputs` splits conditional and unconditional inputs into separate batches (one model call
  each). SD, SDXL and SD3 run both as one batch of 2N rows, as their parents do, so `DenoiserParts.from_batch`
  splits the output with `chunk` and the guider only combines.
- The guider treats a scale of exactly 1 as off (plain conditional output); SD, SDXL and SD3 treat any
  `guidance_scale <= 1` as off, and Flux any `true_cfg_scale <= 1`. The family decides, by not running the
  unconditional pass at all (cheaper than running it and discarding it), so the guider only ever combines parts of
  a guided call, and a part-less call returns the conditional output unchanged.
- The guider's `start` / `stop` window needs `set_state` at every step; the parents guide every step, so the window
  is left open.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.guiders import ClassifierFreeGuidance


@dataclass(frozen=True)
class DenoiserParts:
    """The outputs of one denoiser call, before guidance combines them.

    Attributes:
        cond: the conditional output (epsilon, v or velocity, as the family's model predicts), one row per particle.
        uncond: the unconditional (negative-prompt) output where classifier-free guidance ran, else None.
    """

    cond: torch.Tensor
    uncond: torch.Tensor | None = None

    @classmethod
    def from_batch(cls, output: torch.Tensor, guided: bool) -> "DenoiserParts":
        """The parts of one batched call: [uncond; cond] rows when `guided` (the parents' order), else cond rows."""
        if not guided:
            return cls(output)
        uncond, cond = output.chunk(2)
        return cls(cond, uncond)


class ClassifierFreeCombine:
    """Classifier-free guidance as a component: `combine(parts)` is `uncond + scale * (cond - uncond)`, with optional
    rescaling, computed by diffusers' `ClassifierFreeGuidance`.

    Args:
        guidance_scale: returns the scale at each call. A callable, not a number, because a callback may change the
            pipeline's scale mid-run (diffusers' dynamic-CFG recipe), and the parent reads it at every step.
        guidance_rescale: returns the rescale factor (Lin et al. 2023) at each call; 0 turns it off.
    """

    def __init__(
        self, guidance_scale: Callable[[], float], guidance_rescale: Callable[[], float] = lambda: 0.0
    ) -> None:
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        # Every guider warns that guiders are experimental when it is built; one is built per pipeline call, and the
        # warning would be a line of noise on each.
        guider_logger = logging.getLogger("diffusers.guiders.guider_utils")
        level = guider_logger.level
        guider_logger.setLevel(logging.ERROR)
        try:
            self.guider = ClassifierFreeGuidance(guidance_scale=1.0)
        finally:
            guider_logger.setLevel(level)

    def __call__(self, parts: DenoiserParts) -> torch.Tensor:
        if parts.uncond is None:
            return parts.cond
        self.guider.guidance_scale = float(self.guidance_scale())
        self.guider.guidance_rescale = float(self.guidance_rescale())
        return self.guider.forward(parts.cond, parts.uncond).pred


Denoise = Callable[..., DenoiserParts]
Combine = Callable[[DenoiserParts], torch.Tensor]


def combined(denoise: Denoise, combine: Combine) -> Callable[..., torch.Tensor]:
    """`model(sample, timestep, **conditioning)`: the denoiser's parts, combined (what a plain run steps with)."""

    def model(sample: torch.Tensor, timestep: torch.Tensor, **conditioning: torch.Tensor) -> torch.Tensor:
        return combine(denoise(sample, timestep, **conditioning))

    return model
