"""The shapes world's evaluator (a GenEval in miniature): finds the shapes in an image and checks a caption.

Colour segmentation (nearest palette colour, with a distance cut-off so that blurred edges stay background), connected
components per colour, and shape classification by the best overlap with the ideal circle, square and triangle of the
component's area and centroid. A caption is correct when the image holds exactly its shapes, with its colours, sizes
and relation.
"""

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from diffsteer.worlds.shapes.captions import Requirements, parse
from diffsteer.worlds.shapes.scenes import BACKGROUND, COLORS, IMAGE_SIZE, SHAPES, relation_holds, shape_mask


COLOR_TOLERANCE = 80.0  # RGB distance beyond which a pixel is no palette colour (blurred edges, mixtures)
MIN_AREA = 25  # pixels a component keeps after a 1-pixel opening to count as a shape (a small shape has ~80)
SIZE_THRESHOLD = 8.75  # equal-area radius between "small" (<= 6.5 when drawn) and "large" (>= 11)
POSITION_MARGIN = 6.0  # pixels a relation's displacement must reach (drawn scenes have >= 12)
MAX_OBJECTS = 8

_PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)
_NAMES = ("background", *COLORS)


@dataclass(frozen=True)
class DetectedObject:
    """A shape found in an image: kind, colour, centroid (x right, y down), equal-area radius, and the overlap
    (IoU) with the ideal shape of its kind."""

    shape: str
    color: str
    x: float
    y: float
    r: float
    iou: float

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


def _classify(component: np.ndarray) -> tuple[str, float, float, float, float]:
    """(shape, x, y, r, iou) of one component: the ideal shape of the same area and centroid that overlaps most."""
    ys, xs = np.nonzero(component)
    x, y = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
    r = math.sqrt(len(xs) / math.pi)
    best, best_iou = SHAPES[0], -1.0
    for kind in SHAPES:
        ideal = shape_mask(kind, x, y, r, component.shape[0])
        iou = float((ideal & component).sum() / (ideal | component).sum())
        if iou > best_iou:
            best, best_iou = kind, iou
    return best, x, y, r, best_iou


def detect(image: np.ndarray | torch.Tensor) -> list[DetectedObject]:
    """The shapes in an image, sorted by position (top to bottom, left to right)."""
    pixels = _as_uint8(image).astype(np.float32)
    distances = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)
    labels = distances.argmin(-1)
    labels[distances.min(-1) > COLOR_TOLERANCE] = 0
    found = []
    for index, color in enumerate(_NAMES[1:], start=1):
        components, count = ndimage.label(labels == index)
        for component_id in range(1, count + 1):
            component = components == component_id
            if ndimage.binary_opening(component).sum() < MIN_AREA:
                continue  # an edge sliver or speckle, not a shape
            shape, x, y, r, iou = _classify(component)
            found.append(DetectedObject(shape, color, x, y, r, iou))
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
    objects = detect(image)
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
