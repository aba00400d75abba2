"""BLIP's multimodal text encoder: a BERT whose every layer also attends to image tokens, in plain torch.

ImageReward reads a prompt with this encoder (BLIP's `med.py`): bidirectional self-attention over the prompt, then
cross-attention from the prompt to the ViT's image tokens, then the feed-forward block, in each of the layers. It is
written here rather than taken from transformers because transformers 5's `BertModel` builds cross-attention only
for decoders (`is_decoder=True`), and a decoder's self-attention is causal, which is not what BLIP trained. The module
names follow `med.py` so that the official checkpoint loads without renaming keys. Dropout is left out: the encoder
is only used frozen, in eval mode, where dropout is the identity.
"""

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class TextConfig:
    """The shape of BLIP's text encoder (the fields of `med_config.json` that the forward pass reads).

    Attributes:
        vocab_size: rows of the word-embedding table (30524 for ImageReward: BERT's 30522 plus [DEC] and [ENC]).
        hidden_size: width of the text tokens.
        num_hidden_layers: number of layers, each with self-attention, cross-attention and a feed-forward block.
        num_attention_heads: heads of both attentions.
        intermediate_size: hidden width of the feed-forward block.
        max_position_embeddings: rows of the learned position table.
        layer_norm_eps: epsilon of every LayerNorm.
        hidden_act: the feed-forward activation ("gelu" is the exact, erf-based GELU).
        encoder_width: width of the image tokens the cross-attention keys and values are computed from.
        pad_token_id: id of [PAD].
    """

    vocab_size: int = 30524
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    encoder_width: int = 1024
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}."
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}.")

    @classmethod
    def from_med_config(cls, med_config: str | os.PathLike | Mapping[str, Any], encoder_width: int) -> "TextConfig":
        """Reads a BLIP `med_config.json` (a path or its parsed dict).

        Args:
            med_config: the file or its contents.
            encoder_width: the vision width; BLIP overwrites the file's `encoder_width` with it, and so does this.

        Raises:
            ValueError: when the file describes something this encoder does not implement.
        """
        if not isinstance(med_config, Mapping):
            med_config = json.loads(Path(med_config).read_text())
        if not med_config.get("add_cross_attention", False):
            raise ValueError("med_config has add_cross_attention false; ImageReward's text encoder cross-attends.")
        position_type = med_config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"med_config position_embedding_type {position_type!r} is not supported (only 'absolute')."
            )
        fields = cls.__dataclass_fields__.keys() - {"encoder_width"}
        return cls(**{name: med_config[name] for name in fields if name in med_config}, encoder_width=encoder_width)


class TextEmbeddings(nn.Module):
    """Word plus learned position embeddings, then LayerNorm (BLIP drops BERT's token-type embeddings)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class QueryKeyValue(nn.Module):
    """The three projections of one attention; keys and values may come from tokens of another width."""

    def __init__(self, width: int, context_width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(context_width, width)
        self.value = nn.Linear(context_width, width)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention of `tokens` (B, L, D) over `context` (B, S, C); `mask` is True where allowed."""
        query, key, value = (
            self._split_heads(projection(source))
            for projection, source in ((self.query, tokens), (self.key, context), (self.value, context))
        )
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return attended.transpose(1, 2).flatten(2)

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, heads, L, D / heads)."""
        return tokens.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class DenseResidualNorm(nn.Module):
    """`LayerNorm(dense(x) + residual)`: the output block after each attention and after the feed-forward layer."""

    def __init__(self, in_width: int, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class ResidualAttention(nn.Module):
    """One attention with its output block; keyed `self.{query,key,value}` and `output.{dense,LayerNorm}`."""

    def __init__(self, config: TextConfig, context_width: int) -> None:
        super().__init__()
        # "self" is the checkpoint's name for the projections (BERT's BertSelfAttention), kept so keys load as is.
        self.self = QueryKeyValue(config.hidden_size, context_width, config.num_attention_heads)
        self.output = DenseResidualNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(tokens, context, mask), tokens)


class Intermediate(nn.Module):
    """The feed-forward block's expansion and activation."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = _ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden))


class TextLayer(nn.Module):
    """Self-attention over the prompt, cross-attention to the image tokens, feed-forward; each post-LayerNorm."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.attention = ResidualAttention(config, config.hidden_size)
        self.crossattention = ResidualAttention(config, config.encoder_width)
        self.intermediate = Intermediate(config)
        self.output = DenseResidualNorm(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.attention(tokens, tokens, token_mask)
        # Every image token is real (no padding), so the cross-attention needs no mask.
        tokens = self.crossattention(tokens, image_tokens, None)
        return self.output(self.intermediate(tokens), tokens)


class TextLayers(nn.Module):
    """The stack of layers, held as `layer` to match the checkpoint's `encoder.layer.N` keys."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TextLayer(config) for _ in range(config.num_hidden_layers))


class BlipTextEncoder(nn.Module):
    """BLIP's text encoder in its multimodal mode: prompt tokens that attend to each other and to an image.

    Args:
        config: the encoder's shape.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = TextLayers(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Encodes prompts against images.

        Args:
            input_ids: token ids, shape (B, L).
            attention_mask: 1 for real tokens, 0 for padding, shape (B, L).
            image_tokens: the vision transformer's output, shape (B, S, encoder_width).

        Returns:
            The last hidden states, shape (B, L, hidden_size); position 0 is the [CLS] feature ImageReward scores.
        """
        # Padding is hidden from every query (shape (B, 1, 1, L), broadcast over heads and queries); BERT adds -10000
        # to those logits instead, which gives the same softmax in float32 and below.
        token_mask = attention_mask.bool()[:, None, None, :]
        tokens = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            tokens = layer(tokens, token_mask, image_tokens)
        return tokens
