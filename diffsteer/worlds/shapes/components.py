"""The shapes world's model components, built from a configuration: tokenizer, text encoder, UNet, autoencoder,
scheduler (diffusers/transformers classes), and the open_clip model behind the `shapes-clip` reward."""

import json
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffsteer.worlds.shapes.captions import VOCABULARY


MAX_TOKENS = 20  # the longest caption (four different coloured shapes) is 17 tokens with its start and end tokens


def word_merges(word: str) -> list[tuple[str, str]]:
    """The chain of byte-pair merges that builds `word` (with CLIP's `</w>` end-of-word mark) from its first letter."""
    pieces = [*word[:-1], word[-1] + "</w>"]
    merges = []
    while len(pieces) > 1:
        merges.append((pieces[0], pieces[1]))
        pieces = [pieces[0] + pieces[1], *pieces[2:]]
    return merges


def write_tokenizer_files(directory: str | Path) -> None:
    """A CLIP byte-pair vocabulary whose whole-word tokens are exactly the grammar's words.

    Each word is built by a chain of merges from its first letter; the merges are ordered longest word first so that
    a shorter word's merge never splits a longer word (checked by `build_tokenizer`).
    """
    vocab: dict[str, int] = {}
    merges: list[str] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    add("<|startoftext|>")
    add("<|endoftext|>")
    for word in sorted(VOCABULARY, key=lambda w: (-len(w), w)):
        for piece in [*word[:-1], word[-1] + "</w>"]:
            add(piece)
        for left, right in word_merges(word):
            if f"{left} {right}" not in merges:
                merges.append(f"{left} {right}")
            add(left + right)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, indent=0) + "\n")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """Write the grammar's vocabulary to `directory` and load it as a `CLIPTokenizer` (checked word by word)."""
    write_tokenizer_files(directory)
    directory = Path(directory)
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=MAX_TOKENS
    )
    for word in VOCABULARY:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + "</w>"]:
            raise RuntimeError(f"The shapes tokenizer splits {word!r} into {pieces}; fix the merge order.")
    return tokenizer


def build_text_encoder(tokenizer: CLIPTokenizer, config: dict[str, Any]) -> CLIPTextModel:
    vocab = tokenizer.get_vocab()
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
            **config,
        )
    )


def build_unet(config: dict[str, Any]) -> UNet2DConditionModel:
    return UNet2DConditionModel(**config)


def build_vae(config: dict[str, Any]) -> AutoencoderKL:
    return AutoencoderKL(**config)


def build_scheduler(config: dict[str, Any]) -> DDPMScheduler:
    return DDPMScheduler(**config)


def open_clip_config(config: dict[str, Any]) -> dict[str, Any]:
    """The open_clip model configuration (registered as `shapes-clip` with `open_clip.add_model_config`)."""
    return {
        "embed_dim": config["embed_dim"],
        "vision_cfg": dict(config["vision"]),
        "text_cfg": dict(config["text"]),
    }
