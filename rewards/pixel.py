"""Rewards that need no weights: DDPO's JPEG (in)compressibility and small differentiable pixel statistics."""

import warnings
from collections.abc import Sequence

import torch

from diffsteer.rewards.base import Reward
from diffsteer.rewards.registry import register


# Rec. 601 luma weights, the usual definition of brightness.
_LUMA = (0.299, 0.587, 0.114)


@register("brightness", differentiable=True, summary="mean Rec. 601 luma, in [0, 1]")
class Brightness(Reward):
    """Mean Rec. 601 luma of each image, in [0, 1]."""

    differentiable = True

    def __init__(self, batch_size: int | None = None) -> None:
        super().__init__(batch_size=batch_size)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
        return (images * weights).sum(1).mean((1, 2))


@register("target-color", differentiable=True, summary="minus the mean squared distance to an RGB colour")
class TargetColor(Reward):
    """Minus the mean squared distance of the pixels to an RGB colour in [0, 1] (0 for a uniform image of it).

    Args:
        color: the target (r, g, b), each in [0, 1]; red by default.
    """

    differentiable = True

    def __init__(self, color: Sequence[float] = (1.0, 0.0, 0.0), batch_size: int | None = None) -> None:
        super().__init__(batch_size=batch_size)
        color = tuple(float(channel) for channel in color)
        if len(color) != 3 or not all(0.0 <= channel <= 1.0 for channel in color):
            raise ValueError(f"color must be three values in [0, 1] (r, g, b), got {color!r}.")
        self.color = color

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        target = images.new_tensor(self.color).view(1, 3, 1, 1)
        return -((images - target) ** 2).mean((1, 2, 3))


@register("colorfulness", differentiable=True, summary="Hasler-Suesstrunk colourfulness on the 0-255 scale")
class Colorfulness(Reward):
    """Hasler and Suesstrunk's colourfulness (2003), `sigma_rgyb + 0.3 mu_rgyb` on the 0-255 scale of the paper
    (a grey image scores 0; about 100 is "extremely colourful")."""

    differentiable = True

    def __init__(self, batch_size: int | None = None) -> None:
        super().__init__(batch_size=batch_size)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        red, green, blue = (255 * images).unbind(1)
        rg, yb = (red - green).flatten(1), (0.5 * (red + green) - blue).flatten(1)
        # The small constant keeps the square roots differentiable at a grey image.
        spread = (rg.var(1, correction=0) + yb.var(1, correction=0) + 1e-12).sqrt()
        offset = (rg.mean(1) ** 2 + yb.mean(1) ** 2 + 1e-12).sqrt()
        return spread + 0.3 * offset


class _JpegSize(Reward):
    """Size of the JPEG encoding (quality 95) in kilobytes (1 kB = 1000 bytes), DDPO's definition."""

    sign = 1.0

    def __init__(self, quality: int = 95, batch_size: int | None = 64) -> None:
        super().__init__(batch_size=batch_size)
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"quality must be an integer in [1, 100], got {quality!r}.")
        self.quality = quality

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        # DDPO's quantisation: (x * 255).round() to uint8; encode_jpeg takes a list and returns one buffer each.
        pixels = (images.detach() * 255).round().clamp(0, 255).to(torch.uint8)
        if pixels.device.type not in ("cpu", "cuda"):
            pixels = pixels.cpu()
        with warnings.catch_warnings():
            # torchvision 0.29 marks its image codecs deprecated in favour of torchcodec; the JPEG encoder is
            # unchanged and is the one that takes batches of uint8 tensors on CPU and CUDA (nvjpeg).
            warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
            from torchvision.io import encode_jpeg

            encoded = encode_jpeg(list(pixels), quality=self.quality)
        sizes = torch.tensor([buffer.numel() / 1000 for buffer in encoded], dtype=torch.float64)
        return self.sign * sizes


@register("jpeg-incompressibility", differentiable=False, summary="JPEG size in kB at quality 95 (DDPO)")
class JpegIncompressibility(_JpegSize):
    """DDPO's incompressibility: the JPEG size in kB at quality 95 (detailed, noisy images score high)."""


@register("jpeg-compressibility", differentiable=False, summary="minus the JPEG size in kB at quality 95 (DDPO)")
class JpegCompressibility(_JpegSize):
    """DDPO's compressibility: minus the JPEG size in kB at quality 95 (flat, simple images score high)."""

    sign = -1.0
