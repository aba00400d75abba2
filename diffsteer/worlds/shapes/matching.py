"""Training data for the `shapes-itm` reward: rendered scenes with captions that are true of them, one-edit hard
negatives that are false of them, and degradations that imitate the generator's look.

Every label comes from the scene itself: a caption is true or false of a scene's own shapes by `judge` on
`scene_objects` (the caption's semantics on exact objects). The evaluator's perception (`detect`, the part that
judges generated images) never labels anything here, so the reward cannot learn the evaluator's mistakes.
"""

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from diffsteer.worlds.shapes.captions import (
    RELATIONS,
    ObjectRequirement,
    Requirements,
    caption_of,
    draw_scenes,
    held_out_prompts,
    parse,
)
from diffsteer.worlds.shapes.evaluator import (
    CIRCLE_MAX_EXPONENT,
    DetectedObject,
    judge,
    scene_objects,
    superellipse_coverage,
    triangle_coverage,
)
from diffsteer.worlds.shapes.scenes import (
    BACKGROUND,
    COLORS,
    IMAGE_SIZE,
    RELATION_MARGIN,
    SHAPES,
    SIZE_RANGES,
    Shape,
    relation_holds,
)
from diffsteer.worlds.shapes.scenes import render as render_scene


EDITS = ("color", "shape", "count", "relation", "size")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
CORNER_TINTS = ((-56, -41, -20), (-5, -30, -47), (-7, -5, -20), (-18, -20, -18))  # the shipped decoder's, BR TR BL TL
# Superellipse exponents |x|^n + |y|^n <= a^n of rounded shapes, each range well inside its kind's side of the
# world's boundary (`evaluator.CIRCLE_MAX_EXPONENT`, 2.3): a near-disc is still a circle, a rounded square a square.
ROUNDED_EXPONENTS = {"circle": (2.0, CIRCLE_MAX_EXPONENT - 0.15), "square": (CIRCLE_MAX_EXPONENT + 0.3, 12.0)}


@dataclass(frozen=True)
class MatchingExample:
    """One scene's image and the captions it is trained with.

    Attributes:
        image: uint8 (64, 64, 3), possibly degraded.
        positives: captions true of the scene (its own caption first, then ones with colour or size words dropped).
        negatives: captions false of it: one-edit hard negatives, then another scene's caption.
    """

    image: np.ndarray
    positives: tuple[str, ...]
    negatives: tuple[str, ...]


def _clear_size(obj: DetectedObject) -> str | None:
    """The size word a scene shape clearly has (its radius inside a stated size's range), else None."""
    for size, (low, high) in SIZE_RANGES.items():
        if low <= obj.r <= high:
            return size
    return None


def edit(
    requirements: Requirements, objects: list[DetectedObject], kind: str, rng: np.random.Generator
) -> Requirements:
    """One `kind` of edit (see `EDITS`) of `requirements`, chosen at random; it may happen to stay true."""
    items = list(requirements.objects)
    index = int(rng.integers(len(items)))
    target = items[index]
    if kind == "color":
        items[index] = replace(target, color=str(rng.choice([c for c in COLORS if c != target.color])))
    elif kind == "shape":
        items[index] = replace(target, shape=str(rng.choice([s for s in SHAPES if s != target.shape])))
    elif kind == "count":
        if len(items) > 1 and (len(items) == 4 or rng.random() < 0.5):
            del items[index]
        else:
            items.insert(index, target)
        return Requirements(tuple(items))
    elif kind == "relation":
        if requirements.relation:
            if rng.random() < 0.5:
                return Requirements(requirements.objects, OPPOSITE[requirements.relation])
            return Requirements(requirements.objects[::-1], requirements.relation)
        if len(objects) == 2 and len(set(requirements.objects)) == 2:
            # A relation that clearly fails: the opposite of one that holds with the scenes' own margin.
            first, second = ((obj.x, obj.y) for obj in _assigned(requirements, objects))
            holding = [r for r in RELATIONS if relation_holds(r, first, second, RELATION_MARGIN)]
            if holding:
                return Requirements(requirements.objects, OPPOSITE[str(rng.choice(holding))])
        return requirements
    elif kind == "size":
        if len(items) == 1 and (size := _clear_size(objects[0])):
            items[0] = replace(target, size=next(s for s in SIZE_RANGES if s != size))
    else:
        raise ValueError(f"Unknown edit {kind!r}; known: {list(EDITS)}.")
    return Requirements(tuple(items), requirements.relation)


def _assigned(requirements: Requirements, objects: list[DetectedObject]) -> tuple[DetectedObject, ...]:
    """The scene objects in the order of the requirements they satisfy (the first assignment that matches shapes)."""
    remaining = list(objects)
    chosen = []
    for want in requirements.objects:
        match = next(obj for obj in remaining if obj.shape == want.shape)
        remaining.remove(match)
        chosen.append(match)
    return tuple(chosen)


def _expressible(requirements: Requirements) -> str | None:
    """The grammar's caption for requirements, or None where the grammar cannot say it."""
    try:
        caption = caption_of(requirements)
        parse(caption)  # raises where the grammar cannot read its own caption back (e.g. too many shapes)
    except (KeyError, ValueError):
        return None
    return caption


def hard_negatives(
    requirements: Requirements, objects: list[DetectedObject], rng: np.random.Generator, forbidden: set[str], k: int
) -> list[str]:
    """Up to `k` distinct one-edit captions that are false of the scene (and not in `forbidden`)."""
    found: list[str] = []
    for _ in range(4 * k):
        edited = edit(requirements, objects, str(rng.choice(EDITS)), rng)
        caption = _expressible(edited)
        if caption and caption not in forbidden and caption not in found and not judge(edited, objects).correct:
            found.append(caption)
            if len(found) == k:
                break
    return found


def looser_positives(requirements: Requirements, objects: list[DetectedObject], forbidden: set[str]) -> list[str]:
    """Captions true of the scene with the colour or size words dropped ("a red circle" -> "a circle")."""
    looser = [
        Requirements(
            tuple(ObjectRequirement(o.shape, None, o.size) for o in requirements.objects), requirements.relation
        ),
        Requirements(tuple(ObjectRequirement(o.shape, o.color) for o in requirements.objects), requirements.relation),
    ]
    captions = []
    for candidate in looser:
        caption = _expressible(candidate)
        if caption and caption not in forbidden and caption not in captions and judge(candidate, objects).correct:
            captions.append(caption)
    return captions


def render_rounded(scene: tuple[Shape, ...], rng: np.random.Generator) -> np.ndarray:
    """The scene anti-aliased, with its circles and squares drawn as superellipses of the same area: circles with
    an exponent drawn log-uniformly from `ROUNDED_EXPONENTS["circle"]`, squares from `ROUNDED_EXPONENTS["square"]`
    (corners rounded as the generator rounds them). Still the same scene by the world's definition of the kinds.
    Float (64, 64, 3)."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    image[:] = BACKGROUND
    for shape in scene:
        area = math.pi * shape.r**2  # every kind of size r has the disc's area (scenes.py)
        if shape.kind == "triangle":
            cover = triangle_coverage(shape.x, shape.y, area)
        else:
            low, high = ROUNDED_EXPONENTS[shape.kind]
            exponent = math.exp(rng.uniform(math.log(low), math.log(high)))
            cover = superellipse_coverage(shape.x, shape.y, area, exponent)
        image = image * (1 - cover[..., None]) + np.array(COLORS[shape.color], dtype=np.float32) * cover[..., None]
    return image


def degrade(scene: tuple[Shape, ...], rng: np.random.Generator, rounded: bool = False) -> np.ndarray:
    """The scene drawn as a decoder might: anti-aliased, blurred up to 1.2 pixels, with noise, a small colour
    shift and sometimes a corner tint; with `rounded`, its circles and squares drawn as rounded shapes
    (`render_rounded`). None of these changes what the scene shows."""
    image = render_rounded(scene, rng) if rounded else render_scene(scene, supersampling=4).astype(np.float32)
    # The colour shift goes on before the blur, so that it does not paint a halo around each shape.
    image = image + rng.normal(0, 8, 3)[None, None] * (image != np.array(BACKGROUND)).any(-1, keepdims=True)
    return decoder_finish(image, rng)


def decoder_finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The last touches of a decoder's look on a float drawing: a blur up to 1.2 pixels, sometimes the corner tint,
    and pixel noise; uint8 out."""
    blur = float(rng.uniform(0.0, 1.2))
    if blur > 0.2:
        image = ndimage.gaussian_filter(image, (blur, blur, 0))
    if rng.random() < 0.5:
        for (row, column), tint in zip(((-1, -1), (0, -1), (-1, 0), (0, 0)), CORNER_TINTS, strict=True):
            image[row, column] += np.array(tint) * rng.uniform(0, 1)
    image = image + rng.normal(0, float(rng.uniform(0, 6)), image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def matching_dataset(
    num_scenes: int,
    mixed_fraction: float,
    seed: int,
    degraded_fraction: float = 0.6,
    hard: int = 3,
    rounded_fraction: float = 0.0,
) -> list[MatchingExample]:
    """`num_scenes` examples: scenes drawn as in the UNet's data (a training caption of a random category, or a
    free-form one), a share drawn degraded (and `rounded_fraction` of those with rounded shapes, see `degrade`),
    each with its true captions and false ones. No held-out caption appears, as a positive or as a negative."""
    rng = np.random.default_rng(seed)
    held_out = {caption for captions in held_out_prompts().values() for caption in captions}
    drawn = draw_scenes(num_scenes, mixed_fraction, rng)
    captions = [caption for _, caption, _ in drawn]
    examples = []
    for index, (requirements, caption, scene) in enumerate(drawn):
        objects = scene_objects(scene)
        if rng.random() < degraded_fraction:
            # Only a positive `rounded_fraction` draws here, so that the data of recipes without it stay as they were.
            rounded = rounded_fraction > 0 and rng.random() < rounded_fraction
            image = degrade(scene, rng, rounded)
        else:
            image = render_scene(scene)
        negatives = hard_negatives(requirements, objects, rng, held_out, hard)
        other = captions[(index + 1 + int(rng.integers(num_scenes - 1))) % num_scenes]
        if other not in negatives and not judge(parse(other), objects).correct:
            negatives.append(other)
        positives = (caption, *looser_positives(requirements, objects, held_out | {caption}))
        examples.append(MatchingExample(image, positives, tuple(negatives)))
    return examples


__all__ = [
    "EDITS",
    "ROUNDED_EXPONENTS",
    "MatchingExample",
    "decoder_finish",
    "degrade",
    "edit",
    "hard_negatives",
    "matching_dataset",
    "render_rounded",
]
