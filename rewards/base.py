"""The reward interface: `reward(images, prompts) -> Tensor[N]`, batched, on any device and dtype."""

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch


Prompts = str | Sequence[str] | None

# Decoded images may overshoot [0, 1] by rounding; anything beyond this is a caller passing [-1, 1] or [0, 255].
_RANGE_SLACK = 1e-3


class Reward(torch.nn.Module):
    """A reward model used as a potential: higher is better, one score per image.

    Subclasses implement `score(images, prompts)` for one chunk; `forward` validates the input, splits it into chunks
    of `batch_size` rows, runs each chunk on the reward's own device and dtype, and returns float32 scores on the
    images' device. Rewards that are not differentiable run under `torch.no_grad()`.

    Attributes:
        differentiable: whether gradients reach the input images (gradient guidance needs it).
        needs_prompts: whether `prompts` is required (prompt-fidelity rewards).
        batch_relative: whether a score depends on the rest of the batch (rank ensembles); such rewards are called
            on one prompt's particles at once and never split into chunks.
        batch_size: rows per forward pass of the underlying model; `None` means the whole batch at once.
    """

    differentiable: bool = False
    needs_prompts: bool = False
    batch_relative: bool = False

    def __init__(self, batch_size: int | None = 16) -> None:
        super().__init__()
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        self.batch_size = batch_size

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """Scores one chunk: images float in [0, 1], shape (n, 3, H, W), already validated; returns shape (n,)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompts: Prompts = None) -> torch.Tensor:
        """Scores a batch.

        Args:
            images (`torch.Tensor`): float images in [0, 1], shape (N, 3, H, W), on any device and dtype.
            prompts (`str` or `list[str]`, *optional*): one prompt per image, or one string for all of them.

        Returns:
            `torch.Tensor`: float32 scores of shape (N,) on the images' device.
        """
        check_images(images)
        prompt_list = check_prompts(prompts, images.shape[0], self.needs_prompts, type(self).__name__)
        size = images.shape[0] if self.batch_size is None or self.batch_relative else self.batch_size
        with nullcontext() if self.differentiable else torch.no_grad():
            chunks = [
                self.score(
                    images[start : start + size], None if prompt_list is None else prompt_list[start : start + size]
                )
                for start in range(0, images.shape[0], size)
            ]
        scores = torch.cat([chunk.reshape(-1) for chunk in chunks]) if chunks else images.new_zeros(0)
        if scores.shape != (images.shape[0],):
            raise RuntimeError(
                f"{type(self).__name__}.score returned {scores.numel()} scores for {images.shape[0]} images."
            )
        return scores.to(device=images.device, dtype=torch.float32)

    def model_device_dtype(self, images: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        """Where the reward's weights live (the images' device and dtype for weight-free rewards)."""
        parameter = next(self.parameters(), None)
        if parameter is None:
            return images.device, images.dtype
        return parameter.device, parameter.dtype

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """The images on the reward's device and dtype (differentiable, so gradients flow back to the caller's)."""
        device, dtype = self.model_device_dtype(images)
        return images.to(device=device, dtype=dtype)

    def __add__(self, other: "Reward") -> "Reward":
        from diffsteer.rewards.combinators import WeightedSum

        if not isinstance(other, Reward):
            return NotImplemented
        return WeightedSum([self, other])

    def __mul__(self, scale: float) -> "Reward":
        from diffsteer.rewards.combinators import Scaled

        if isinstance(scale, bool) or not isinstance(scale, int | float):
            return NotImplemented
        return Scaled(self, float(scale))

    __rmul__ = __mul__

    def __neg__(self) -> "Reward":
        from diffsteer.rewards.combinators import Negated

        return Negated(self)


def encode_per_prompt(prompts: list[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """`encode(distinct prompts)` expanded to one row per prompt: particles share their prompt, so each distinct
    prompt is encoded once."""
    rows = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}
    return encode(list(rows))[[rows[prompt] for prompt in prompts]]


def check_images(images: torch.Tensor) -> None:
    """Raise a clear error unless `images` is a float tensor in [0, 1] of shape (N, 3, H, W)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (N, 3, H, W), got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}; divide uint8 images by 255.")
    if images.numel() and (images.min() < -_RANGE_SLACK or images.max() > 1 + _RANGE_SLACK):
        low, high = images.min().item(), images.max().item()
        raise ValueError(
            f"images must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; map a VAE's [-1, 1] output with "
            "(x / 2 + 0.5).clamp(0, 1)."
        )


def check_prompts(prompts: Prompts, num_images: int, required: bool, name: str) -> list[str] | None:
    """One prompt per image (a single string is repeated), or None where the reward reads no prompt."""
    if prompts is None:
        if required:
            raise ValueError(f"{name} scores images against prompts: pass prompts=[...] with one prompt per image.")
        return None
    if isinstance(prompts, str):
        return [prompts] * num_images
    prompt_list = list(prompts)
    if len(prompt_list) != num_images or not all(isinstance(prompt, str) for prompt in prompt_list):
        raise ValueError(f"prompts must be a string or {num_images} strings (one per image), got {prompts!r}.")
    return prompt_list
