"""ImageReward (Xu et al., 2023): a human-preference score of an image for its prompt, native, batched, differentiable.

The model is BLIP: a ViT-L/16 encodes the image into tokens, a BERT reads the prompt while cross-attending to them
(`diffsteer.rewards.blip`), and an MLP maps the prompt's [CLS] feature to a score, standardised with the mean and
standard deviation of the training set's scores. It loads the official `ImageReward.pt` and `med_config.json`
(hub id THUDM/ImageReward) without the `image-reward` package, which cannot be imported next to current diffusers.
Preprocessing is the package's `Resize(224, bicubic) + CenterCrop + Normalize`, done on tensors so that gradients
reach the images; `.ci/image_reward_parity` checks scores and gradients against the package itself.
"""

import copy
import itertools
import os
import string
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffsteer.rewards.base import Reward
from diffsteer.rewards.blip import BlipTextEncoder, TextConfig
from diffsteer.rewards.hub import RewardWeightsNotFoundError, first_line, offline_note, resolve_file
from diffsteer.rewards.registry import register
from diffsteer.rewards.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, resize_center_crop


HUB_ID = "THUDM/ImageReward"
WEIGHTS_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
TOKENIZER_ID = "bert-base-uncased"
# Mean and standard deviation of the raw scores over the ImageReward training set; scores are standardised with them.
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
# The package pads or truncates every prompt to 35 tokens.
MAX_PROMPT_TOKENS = 35
# Checkpoint entries the scorer never reads: BLIP's contrastive projections and BERT's position-id buffer.
IGNORED_KEYS = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")
_REWARD = "image-reward"


@dataclass(frozen=True)
class VisionConfig:
    """The shape of BLIP's vision transformer (ImageReward uses ViT-L/16 at 224 px).

    Attributes:
        image_size: side of the square input.
        patch_size: side of a patch.
        width: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: hidden width of a block's MLP over `width`.
    """

    image_size: int = 224
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0


def build_vision_transformer(config: VisionConfig) -> nn.Module:
    """BLIP's ViT: pre-norm blocks, class token, learned positions, LayerNorm eps 1e-6, every token returned."""
    # timm (well maintained, already a dependency of open_clip) has BLIP's ViT with the same parameter names.
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=True,
        num_classes=0,
        global_pool="",
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )


class Blip(nn.Module):
    """The two encoders, named as in the checkpoint (`blip.visual_encoder`, `blip.text_encoder`)."""

    def __init__(self, text_config: TextConfig, vision_config: VisionConfig) -> None:
        super().__init__()
        self.visual_encoder = build_vision_transformer(vision_config)
        self.text_encoder = BlipTextEncoder(text_config)


class ScoreHead(nn.Module):
    """The MLP from the [CLS] feature to a raw score: linear layers only (the package comments its ReLUs out)."""

    def __init__(self, width: int, hidden: tuple[int, ...] = (1024, 128, 64, 16)) -> None:
        super().__init__()
        widths = (width, *hidden)
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(width_in, width_out))
            # The package has a dropout after each of the first three linears; identities keep the checkpoint's
            # layer indices (layers.0, 2, 4, 6, 7) and are what dropout is in eval mode.
            if index < 3:
                layers.append(nn.Identity())
        layers.append(nn.Linear(widths[-1], 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ImageReward(Reward):
    """ImageReward: how much people would prefer an image for its prompt, standardised (about N(0, 1) on its data).

    The constructor builds the architecture with random weights (for tests, or to load weights yourself); use
    `ImageReward.from_pretrained` or `diffsteer.rewards.load("image-reward")` for the trained model.

    Args:
        text_config: the text encoder's shape; its `encoder_width` must equal the vision width.
        vision_config: the vision transformer's shape.
        tokenizer: a BERT tokenizer (a hub id, a local folder with `vocab.txt`, or a tokenizer object, which is
            copied); [DEC] and [ENC] are added as the package does.
        batch_size: images per forward pass.

    Example:
        ```py
        reward = diffsteer.rewards.load("image-reward", pretrained="/models/ImageReward", tokenizer="/models/bert")
        scores = reward(images, ["a photo of a cat"] * len(images))  # images in [0, 1], (N, 3, H, W)
        ```
    """

    differentiable = True
    needs_prompts = True

    def __init__(
        self,
        text_config: TextConfig,
        vision_config: VisionConfig,
        tokenizer: Any,
        *,
        batch_size: int | None = 16,
    ) -> None:
        super().__init__(batch_size=batch_size)
        if text_config.encoder_width != vision_config.width:
            raise ValueError(
                f"text_config.encoder_width ({text_config.encoder_width}) must equal the vision width "
                f"({vision_config.width}): the cross-attention reads the image tokens."
            )
        self.text_config, self.vision_config = text_config, vision_config
        self.tokenizer = load_tokenizer(tokenizer, text_config.vocab_size)
        self.blip = Blip(text_config, vision_config)
        self.mlp = ScoreHead(text_config.hidden_size)
        self.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike = HUB_ID,
        *,
        med_config: str | os.PathLike | None = None,
        tokenizer: Any = TOKENIZER_ID,
        vision_config: VisionConfig | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 16,
    ) -> "ImageReward":
        """The trained ImageReward.

        Args:
            pretrained: a hub id, a folder holding `ImageReward.pt` and `med_config.json`, or the `.pt` file itself.
            med_config: `med_config.json` (or its folder) when it is not next to the weights.
            tokenizer: the BERT tokenizer: a hub id, a folder with `vocab.txt`, or a tokenizer object.
            vision_config: the ViT's shape, which the checkpoint does not record (default ViT-L/16 at 224 px, the
                official model's).
            device: where to run (default CPU).
            dtype: the weights' dtype (default that of the checkpoint, float32).
            batch_size: images per forward pass.

        Raises:
            RewardWeightsNotFoundError: when the weights, the config or the tokenizer's vocabulary are neither local
                nor reachable on the hub; the message names the hub id and the option taking a local path.
            ValueError: when the checkpoint lacks weights the model needs, or its shapes differ.
        """
        weights_path = resolve_file(pretrained, WEIGHTS_FILE, reward=_REWARD, option="pretrained")
        config_path = _resolve_med_config(pretrained, weights_path, med_config)
        vision_config = vision_config or VisionConfig()
        text_config = TextConfig.from_med_config(config_path, encoder_width=vision_config.width)
        # Built without memory, then the checkpoint's tensors are adopted as parameters: no random init to overwrite.
        with torch.device("meta"):
            model = cls(text_config, vision_config, tokenizer, batch_size=batch_size)
        model.load_checkpoint(_read_state_dict(weights_path), assign=True)
        if any(tensor.is_meta for tensor in itertools.chain(model.parameters(), model.buffers())):
            raise RuntimeError("ImageReward: some weights were not loaded from the checkpoint.")
        return model.to(device=device, dtype=dtype)

    @classmethod
    def random(
        cls,
        seed: int = 0,
        *,
        text_config: TextConfig | None = None,
        vision_config: VisionConfig | None = None,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 16,
    ) -> "ImageReward":
        """The architecture with seeded random weights, full size by default (for benchmarks and tests; offline).

        Args:
            seed: seeds the initialisation (the global torch generator is left as it was).
            text_config: the text encoder's shape (default BERT-base with ImageReward's 30524 tokens); its
                `encoder_width` is set to the vision width.
            vision_config: the ViT's shape (default ViT-L/16 at 224 px).
            tokenizer: as in the constructor; by default a built-in wordpiece vocabulary of single characters,
                which needs no download and, with random weights, is as good as BERT's.
            device: where to run (default CPU).
            dtype: the weights' dtype (default float32).
            batch_size: images per forward pass.
        """
        vision_config = vision_config or VisionConfig()
        text_config = replace(text_config or TextConfig(), encoder_width=vision_config.width)
        with warnings.catch_warnings():
            if tokenizer is None:  # the character vocabulary is smaller than the embedding table by design
                warnings.filterwarnings("ignore", message=".*unless it is a test vocabulary")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = cls(text_config, vision_config, tokenizer or character_tokenizer(), batch_size=batch_size)
        return model.to(device=device, dtype=dtype)

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor], *, assign: bool = False) -> None:
        """Loads an ImageReward state dict: every weight of the model must be there; BLIP's unused projections and
        buffers are ignored, and anything else is reported with a warning (the package itself loads non-strictly).

        Raises:
            ValueError: naming the missing keys, or the first keys whose shapes differ.
        """
        expected = self.state_dict(keep_vars=True)
        weights = {key: value for key, value in state_dict.items() if not key.startswith(IGNORED_KEYS)}
        missing = sorted(expected.keys() - weights.keys())
        if missing:
            raise ValueError(f"The ImageReward checkpoint lacks {len(missing)} weights: {_preview(missing)}.")
        unexpected = sorted(weights.keys() - expected.keys())
        if unexpected:
            message = f"ImageReward: ignoring {len(unexpected)} unknown checkpoint keys: {_preview(unexpected)}."
            warnings.warn(message, stacklevel=2)
        mismatched = [
            f"{key} {tuple(weights[key].shape)} (model {tuple(tensor.shape)})"
            for key, tensor in expected.items()
            if weights[key].shape != tensor.shape
        ]
        if mismatched:
            raise ValueError(f"The ImageReward checkpoint has other shapes: {_preview(mismatched)}.")
        self.load_state_dict({key: weights[key] for key in expected}, strict=True, assign=assign)
        self.requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size -> the ViT's normalised square input, on the model's device and dtype.

        Resizing runs in at least float32 (bicubic weights in half precision are coarse), then casts.
        """
        device, dtype = self.model_device_dtype(images)
        pixels = images.to(device=device, dtype=torch.promote_types(dtype, torch.float32))
        pixels = resize_center_crop(pixels, self.vision_config.image_size)
        return normalize(pixels, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).to(dtype)

    def tokenize(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, padded to a fixed 35 tokens as the package does (so a prompt's score does
        not depend on the other prompts of the batch)."""
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
        )
        return tokens.input_ids.to(device), tokens.attention_mask.to(device)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        pixels = self.preprocess(images)
        input_ids, attention_mask = self.tokenize(list(prompts or []), pixels.device)
        return self.score_preprocessed(pixels, input_ids, attention_mask)

    def score_preprocessed(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Standardised scores, shape (B,), of normalised 224-px images and tokenised prompts (the package's
        `score_gard`, which returns shape (B, 1)). Each image is encoded once."""
        return (self.raw_score(pixels, input_ids, attention_mask) - SCORE_MEAN) / SCORE_STD

    def raw_score(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The MLP's output before standardisation, shape (B,)."""
        return self.mlp(self.text_features(pixels, input_ids, attention_mask)).squeeze(-1)

    def text_features(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The prompts' [CLS] features after cross-attending to the images, shape (B, hidden_size)."""
        image_tokens = self.blip.visual_encoder.forward_features(pixels)
        return self.blip.text_encoder(input_ids, attention_mask, image_tokens)[:, 0]


@register(
    "image-reward",
    source=f"hub: {HUB_ID} ({WEIGHTS_FILE}, {MED_CONFIG_FILE})",
    needs_download=True,
    differentiable=True,
    summary="ImageReward human preference for an image given its prompt (standardised, about -2 to 2)",
)
def image_reward(
    pretrained: str | os.PathLike = HUB_ID,
    med_config: str | os.PathLike | None = None,
    tokenizer: Any = TOKENIZER_ID,
    vision_config: VisionConfig | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int | None = 16,
) -> ImageReward:
    """The trained ImageReward; see `ImageReward.from_pretrained` for the options."""
    return ImageReward.from_pretrained(
        pretrained,
        med_config=med_config,
        tokenizer=tokenizer,
        vision_config=vision_config,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
    )


def load_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """BERT's uncased tokenizer with BLIP's two added special tokens, [DEC] (bos) and [ENC].

    Args:
        tokenizer: a hub id, a local folder holding `vocab.txt`, or a tokenizer object (copied, not changed).
        vocab_size: rows of the model's word embeddings; every token id must index one.

    Raises:
        RewardWeightsNotFoundError: when a hub id or folder yields no vocabulary. Offline, transformers 5 returns a
            tokenizer of the five special tokens alone instead of failing, which would turn every word into [UNK].
        ValueError: when a tokenizer object has no vocabulary, or more tokens than the model has embeddings.
    """
    if isinstance(tokenizer, str | os.PathLike):
        source = str(tokenizer)
        loaded = _load_bert_tokenizer(source)
    else:
        source, loaded = None, copy.deepcopy(tokenizer)
    if not set(loaded.get_vocab()) - set(loaded.all_special_tokens):
        if source is None:
            raise ValueError("The ImageReward tokenizer has no vocabulary beyond its special tokens.")
        raise _tokenizer_error(source, "it has no vocabulary (only special tokens)")
    loaded.add_special_tokens({"bos_token": "[DEC]"})
    loaded.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(loaded) > vocab_size:
        raise ValueError(f"The tokenizer has {len(loaded)} tokens but ImageReward embeds only {vocab_size}.")
    if len(loaded) != vocab_size:
        warnings.warn(
            f"The ImageReward tokenizer has {len(loaded)} tokens (with [DEC] and [ENC]) but the model embeds "
            f"{vocab_size}: unless it is a test vocabulary, its ids do not match the trained embeddings.",
            stacklevel=2,
        )
    return loaded


def character_tokenizer() -> Any:
    """An uncased BERT wordpiece tokenizer whose vocabulary is single characters (letters and digits, alone and as
    "##" continuations, and punctuation): it reads any English prompt without a download, for random weights."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = string.ascii_lowercase + string.digits
    tokens = [*specials, *characters, *(f"##{character}" for character in characters), *string.punctuation]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


def _load_bert_tokenizer(source: str) -> Any:
    """`BertTokenizer.from_pretrained(source)`, with transformers' offline error turned into ours."""
    from transformers import BertTokenizer

    try:
        return BertTokenizer.from_pretrained(source)
    except OSError as error:
        raise _tokenizer_error(source, first_line(error)) from None


def _tokenizer_error(source: str, reason: str) -> RewardWeightsNotFoundError:
    """The error for a tokenizer that could not be loaded: which one, and how to pass a local folder."""
    return RewardWeightsNotFoundError(
        f"Reward {_REWARD!r}: the tokenizer {source!r} could not be loaded{offline_note()}: {reason}. Download it "
        f"where the hub is reachable (hf download {TOKENIZER_ID} vocab.txt) and pass its folder: "
        f"diffsteer.rewards.load({_REWARD!r}, tokenizer='/path/to/{TOKENIZER_ID}')."
    )


def _resolve_med_config(
    pretrained: str | os.PathLike, weights_path: Path, med_config: str | os.PathLike | None
) -> Path:
    """`med_config.json`: as given, else next to a weights file given by path, else from `pretrained`."""
    if med_config is not None:
        return resolve_file(med_config, MED_CONFIG_FILE, reward=_REWARD, option="med_config")
    if Path(pretrained).expanduser().is_file():
        sibling = weights_path.parent / MED_CONFIG_FILE
        if not sibling.is_file():
            raise RewardWeightsNotFoundError(
                f"Reward {_REWARD!r}: no {MED_CONFIG_FILE!r} next to {str(weights_path)!r}; pass med_config='/path/to/"
                f"{MED_CONFIG_FILE}' (from the hub id {HUB_ID!r})."
            )
        return sibling
    return resolve_file(pretrained, MED_CONFIG_FILE, reward=_REWARD, option="pretrained")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, memory-mapped when the file format allows (it is 1.8 GB in float32)."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files in torch's legacy (pre-zip) format cannot be memory-mapped
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{str(path)!r} holds a {type(state_dict).__name__}, not an ImageReward state dict.")
    return state_dict


def _preview(items: list[str], limit: int = 5) -> str:
    """The first few items of a long list, with the count of the rest."""
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
