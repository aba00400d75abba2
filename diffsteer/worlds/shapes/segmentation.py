"""Training data for the `shapes-detect` reward: rendered scenes with a label per pixel (which kind of shape and which
colour covers it), drawn as the renderer draws them or degraded as a decoder draws them.

Every label comes from the scene's own geometry (a pixel belongs to a shape when the shape covers at least half of
it), never from the evaluator's perception (`detect`), so the reward cannot learn the evaluator's mistakes.
"""

import math
from dataclasses import dataclass

import numpy as np

from diffsteer.worlds.shapes.captions import draw_scenes
from diffsteer.worlds.shapes.evaluator import superellipse_coverage, triangle_coverage
from diffsteer.worlds.shapes.matching import ROUNDED_EXPONENTS, decoder_finish
from diffsteer.worlds.shapes.scenes import BACKGROUND, COLORS, IMAGE_SIZE, SHAPES, Shape, shape_mask
from diffsteer.worlds.shapes.scenes import render as render_scene


KINDS = ("background", *SHAPES)  # the kind head's classes; index 0 is the background
PALETTE = tuple(COLORS)  # the colour head's classes (read on shape pixels only)
MAX_COLOR_BLEND = 0.25  # how far a degraded shape's colour may move towards another palette colour (stays nearest)


@dataclass(frozen=True)
class SegmentationExample:
    """One scene drawn, with its labels.

    Attributes:
        image: uint8 (64, 64, 3).
        kinds: int64 (64, 64), an index of `KINDS` per pixel.
        colors: int64 (64, 64), an index of `PALETTE` per shape pixel, -1 on the background.
    """

    image: np.ndarray
    kinds: np.ndarray
    colors: np.ndarray


def hard_labels(scene: tuple[Shape, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel kind and colour labels of a scene drawn by `scenes.render` (pixel centres, hard edges)."""
    kinds = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.int64)
    colors = np.full((IMAGE_SIZE, IMAGE_SIZE), -1, dtype=np.int64)
    for shape in scene:
        inside = shape_mask(shape.kind, shape.x, shape.y, shape.r)
        kinds[inside], colors[inside] = KINDS.index(shape.kind), PALETTE.index(shape.color)
    return kinds, colors


def soft_drawing(scene: tuple[Shape, ...], rng: np.random.Generator) -> SegmentationExample:
    """The scene as a decoder might draw it, with its labels: circles and squares as superellipses of the shape's area
    (exponents from `matching.ROUNDED_EXPONENTS`, so still the same kinds by the world's definition), each shape's
    colour shifted and blended a little towards another palette colour, blurred up to 1.2 pixels, noised, and
    sometimes with the decoder's corner tint."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    image[:] = BACKGROUND
    kinds = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.int64)
    colors = np.full((IMAGE_SIZE, IMAGE_SIZE), -1, dtype=np.int64)
    for shape in scene:
        area = math.pi * shape.r**2
        if shape.kind == "triangle":
            cover = triangle_coverage(shape.x, shape.y, area)
        else:
            low, high = ROUNDED_EXPONENTS[shape.kind]
            cover = superellipse_coverage(shape.x, shape.y, area, math.exp(rng.uniform(math.log(low), math.log(high))))
        other = COLORS[str(rng.choice([c for c in PALETTE if c != shape.color]))]
        blend = rng.uniform(0, MAX_COLOR_BLEND)
        color = (1 - blend) * np.array(COLORS[shape.color]) + blend * np.array(other) + rng.normal(0, 8, 3)
        image = image * (1 - cover[..., None]) + color.astype(np.float32) * cover[..., None]
        inside = cover >= 0.5
        kinds[inside], colors[inside] = KINDS.index(shape.kind), PALETTE.index(shape.color)
    return SegmentationExample(decoder_finish(image, rng), kinds, colors)


def segmentation_dataset(
    num_scenes: int, mixed_fraction: float, seed: int, degraded_fraction: float = 0.7
) -> list[SegmentationExample]:
    """`num_scenes` labelled drawings of scenes drawn as in the UNet's data (`captions.draw_scenes`: training captions
    of every category and free-form ones of one to four shapes), `degraded_fraction` of them by `soft_drawing`."""
    rng = np.random.default_rng(seed)
    examples = []
    for _, _, scene in draw_scenes(num_scenes, mixed_fraction, rng):
        if rng.random() < degraded_fraction:
            examples.append(soft_drawing(scene, rng))
        else:
            examples.append(SegmentationExample(render_scene(scene), *hard_labels(scene)))
    return examples


__all__ = ["KINDS", "PALETTE", "SegmentationExample", "hard_labels", "segmentation_dataset", "soft_drawing"]
