"""Loading open_clip models for rewards (CLIP score, HPSv2, aesthetic) offline-first, with one error for missing
weights, and encoding batches of [0, 1] images and prompts with open_clip's own preprocessing done on tensors."""

import logging
import os
from pathlib import Path
from typing import Any

import torch

from diffsteer.rewards.base import Reward, encode_per_prompt
from diffsteer.rewards.hub import weights_error
from diffsteer.rewards.transforms import normalize, resize_center_crop, resize_longest_pad


logger = logging.getLogger(__name__)


def create_open_clip_model(
    model_name: str, pretrained: str | os.PathLike | None, *, reward: str, option: str
) -> torch.nn.Module:
    """An open_clip model with weights from a pretrained tag, a local file, or none (random, for tests).

    Raises:
        ValueError: for an unknown model name or tag (listing the known ones).
        RewardWeightsNotFoundError: when a tag's weights cannot be downloaded; names the hub id behind the tag.
    """
    import open_clip

    is_hub_model = model_name.startswith("hf-hub:")
    if not is_hub_model and model_name not in open_clip.list_models():
        raise ValueError(f"Reward {reward!r}: unknown open_clip model {model_name!r}; see open_clip.list_models().")
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        return open_clip.create_model(model_name, pretrained=str(Path(pretrained).expanduser()))
    if pretrained is not None and not is_hub_model:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ValueError(
                f"Reward {reward!r}: {option}={str(pretrained)!r} is neither a local file nor a tag of {model_name!r} "
                f"(tags: {', '.join(tags) or 'none'})."
            )
    try:
        return open_clip.create_model(model_name, pretrained=None if is_hub_model else pretrained)
    except Exception as error:  # open_clip wraps download failures in RuntimeError; the hub raises its own types
        if is_hub_model:
            hub_id = model_name.removeprefix("hf-hub:")
            raise weights_error(reward, hub_id, "open_clip_model.safetensors", option, error) from None
        hub_id = open_clip.get_pretrained_cfg(model_name, str(pretrained)).get("hf_hub", "").strip("/")
        raise weights_error(reward, hub_id or str(pretrained), "open_clip_model.safetensors", option, error) from None


def open_clip_architecture(model_name: str) -> torch.nn.Module:
    """An open_clip model with random weights, for a caller that loads its own state dict right after.

    open_clip warns that such a model is "initialized randomly"; by the time the reward is used that is false, so the
    warning is muted while the model is built (and logging's previous switch restored).
    """
    import open_clip

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(model_name, pretrained=None)
    finally:
        logging.disable(previous)


class OpenCLIPReward(Reward):
    """A reward on an open_clip model: encodes images with the model's own preprocessing, on tensors.

    Args:
        model: an open_clip `CLIP` model.
        tokenizer: its tokenizer (`open_clip.get_tokenizer(name)`).
        resize_mode: "shortest" (resize and centre-crop) or "longest" (resize and pad), as the reference scorer does.
        batch_size: images per forward pass.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, *, resize_mode: str | None = None, batch_size: int | None = 16
    ) -> None:
        super().__init__(batch_size=batch_size)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        config = getattr(model.visual, "preprocess_cfg", {})
        size = config.get("size", model.visual.image_size)
        self.image_size = size[0] if isinstance(size, tuple | list) else int(size)
        self.mean, self.std = tuple(config.get("mean", (0.5,) * 3)), tuple(config.get("std", (0.5,) * 3))
        self.resize_mode = resize_mode or config.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "longest"):
            raise ValueError(f"resize_mode must be 'shortest' or 'longest', got {self.resize_mode!r}.")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the model's normalised input, on the model's device and dtype."""
        images = self.to_model(images)
        if self.resize_mode == "longest":
            images = resize_longest_pad(images, self.image_size)
        else:
            images = resize_center_crop(images, self.image_size)
        return normalize(images, self.mean, self.std)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings."""
        return self.model.encode_image(self.preprocess(images), normalize=True)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings, one row per prompt; each distinct prompt is encoded once."""
        device = next(self.model.parameters()).device
        return encode_per_prompt(
            prompts, lambda unique: self.model.encode_text(self.tokenizer(unique).to(device), normalize=True)
        )
