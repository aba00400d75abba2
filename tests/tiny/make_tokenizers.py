"""Regenerate the tiny tokenizer files in this folder (committed, so tests never need a hub).

    python tests/tiny/make_tokenizers.py

- `vocab.json`, `merges.txt`: a CLIP byte-pair vocabulary with every lowercase letter, digit and some punctuation
  (so any prompt in those characters tokenizes) plus whole-word merges for the words below.
- `t5_tokenizer.json`: a word-level T5-style tokenizer (`</s>` appended, `<pad>` = 0) for the words below; other
  words map to `<unk>`.
"""

import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors


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
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            add(pieces[0] + pieces[1])
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    (HERE / "vocab.json").write_text(json.dumps(vocab, indent=0) + "\n")
    (HERE / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def t5_file() -> None:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault("\u2581" + word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.save(str(HERE / "t5_tokenizer.json"))


if __name__ == "__main__":
    clip_files()
    t5_file()
