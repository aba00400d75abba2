"""Scenes of coloured shapes on a plain background, drawn deterministically.

Every shape of size `r` covers the same area as a disc of radius `r` (a square of side `r * sqrt(pi)`, an upright
equilateral triangle of area `pi * r**2`), so size and shape are independent and the evaluator can read a size from
an area. Shapes in a scene never touch, so each is one connected component of its colour.
"""

import math
from dataclasses import dataclass

import numpy as np


IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
BACKGROUND = (245, 245, 240)
SIZES = ("small", "large")
# Radius ranges: a stated size, else one that depends on how many shapes share the canvas.
SIZE_RANGES = {"small": (5.0, 6.5), "large": (11.0, 13.0)}
COUNT_RANGES = {1: (7.0, 12.0), 2: (6.0, 10.0), 3: (5.0, 8.0), 4: (5.0, 7.0)}
# How far a relation's displacement must go along its axis, and beat the other axis, in pixels.
RELATION_MARGIN = 10.0
GAP = 3.0  # the least distance between the outlines' bounding circles

_TRIANGLE_SIDE = math.sqrt(4 * math.pi / math.sqrt(3))  # side of the equilateral triangle of area pi (r = 1)
_BOUNDING = {"circle": 1.0, "square": math.sqrt(math.pi / 2), "triangle": _TRIANGLE_SIDE / math.sqrt(3)}


@dataclass(frozen=True)
class Shape:
    """One shape: kind, colour name, centre (x right, y down, in pixels; the centroid) and size `r`."""

    kind: str
    color: str
    x: float
    y: float
    r: float

    @property
    def bounding_radius(self) -> float:
        return _BOUNDING[self.kind] * self.r


def shape_mask(kind: str, x: float, y: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (size, size) mask of one shape, sampled at pixel centres."""
    coords = np.arange(size) + 0.5
    px, py = np.meshgrid(coords - x, coords - y)
    if kind == "circle":
        return px**2 + py**2 <= r**2
    if kind == "square":
        half = r * math.sqrt(math.pi) / 2
        return (np.abs(px) <= half) & (np.abs(py) <= half)
    if kind == "triangle":
        side = r * _TRIANGLE_SIDE
        height = side * math.sqrt(3) / 2
        top, bottom = -2 * height / 3, height / 3  # the centroid is at the origin
        half_width = (py - top) / height * side / 2
        return (py >= top) & (py <= bottom) & (np.abs(px) <= half_width)
    raise ValueError(f"Unknown shape {kind!r}; known shapes: {list(SHAPES)}.")


def render(shapes: list[Shape] | tuple[Shape, ...], size: int = IMAGE_SIZE, supersampling: int = 1) -> np.ndarray:
    """Draw shapes on the background: uint8 array of shape (size, size, 3).

    Args:
        shapes: the scene.
        size: the canvas' side in pixels.
        supersampling: 1 samples each pixel at its centre (hard edges, exact colours: the training scenes); s > 1
            averages s x s samples per pixel (anti-aliased edges, like a decoder's).
    """
    fine = size * supersampling
    image = np.empty((fine, fine, 3), dtype=np.float32 if supersampling > 1 else np.uint8)
    image[:] = BACKGROUND
    for shape in shapes:
        s = supersampling
        image[shape_mask(shape.kind, shape.x * s, shape.y * s, shape.r * s, fine)] = COLORS[shape.color]
    if supersampling == 1:
        return image
    return image.reshape(size, supersampling, size, supersampling, 3).mean((1, 3)).round().astype(np.uint8)


def relation_holds(
    relation: str, first: tuple[float, float], second: tuple[float, float], margin: float, slack: float = 0.0
) -> bool:
    """Whether centre `first` is `relation` ("left of", "right of", "above", "below") centre `second`: the
    displacement along the relation's axis is at least `margin` and exceeds the displacement along the other axis
    by more than `slack`."""
    dx, dy = second[0] - first[0], second[1] - first[1]
    along, across = {
        "left of": (dx, dy),
        "right of": (-dx, dy),
        "above": (dy, dx),
        "below": (-dy, dx),
    }[relation]
    return along >= margin and along > abs(across) + slack


def place(
    kinds: list[str],
    colors: list[str],
    radii: list[float],
    rng: np.random.Generator,
    relation: str | None = None,
    size: int = IMAGE_SIZE,
    max_tries: int = 10_000,
) -> tuple[Shape, ...]:
    """Positions for the shapes, drawn uniformly by rejection: inside the canvas, not touching, and (with a
    relation) the first shape `relation` the second with a clear margin."""
    for _ in range(max_tries):
        shapes: list[Shape] = []
        for kind, color, r in zip(kinds, colors, radii, strict=True):
            bound = _BOUNDING[kind] * r + 1
            x, y = rng.uniform(bound, size - bound, size=2)
            candidate = Shape(kind, color, float(x), float(y), float(r))
            if any(
                math.hypot(candidate.x - s.x, candidate.y - s.y) < candidate.bounding_radius + s.bounding_radius + GAP
                for s in shapes
            ):
                break
            shapes.append(candidate)
        else:
            if relation is None or relation_holds(
                relation, (shapes[0].x, shapes[0].y), (shapes[1].x, shapes[1].y), RELATION_MARGIN + 2, slack=2.0
            ):
                return tuple(shapes)
    raise RuntimeError(f"Could not place {kinds} in {max_tries} tries; use fewer or smaller shapes.")
