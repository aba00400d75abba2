"""`shapes-itm`: an image-text matching model for the shapes world, built the way BLIP's ITM head and ImageReward are
(a ViT's image tokens read by a text encoder through cross-attention, then a head on the first token), small enough
to ship. It is trained (`python -m diffsteer.worlds.shapes train --stage itm`) to tell a scene's true captions from
one-edit hard negatives, on rendered scenes some of which are degraded like a decoder's output; see
`diffsteer.worlds.shapes.matching`. The reward is log P(caption matches image), in nats (at most 0)."""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffsteer.rewards.base import Reward
from diffsteer.rewards.blip import BlipTextEncoder, TextConfig
from diffsteer.rewards.image_reward import VisionConfig, build_vision_transformer
from diffsteer.rewards.registry import register
from diffsteer.rewards.shapes import shipped_weights
from diffsteer.rewards.transforms import resize_center_crop


WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class MatcherConfig:
    """The matcher's shape (stored as `config.json` next to the weights).

    Attributes:
        image_size: side of the input image.
        patch_size: side of a ViT patch.
        width: width of image and text tokens.
        vision_layers: ViT blocks.
        text_layers: text-encoder layers, each with self-attention, cross-attention to the image and an MLP.
        heads: attention heads.
        max_tokens: longest tokenised caption.
        vocab_size: rows of the word-embedding table (the world's tokenizer).
        pad_token_id: the tokenizer's padding id.
    """

    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    vision_layers: int = 4
    text_layers: int = 3
    heads: int = 4
    max_tokens: int = 20
    vocab_size: int = 256
    pad_token_id: int = 1


class ShapesMatcher(nn.Module):
    """ViT image tokens, read by a BLIP text encoder through cross-attention; a linear head on the first token gives
    the logit that the caption describes the image.

    Args:
        config: the shape.
    """

    def __init__(self, config: MatcherConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = build_vision_transformer(
            VisionConfig(config.image_size, config.patch_size, config.width, config.vision_layers, config.heads, 2.0)
        )
        self.text = BlipTextEncoder(
            TextConfig(
                vocab_size=config.vocab_size,
                hidden_size=config.width,
                num_hidden_layers=config.text_layers,
                num_attention_heads=config.heads,
                intermediate_size=2 * config.width,
                max_position_embeddings=config.max_tokens,
                layer_norm_eps=1e-6,
                encoder_width=config.width,
                pad_token_id=config.pad_token_id,
            )
        )
        self.head = nn.Linear(config.width, 1)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, captions_per_image: int = 1
    ) -> torch.Tensor:
        """Logits, shape (B * captions_per_image,), for images in [-1, 1] of shape (B, 3, S, S) and their tokenised
        captions: `captions_per_image` rows of `input_ids` per image, image by image (each image is encoded once)."""
        image_tokens = self.visual(pixels).repeat_interleave(captions_per_image, dim=0)
        return self.head(self.text(input_ids, attention_mask, image_tokens)[:, 0]).squeeze(-1)


def save_matcher(model: ShapesMatcher, directory: str | os.PathLike, tokenizer: Any) -> None:
    """Weights (safetensors, half precision: it halves the shipped file; loading casts back), `config.json` and the
    tokenizer, in one folder `ShapesITM` loads."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=1) + "\n")
    tokenizer.save_pretrained(directory / TOKENIZER_DIR)


def _shipped() -> Path:
    from diffsteer.worlds.shapes import ITM_PATH

    return ITM_PATH


@register(
    "shapes-itm",
    source="shipped in the package (diffsteer/worlds/shapes/weights/itm)",
    differentiable=True,
    summary="log P(prompt matches image) under an image-text matching model trained on the shapes world",
)
class ShapesITM(Reward):
    """log P(caption matches image) under the shapes world's image-text matching model (`ShapesMatcher`).

    Trained on rendered scenes against one-edit hard-negative captions (a colour, shape, count, relation or size
    changed), it reads the attribute binding and relations that a CLIP embedding averages away.

    Args:
        pretrained: "shipped" (default), a folder written by `save_matcher`, or `None` for random weights (tests).
        device: where to run the model (default CPU).
        batch_size: images per forward pass.
    """

    differentiable = True
    needs_prompts = True

    def __init__(
        self,
        pretrained: str | os.PathLike | None = "shipped",
        *,
        device: str | torch.device | None = None,
        batch_size: int | None = 256,
    ) -> None:
        from transformers import CLIPTokenizer

        super().__init__(batch_size=batch_size)
        directory = shipped_weights("shapes-itm", pretrained, _shipped(), WEIGHTS_FILE, "itm")
        if directory is None:
            import tempfile

            from diffsteer.worlds.shapes.components import MAX_TOKENS, build_tokenizer

            with tempfile.TemporaryDirectory() as scratch:
                tokenizer = build_tokenizer(scratch)
            config = MatcherConfig(
                max_tokens=MAX_TOKENS, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id
            )
            model = ShapesMatcher(config)
        else:
            from safetensors.torch import load_file

            config = MatcherConfig(**json.loads((directory / CONFIG_FILE).read_text()))
            model = ShapesMatcher(config)
            model.load_state_dict({k: v.float() for k, v in load_file(directory / WEIGHTS_FILE).items()})
            tokenizer = CLIPTokenizer.from_pretrained(directory / TOKENIZER_DIR)
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer

    def tokenize(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.model.config.max_tokens,
            return_tensors="pt",
        )
        return tokens.input_ids.to(device), tokens.attention_mask.to(device)

    def logits(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Match logits for [0, 1] images (any size; resized to the model's) and their prompts."""
        parameter = next(self.model.parameters())
        images = resize_center_crop(images.to(parameter), self.model.config.image_size)
        input_ids, attention_mask = self.tokenize(prompts, parameter.device)
        return self.model(images * 2 - 1, input_ids, attention_mask)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return F.logsigmoid(self.logits(images, prompts))
