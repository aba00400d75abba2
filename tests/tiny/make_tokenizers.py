"""Regenerate the tiny tokenizer files in this folder (committed, so tests never need a hub).

    python tests/tiny/make_tokenizers.py

- `vocab.json`, `merges.txt`: a CLIP byte-pair vocabulary with every lowercase letter, digit and some punctuation
  (so any prompt in those characters tokenizes) plus whole-word merges for the words below.
- `t5_tokenizer.json`: a T5-style Unigram tokenizer (`</s>` appended, `<pad>` = 0) whose pieces are the words
  below; other words map to `<unk>`.
"""

import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from diffsteer.worlds.shapes.components import word_merges


HERE = Path(__file__).parent
WORDS = [
    "a",
    "an",
    "the",
    "one",
    "two",
    "three",
    "four",
    "photo",
    "picture",
    "of",
    "with",
    "and",
    "on",
    "in",
    "is",
    "left",
    "right",
    "above",
    "below",
    "next",
    "to",
    "big",
    "small",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "gray",
    "circle",
    "circles",
    "square",
    "squares",
    "triangle",
    "triangles",
    "cat",
    "dog",
    "car",
    "house",
    "tree",
    "sky",
    "sunset",
    "astronaut",
    "horse",
    "riding",
]


def clip_files() -> None:
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    add("<|startoftext|>")
    add("<|endoftext|>")
    for char in string.ascii_lowercase + string.digits + ".,!?'-":
        add(char)
        add(char + "</w>")
    merges: list[str] = []
    for word in WORDS:
        for left, right in word_merges(word):
            if f"{left} {right}" not in merges:
                merges.append(f"{left} {right}")
            add(left + right)
    (HERE / "vocab.json").write_text(json.dumps(vocab, indent=0) + "\n")
    (HERE / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def t5_file() -> None:
    # Unigram, T5's own model type: transformers' T5 tokenizer only round-trips (save_pretrained) with it.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0) for word in dict.fromkeys(WORDS)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.save(str(HERE / "t5_tokenizer.json"))


if __name__ == "__main__":
    clip_files()
    t5_file()
