"""The shapes world's evaluator (a GenEval in miniature): finds the shapes in an image and checks a caption.

Shapes are the connected components of the foreground (pixels far from the background colour), so a shape drawn in
a blend of two palette colours stays one shape; its colour is the palette colour most of its inner pixels are
nearest to. Its kind is the best fit among templates of the component's area and centroid:

- **Hard-edged images** (the renderer's: no pixel on a shape's outline is a mixture) hold exact shapes, so the
  templates are the ideal circle, square and triangle drawn the same way (sampled at pixel centres).
- **Soft-edged images** (the decoder's) are compared as coverage maps, both image and templates blurred by one
  pixel, against the upright triangle and the superellipses |x|^n + |y|^n <= a^n (n = 2 is a disc, n -> infinity a
  square). The shape is a triangle when the triangle fits best; a square when the best superellipse has
  n > `CIRCLE_MAX_EXPONENT` (2.3); a circle when it has n <= 2.3 and overlaps by at least `DISC_MIN_IOU` (0.9); and
  otherwise (a roundish shape that is no disc: an arch, a bell, a teardrop) of no kind the grammar names
  (`"other"`), which still counts as an object.

So a rounded square is a square: one whose corners have a radius of half its half-side fits n = 4, and only a corner
radius of about 0.9 of the half-side fits as low as 2.4. The boundaries were set on the `develop` half of the by-eye
label set (`tests/fixtures/shapes_labels`) and on rendered imitations with a known truth: anti-aliased, blurred,
noisy discs fit n <= 2.3 with overlap >= 0.907. A caption is correct when the image holds exactly its shapes, with
its colours, sizes and relation.
"""

import itertools
import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch
from scipy import ndimage

from diffsteer.worlds.shapes.captions import Requirements, parse
from diffsteer.worlds.shapes.scenes import BACKGROUND, COLORS, IMAGE_SIZE, Shape, relation_holds, shape_mask


FOREGROUND_DISTANCE = 90.0  # RGB distance from the background beyond which a pixel belongs to a shape
MIN_AREA = 25  # pixels a component keeps after a 1-pixel opening to count as a shape (a small shape has ~80)
SIZE_THRESHOLD = 8.75  # equal-area radius between "small" (<= 6.5 when drawn) and "large" (>= 11)
POSITION_MARGIN = 6.0  # pixels a relation's displacement must reach (drawn scenes have >= 12)
MAX_OBJECTS = 8
EXPONENTS = (2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.8, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 12.0, 20.0)
CIRCLE_MAX_EXPONENT = 2.3
DISC_MIN_IOU = 0.9
OTHER = "other"  # the kind of a shape that is no circle, square or triangle
SUPERSAMPLING = 4  # soft templates are drawn on a 4x finer grid and averaged, so they are not pixelated
EDGE_BLUR = 1.0  # pixels of Gaussian blur on soft images and templates, so the decoder's own blur matters little
CROP_MARGIN = 5  # pixels around a soft shape's coverage map kept for its fit
SOFT_EDGE_SHARE = 0.2  # share of outline pixels with a mixed colour above which an image is soft-edged

_BACKGROUND = np.array(BACKGROUND, dtype=np.float32)
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_NAMES = tuple(COLORS)


@dataclass(frozen=True)
class DetectedObject:
    """A shape found in an image: kind (`"circle"`, `"square"`, `"triangle"` or `"other"`), colour, centroid (x
    right, y down), equal-area radius, the overlap (IoU) with the fitted shape of its kind, and the best
    superellipse exponent on a soft-edged image (2 for a disc, large for a square; on a hard-edged one 2 for a
    circle, infinity for a square and nan for a triangle)."""

    shape: str
    color: str
    x: float
    y: float
    r: float
    iou: float
    exponent: float = math.nan

    @property
    def size(self) -> str:
        return "small" if self.r < SIZE_THRESHOLD else "large"


@dataclass
class Verdict:
    """The evaluator's judgement of one image against one caption.

    Attributes:
        correct: every check passed (exactly the caption's shapes, with its attributes and relation).
        checks: per requirement: `count` always, `shape` always, `color`, `size` and `position` when the caption
            states them. `shape` asks whether some assignment of detected to required objects matches every shape;
            `color`, `size` and `position` whether one matches the shapes and that attribute.
        objects: what was detected.
    """

    correct: bool
    checks: dict[str, bool] = field(default_factory=dict)
    objects: list[DetectedObject] = field(default_factory=list)


def _as_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 from a uint8 HWC array or a float CHW tensor in [0, 1], resized to the world's size."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ValueError(f"image must be a (3, H, W) tensor in [0, 1], got shape {tuple(tensor.shape)}.")
        if tensor.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            tensor = torch.nn.functional.interpolate(tensor[None], (IMAGE_SIZE, IMAGE_SIZE), mode="area")[0]
        return (tensor.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be a (H, W, 3) uint8 array, got {array.dtype} of shape {array.shape}.")
    if array.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        return _as_uint8(torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255)
    return array


@cache
def _fine_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    s = SUPERSAMPLING
    return np.meshgrid((np.arange(width * s) + 0.5) / s, (np.arange(height * s) + 0.5) / s)


def _coverage(inside: np.ndarray) -> np.ndarray:
    """Each pixel's covered fraction of a mask drawn on the fine grid."""
    s = SUPERSAMPLING
    return inside.reshape(inside.shape[0] // s, s, inside.shape[1] // s, s).mean((1, 3))


def superellipse_coverage(
    x: float, y: float, area: float, exponent: float, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)
) -> np.ndarray:
    """Pixel coverage, on a (height, width) canvas, of the superellipse |dx|^n + |dy|^n <= a^n of the given area,
    centred at (x, y)."""
    n = exponent
    a = math.sqrt(area * math.gamma(1 + 2 / n) / (4 * math.gamma(1 + 1 / n) ** 2))
    px, py = _fine_grid(*size)
    return _coverage((np.abs(px - x) / a) ** n + (np.abs(py - y) / a) ** n <= 1)


def triangle_coverage(x: float, y: float, area: float, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """Pixel coverage, on a (height, width) canvas, of the upright equilateral triangle of the given area with its
    centroid at (x, y)."""
    side = math.sqrt(4 * area / math.sqrt(3))
    height = side * math.sqrt(3) / 2
    px, py = _fine_grid(*size)
    dy = py - y + 2 * height / 3  # from the apex down
    return _coverage((dy >= 0) & (dy <= height) & (np.abs(px - x) <= dy / height * side / 2))


def _soft_iou(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.minimum(first, second).sum() / np.maximum(first, second).sum())


def _classify_hard(component: np.ndarray) -> tuple[str, float, float]:
    """(kind, IoU, exponent) of a hard-edged component: the ideal circle, square or triangle that overlaps most."""
    ys, xs = np.nonzero(component)
    x, y, r = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, math.sqrt(len(xs) / math.pi)
    fits = {}
    for kind in ("circle", "square", "triangle"):
        ideal = shape_mask(kind, x, y, r, component.shape[0])
        fits[kind] = float((ideal & component).sum() / (ideal | component).sum())
    kind = max(fits, key=fits.__getitem__)
    return kind, fits[kind], {"circle": 2.0, "square": math.inf, "triangle": math.nan}[kind]


def _classify_soft(alpha: np.ndarray) -> tuple[str, float, float]:
    """(kind, IoU, best superellipse exponent) of a soft-edged shape given as its coverage map."""
    # Fit on the coverage map's bounding box plus a margin, 8 pixels beyond the component in all (enough for the
    # blur and for the templates of shapes up to the world's largest): 89 ms to 33 ms per generated image.
    rows, columns = np.nonzero(alpha)
    top, left = max(rows.min() - CROP_MARGIN, 0), max(columns.min() - CROP_MARGIN, 0)
    alpha = alpha[top : rows.max() + CROP_MARGIN + 1, left : columns.max() + CROP_MARGIN + 1]
    ys, xs = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]]
    area = float(alpha.sum())
    x, y = float((alpha * (xs + 0.5)).sum() / area), float((alpha * (ys + 0.5)).sum() / area)
    image = ndimage.gaussian_filter(alpha, EDGE_BLUR, mode="constant")

    def fit(template: np.ndarray) -> float:
        return _soft_iou(ndimage.gaussian_filter(template, EDGE_BLUR, mode="constant"), image)

    fits = [fit(superellipse_coverage(x, y, area, n, alpha.shape)) for n in EXPONENTS]
    best = int(np.argmax(fits))
    exponent, iou = EXPONENTS[best], fits[best]
    triangle = fit(triangle_coverage(x, y, area, alpha.shape))
    if triangle > iou:
        return "triangle", triangle, exponent
    if exponent > CIRCLE_MAX_EXPONENT:
        return "square", iou, exponent
    return ("circle" if iou >= DISC_MIN_IOU else OTHER), iou, exponent


def _color(pixels: np.ndarray, component: np.ndarray) -> str:
    """The palette colour most of the component's inner pixels are nearest to (all its pixels if it is thin)."""
    inner = ndimage.binary_erosion(component)
    chosen = pixels[inner if inner.sum() >= 10 else component]
    nearest = np.linalg.norm(chosen[:, None, :] - _PALETTE[None], axis=-1).argmin(1)
    return _NAMES[int(np.bincount(nearest, minlength=len(_NAMES)).argmax())]


def _coverage_map(pixels: np.ndarray, component: np.ndarray, others: np.ndarray) -> np.ndarray:
    """How much of each pixel near the component is the component's colour (0 background, 1 the shape's mean
    inner colour), with other shapes' pixels cut out."""
    inner = ndimage.binary_erosion(component)
    colour = pixels[inner if inner.sum() >= 10 else component].mean(0) - _BACKGROUND
    near = ndimage.binary_dilation(component, iterations=3) & ~others
    return np.clip((pixels - _BACKGROUND) @ colour / (colour @ colour), 0, 1) * near


def detect(image: np.ndarray | torch.Tensor) -> list[DetectedObject]:
    """The shapes in an image, sorted by position (top to bottom, left to right)."""
    pixels = _as_uint8(image).astype(np.float32)
    foreground = np.linalg.norm(pixels - _BACKGROUND, axis=-1) > FOREGROUND_DISTANCE
    components, count = ndimage.label(foreground)
    found = []
    for component_id in range(1, count + 1):
        component = components == component_id
        if ndimage.binary_opening(component).sum() < MIN_AREA:
            continue  # an edge sliver, speckle or corner tint, not a shape
        alpha = _coverage_map(pixels, component, foreground & ~component)
        outline = ndimage.binary_dilation(component) & ~ndimage.binary_erosion(component)
        mixed = float(((alpha > 0.1) & (alpha < 0.9))[outline].mean())
        shape, iou, exponent = _classify_soft(alpha) if mixed > SOFT_EDGE_SHARE else _classify_hard(component)
        ys, xs = np.nonzero(component)
        x, y, r = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, math.sqrt(len(xs) / math.pi)
        found.append(DetectedObject(shape, _color(pixels, component), x, y, r, iou, exponent))
    return sorted(found, key=lambda obj: (round(obj.y), obj.x))


def _matches(required: Requirements, objects: tuple[DetectedObject, ...], attributes: tuple[str, ...]) -> bool:
    for want, got in zip(required.objects, objects, strict=True):
        if "shape" in attributes and want.shape != got.shape:
            return False
        if "color" in attributes and want.color is not None and want.color != got.color:
            return False
        if "size" in attributes and want.size is not None and want.size != got.size:
            return False
    if "position" in attributes and required.relation is not None:
        first, second = objects[0], objects[1]
        return relation_holds(required.relation, (first.x, first.y), (second.x, second.y), POSITION_MARGIN)
    return True


def evaluate(image: np.ndarray | torch.Tensor, caption: str | Requirements) -> Verdict:
    """Judge an image against a caption of the grammar.

    Args:
        image: (H, W, 3) uint8 array or (3, H, W) float tensor in [0, 1]; resized to 64x64 if needed.
        caption: a caption (parsed with `diffsteer.worlds.shapes.parse`) or its requirements.
    """
    required = parse(caption) if isinstance(caption, str) else caption
    return judge(required, detect(image))


def judge(required: Requirements, objects: list[DetectedObject]) -> Verdict:
    """The caption's checks on a list of objects: those `detect` found, or a rendered scene's own shapes (see
    `scene_objects`), where the verdict is the caption's truth by construction."""
    attributes = ["shape"]
    if any(obj.color for obj in required.objects):
        attributes.append("color")
    if any(obj.size for obj in required.objects):
        attributes.append("size")
    if required.relation:
        attributes.append("position")
    count_ok = len(objects) == len(required.objects)
    checks = {"count": count_ok}
    assignments = list(itertools.permutations(objects, len(required.objects))) if len(objects) <= MAX_OBJECTS else []
    for attribute in attributes:
        # Colours, sizes and relations belong to objects identified by their shapes (as GenEval's colour attribution
        # and position checks identify objects by class): a red square and a blue circle fail "a blue square".
        judged = ("shape", attribute)
        checks[attribute] = any(_matches(required, chosen, judged) for chosen in assignments)
    correct = count_ok and any(_matches(required, chosen, tuple(attributes)) for chosen in assignments)
    return Verdict(correct, checks, objects)


def scene_objects(scene: tuple[Shape, ...] | list[Shape]) -> list[DetectedObject]:
    """A rendered scene's shapes as exact detections (what a perfect `detect` would return)."""
    objects = [DetectedObject(s.kind, s.color, s.x, s.y, s.r, 1.0) for s in scene]
    return sorted(objects, key=lambda obj: (round(obj.y), obj.x))
