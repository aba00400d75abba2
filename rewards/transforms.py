"""Tensor preprocessing for reward models: the PIL pipelines of the references, batched and differentiable.

torchvision's tensor `resize` with `antialias=True` matches PIL's bicubic resize closely (PIL filters when it
shrinks; without antialias the difference is about ten times larger), and `center_crop` uses the same offsets as
torchvision's PIL path. Where the reference resizes a PIL image, results are clamped to [0, 1] as PIL's uint8 is.
"""

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF


OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` (bicubic, antialiased) and crop the centre (`Resize` + `CenterCrop`)."""
    if min(images.shape[-2:]) != size:
        images = TF.resize(images, size, interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    return TF.center_crop(images, [size, size])


def resize_longest_pad(images: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """Resize the longer side to `size` (bicubic, antialiased) and pad the shorter one evenly with `fill` (HPSv2's
    `ResizeMaxSize`: the new sides are rounded, the extra pixel of an odd padding goes right and bottom). HPSv2 resizes
    a tensor, not a PIL image, so nothing is clamped here."""
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    if scale != 1.0:
        new_height, new_width = round(height * scale), round(width * scale)
        images = TF.resize(images, [new_height, new_width], interpolation=InterpolationMode.BICUBIC, antialias=True)
        pad_h, pad_w = size - new_height, size - new_width
        images = TF.pad(images, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=fill)
    return images


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel `(x - mean) / std`, in the images' dtype."""
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
