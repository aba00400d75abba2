"""The caption grammar of the shapes world: GenEval's categories in miniature, a parser, and held-out prompts.

A caption describes the whole scene: every shape in the image is named (no extra shapes), with optional colour
and size words, and two-shape captions may relate the first shape to the second ("left of", "right of", "above",
"below").
"""

import itertools
import random
import re
from dataclasses import dataclass

import numpy as np

from diffsteer.worlds.shapes.scenes import COLORS, COUNT_RANGES, SHAPES, SIZE_RANGES, SIZES, Shape, place


CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = {"two": 2, "three": 3, "four": 4}
RELATIONS = ("left of", "right of", "above", "below")
VOCABULARY = sorted(
    {"a", "an", "and", "of", "left", "right", "above", "below", *NUMBERS, *SIZES, *COLORS}
    | set(SHAPES)
    | {f"{shape}s" for shape in SHAPES}
)
HELD_OUT_FRACTION = 0.25
HELD_OUT_SEED = 2026


@dataclass(frozen=True)
class ObjectRequirement:
    """One shape the caption asks for; `None` leaves colour or size free."""

    shape: str
    color: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Requirements:
    """What a caption asks for: exactly these objects, and optionally `objects[0] <relation> objects[1]`."""

    objects: tuple[ObjectRequirement, ...]
    relation: str | None = None


def _noun_phrase(obj: ObjectRequirement) -> str:
    words = [w for w in (obj.size, obj.color, obj.shape) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def caption_of(requirements: Requirements) -> str:
    """The grammar's caption for requirements (the inverse of `parse`); equal objects are counted ("two circles")."""
    objects = requirements.objects
    if requirements.relation:
        return f"{_noun_phrase(objects[0])} {requirements.relation} {_noun_phrase(objects[1])}"
    phrases = []
    for obj in dict.fromkeys(objects):
        count = objects.count(obj)
        if count == 1:
            phrases.append(_noun_phrase(obj))
        else:
            number = {v: k for k, v in NUMBERS.items()}[count]
            phrases.append(" ".join([number, *(w for w in (obj.size, obj.color) if w), f"{obj.shape}s"]))
    return " and ".join(phrases)


def _parse_phrase(phrase: str, caption: str) -> list[ObjectRequirement]:
    words = phrase.split()
    if not words:
        raise ValueError(f"Cannot parse caption {caption!r}: an empty phrase.")
    count = 1
    if words[0] in ("a", "an"):
        words = words[1:]
    elif words[0] in NUMBERS:
        count, words = NUMBERS[words[0]], words[1:]
    if not words:
        raise ValueError(f"Cannot parse caption {caption!r}: {phrase!r} names no shape.")
    *modifiers, noun = words
    plural = noun.endswith("s") and noun[:-1] in SHAPES
    shape = noun[:-1] if plural else noun
    if shape not in SHAPES:
        raise ValueError(f"Cannot parse caption {caption!r}: {noun!r} is not a shape ({', '.join(SHAPES)}).")
    if plural != (count > 1):
        raise ValueError(f"Cannot parse caption {caption!r}: {phrase!r} mixes singular and plural.")
    size = color = None
    for word in modifiers:
        if word in SIZES and size is None and color is None:
            size = word
        elif word in COLORS and color is None:
            color = word
        else:
            raise ValueError(
                f"Cannot parse caption {caption!r}: unexpected {word!r}; the grammar is "
                f"[a|two|three|four] [{'|'.join(SIZES)}] [colour] shape."
            )
    return [ObjectRequirement(shape, color, size)] * count


def parse(caption: str) -> Requirements:
    """Parse a caption of the grammar into requirements; `ValueError` names what does not fit."""
    text = " ".join(caption.lower().strip().rstrip(".").split())
    for relation in RELATIONS:
        parts = re.split(rf"\b{relation}\b", text)
        if len(parts) == 2:
            first, second = _parse_phrase(parts[0], caption), _parse_phrase(parts[1], caption)
            if len(first) != 1 or len(second) != 1:
                raise ValueError(f"Cannot parse caption {caption!r}: a relation joins two single shapes.")
            return Requirements((first[0], second[0]), relation)
    objects = [obj for phrase in text.split(" and ") for obj in _parse_phrase(phrase, caption)]
    if len(objects) > 4:
        raise ValueError(f"Cannot parse caption {caption!r}: at most 4 shapes fit a scene.")
    return Requirements(tuple(objects))


def category_of(requirements: Requirements) -> str:
    """The GenEval category a caption belongs to."""
    objects = requirements.objects
    if requirements.relation:
        return "position"
    if len(objects) == 1:
        return "colors" if objects[0].color else "single_object"
    if len(set(objects)) == 1:
        return "counting"
    return "color_attr" if any(obj.color for obj in objects) else "two_object"


def all_captions(category: str) -> list[str]:
    """Every caption of a category, sorted."""
    pairs = list(itertools.permutations(SHAPES, 2))
    if category == "single_object":
        reqs = [Requirements((ObjectRequirement(s, size=z),)) for s in SHAPES for z in (None, *SIZES)]
    elif category == "colors":
        reqs = [Requirements((ObjectRequirement(s, c),)) for s in SHAPES for c in COLORS]
    elif category == "counting":
        reqs = [Requirements((ObjectRequirement(s),) * n) for s in SHAPES for n in NUMBERS.values()]
    elif category == "two_object":
        reqs = [Requirements((ObjectRequirement(a), ObjectRequirement(b))) for a, b in pairs]
    elif category == "position":
        reqs = [Requirements((ObjectRequirement(a), ObjectRequirement(b)), rel) for a, b in pairs for rel in RELATIONS]
    elif category == "color_attr":
        reqs = [
            Requirements((ObjectRequirement(a, ca), ObjectRequirement(b, cb)))
            for a, b in pairs
            for ca, cb in itertools.permutations(COLORS, 2)
        ]
    else:
        raise ValueError(f"Unknown category {category!r}; known: {list(CATEGORIES)}.")
    return sorted(caption_of(r) for r in reqs)


def split_captions(category: str) -> tuple[list[str], list[str]]:
    """(training captions, held-out captions) of a category: a fixed shuffle, a quarter (at least 2) held out.
    Training never sees a held-out caption."""
    captions = all_captions(category)
    shuffled = captions.copy()
    random.Random(f"{HELD_OUT_SEED}-{category}").shuffle(shuffled)
    held = set(shuffled[: max(2, round(HELD_OUT_FRACTION * len(captions)))])
    return [c for c in captions if c not in held], [c for c in captions if c in held]


def held_out_prompts() -> dict[str, list[str]]:
    """The held-out prompts of every category."""
    return {category: split_captions(category)[1] for category in CATEGORIES}


def training_captions() -> dict[str, list[str]]:
    """The training captions of every category."""
    return {category: split_captions(category)[0] for category in CATEGORIES}


def random_requirements(rng: np.random.Generator) -> Requirements:
    """Requirements beyond the categories (1-4 shapes, mostly coloured, sometimes related), to widen training."""
    count = int(rng.integers(1, 5))
    objects = tuple(
        ObjectRequirement(
            str(rng.choice(SHAPES)),
            str(rng.choice(list(COLORS))) if rng.random() < 0.7 else None,
            str(rng.choice(SIZES)) if count == 1 and rng.random() < 0.3 else None,
        )
        for _ in range(count)
    )
    relation = str(rng.choice(RELATIONS)) if count == 2 and objects[0] != objects[1] and rng.random() < 0.5 else None
    return Requirements(objects, relation)


def scene_for(requirements: Requirements, rng: np.random.Generator) -> tuple[Shape, ...]:
    """A random scene that satisfies the requirements: free colours and sizes drawn uniformly."""
    count = len(requirements.objects)
    kinds, colors, radii = [], [], []
    for obj in requirements.objects:
        low, high = SIZE_RANGES[obj.size] if obj.size else COUNT_RANGES[count]
        kinds.append(obj.shape)
        colors.append(obj.color or str(rng.choice(list(COLORS))))
        radii.append(float(rng.uniform(low, high)))
    return place(kinds, colors, radii, rng, relation=requirements.relation)


def draw_scenes(
    num_scenes: int, mixed_fraction: float, rng: np.random.Generator
) -> list[tuple[Requirements, str, tuple[Shape, ...]]]:
    """`num_scenes` training scenes as (requirements, caption, scene): a category drawn uniformly and a training
    caption of it, or (with probability `mixed_fraction`) a free-form caption; never a held-out one. The training
    data of every learned part of the world (UNet, CLIP, matcher) is drawn by this one loop."""
    held_out = {caption for captions in held_out_prompts().values() for caption in captions}
    by_category = training_captions()
    drawn = []
    while len(drawn) < num_scenes:
        if rng.random() < mixed_fraction:
            requirements = random_requirements(rng)
            caption = caption_of(requirements)
            if caption in held_out:
                continue
        else:
            options = by_category[CATEGORIES[rng.integers(len(CATEGORIES))]]
            caption = options[rng.integers(len(options))]
            requirements = parse(caption)
        drawn.append((requirements, caption, scene_for(requirements, rng)))
    return drawn
