"""`shapes-detect`: a detector-based reward for the shapes world, built the way detector-and-question rewards are
(GenEval's object checks, TIFA's per-requirement questions): a learned perception answers each requirement of the
caption, and the answers' probabilities multiply.

The perception is a small convolutional segmenter (`ShapesSegmenter`) that gives every pixel a probability of each
kind (background, circle, square, triangle) and each palette colour. It is trained (`python -m
diffsteer.worlds.shapes train --stage detect`) on rendered scenes, some drawn soft as a decoder draws them, with
labels from the scenes' own geometry (`diffsteer.worlds.shapes.segmentation`): the evaluator never labels anything.

The caption is read by the world's grammar (`parse`), and each requirement becomes a probability (`caption_log_prob`):
the objects are the connected regions where a shape is more likely than the background; each required object is
matched to one region (the best assignment), and scores the mean probability of its kind, its colour and its size
there; a relation scores a soft margin on the regions' centroids; a region no requirement claims, or a requirement
no region answers, scores the probability that it is not there. The reward is the log of the product, in nats (at
most 0). Gradients reach the image through the probabilities, with the regions held fixed.
"""

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn


if TYPE_CHECKING:
    from diffsteer.worlds.shapes.captions import ObjectRequirement, Requirements

from diffsteer.rewards.base import Reward
from diffsteer.rewards.registry import register
from diffsteer.rewards.shapes import shipped_weights
from diffsteer.rewards.transforms import resize_center_crop


WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NUM_KINDS = 4  # background, circle, square, triangle (`segmentation.KINDS`)
NUM_COLORS = 6  # `segmentation.PALETTE`
LOG_FLOOR = math.log(1e-3)  # the least log-probability one requirement can score, so one miss cannot drown the rest
MIN_REGION = 20  # pixels a region needs to be an object (a small drawn shape has about 80)
MAX_REGIONS = 8  # regions matched against the requirements (the largest); the rest count as extra objects
SIZE_THRESHOLD = 8.75  # equal-area radius between "small" (<= 6.5 when drawn) and "large" (>= 11)
SIZE_SOFTNESS = 0.75  # pixels of radius over which "large" goes from 27% to 73% likely
RELATION_MARGIN = 6.0  # pixels a relation's displacement must reach, as the world's judge asks
RELATION_SOFTNESS = 2.0  # pixels over which a relation's margin goes from 27% to 73% likely


@dataclass(frozen=True)
class SegmenterConfig:
    """The segmenter's shape (stored as `config.json` next to the weights).

    Attributes:
        image_size: side of the input image.
        widths: channels at full resolution and at each halving.
    """

    image_size: int = 64
    widths: tuple[int, ...] = (16, 32, 64, 64)


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(8, width),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(8, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x + self.body(x))


class ShapesSegmenter(nn.Module):
    """A small U-Net: per-pixel logits of each kind (`NUM_KINDS`, background first) and of each palette colour.

    Args:
        config: the shape.
    """

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        widths = list(config.widths)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1), _Residual(widths[0]))
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(wide, wider, 3, stride=2, padding=1), _Residual(wider))
            for wide, wider in itertools.pairwise(widths)
        )
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(wider + wide, wide, 3, padding=1), _Residual(wide))
            for wide, wider in reversed(list(itertools.pairwise(widths)))
        )
        self.head = nn.Conv2d(widths[0], NUM_KINDS + NUM_COLORS, 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(kind logits (B, 4, S, S), colour logits (B, 6, S, S)) for images in [-1, 1] of shape (B, 3, S, S)."""
        x = self.stem(pixels)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up in self.ups:
            skip = skips.pop()
            x = up(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        logits = self.head(x)
        return logits[:, :NUM_KINDS], logits[:, NUM_KINDS:]


def segmentation_loss(
    model: ShapesSegmenter, pixels: torch.Tensor, kinds: torch.Tensor, colors: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the kind of every pixel plus that of the colour of every shape pixel (colour labels -1 on
    the background are ignored)."""
    kind_logits, color_logits = model(pixels)
    return F.cross_entropy(kind_logits, kinds) + F.cross_entropy(color_logits, colors, ignore_index=-1)


def save_segmenter(model: ShapesSegmenter, directory: str | os.PathLike) -> None:
    """Weights (safetensors, half precision; loading casts back) and `config.json`, in one folder `ShapesDetect`
    loads."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=1) + "\n")


def load_segmenter(directory: str | os.PathLike) -> ShapesSegmenter:
    """The segmenter `save_segmenter` wrote to `directory`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    model = ShapesSegmenter(SegmenterConfig(config["image_size"], tuple(config["widths"])))
    model.load_state_dict({k: v.float() for k, v in load_file(directory / WEIGHTS_FILE).items()})
    return model


@dataclass
class Region:
    """One connected region where a shape is more likely than the background, with differentiable summaries.

    Attributes:
        kind: mean P(kind | shape) over the region, weighted by P(shape): (3,) for circle, square, triangle.
        color: mean P(colour) likewise: (6,).
        x, y: the centroid, weighted likewise (pixels; x right, y down).
        radius: the equal-area radius of the region's expected shape pixels.
        presence: the probability that the region is an object (its mean P(shape), less for tiny regions).
    """

    kind: torch.Tensor
    color: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    radius: torch.Tensor
    presence: torch.Tensor


def regions(kind_probs: torch.Tensor, color_probs: torch.Tensor) -> list[Region]:
    """The regions of one image's probability maps (kind (4, H, W), colour (6, H, W)), largest first.

    The regions themselves are found without gradients (connected components of P(shape) > 0.5); their summaries
    carry the gradients of the probabilities.
    """
    shape = 1 - kind_probs[0]
    given_shape = kind_probs[1:] / shape.clamp_min(1e-6)
    labelled, count = ndimage.label((shape > 0.5).detach().cpu().numpy())
    sizes = ndimage.sum_labels(np.ones_like(labelled), labelled, range(1, count + 1)) if count else np.zeros(0)
    height, width = shape.shape
    ys = torch.arange(height, dtype=shape.dtype, device=shape.device)[:, None] + 0.5
    xs = torch.arange(width, dtype=shape.dtype, device=shape.device)[None, :] + 0.5
    found = []
    for index in np.argsort(-sizes, kind="stable"):
        pixels = int(sizes[index])
        if pixels < MIN_REGION:
            break
        inside = torch.from_numpy(labelled == index + 1).to(shape.device)
        weight = shape * inside
        total = weight.sum()
        found.append(
            Region(
                kind=(weight * given_shape).sum((1, 2)) / total,
                color=(weight * color_probs).sum((1, 2)) / total,
                x=(weight * xs).sum() / total,
                y=(weight * ys).sum() / total,
                radius=torch.sqrt(total / math.pi),
                presence=total / pixels * min(1.0, pixels / (2 * MIN_REGION)),
            )
        )
    return found


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp_min(1e-12)).clamp_min(LOG_FLOOR)


def _object_log_prob(want: "ObjectRequirement", region: Region) -> torch.Tensor:
    from diffsteer.worlds.shapes.scenes import COLORS, SHAPES

    total = _log(region.kind[SHAPES.index(want.shape)])
    if want.color is not None:
        total = total + _log(region.color[list(COLORS).index(want.color)])
    if want.size is not None:
        large = torch.sigmoid((region.radius - SIZE_THRESHOLD) / SIZE_SOFTNESS)
        total = total + _log(large if want.size == "large" else 1 - large)
    return total


def relation_log_prob(relation: str, first: Region, second: Region) -> torch.Tensor:
    """log P(`first` is `relation` `second`): a soft version of the judge's rule (the displacement along the
    relation's axis reaches `RELATION_MARGIN` and exceeds the one across it)."""
    dx, dy = second.x - first.x, second.y - first.y
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    reach = torch.sigmoid((along - RELATION_MARGIN) / RELATION_SOFTNESS)
    dominance = torch.sigmoid((along - across.abs()) / RELATION_SOFTNESS)
    return _log(reach) + _log(dominance)


def caption_log_prob(
    required: "Requirements", found: list[Region], device: torch.device | None = None
) -> torch.Tensor:
    """log P(the image shows exactly `required`'s objects, attributes and relation) from its regions, under the best
    assignment of required objects to regions. A region left unassigned scores log(1 - its presence); a required
    object with no region to take it scores `LOG_FLOOR`."""
    wanted = list(required.objects)
    candidates = found[:MAX_REGIONS]
    extra = sum((_log(1 - region.presence) for region in found[MAX_REGIONS:]), torch.zeros((), device=device))
    table = [[_object_log_prob(want, region) for region in candidates] for want in wanted]
    absent = [_log(1 - region.presence) for region in candidates]
    relations = {}
    if required.relation is not None:
        relations = {
            (a, b): relation_log_prob(required.relation, candidates[a], candidates[b])
            for a, b in itertools.permutations(range(len(candidates)), 2)
        }
    # The search runs on plain floats (up to 8P4 = 1,680 assignments); only the winner is summed with gradients.
    table_value = [[float(entry.detach()) for entry in row] for row in table]
    absent_value = [float(entry.detach()) for entry in absent]
    relation_value = {pair: float(entry.detach()) for pair, entry in relations.items()}
    slots = list(range(len(candidates))) + [None] * max(0, len(wanted) - len(candidates))
    best, best_value = (), -math.inf
    for chosen in itertools.permutations(slots, len(wanted)):
        value = sum(table_value[i][j] if j is not None else LOG_FLOOR for i, j in enumerate(chosen))
        value += sum(absent_value[j] for j in range(len(candidates)) if j not in chosen)
        if required.relation is not None:
            value += relation_value.get((chosen[0], chosen[1]), LOG_FLOOR)
        if value > best_value:
            best, best_value = chosen, value
    terms: list[torch.Tensor | float] = [table[i][j] if j is not None else LOG_FLOOR for i, j in enumerate(best)]
    terms += [absent[j] for j in range(len(candidates)) if j not in best]
    if required.relation is not None:
        terms.append(relations.get((best[0], best[1]), LOG_FLOOR))
    return sum(terms, extra)


def _shipped() -> Path:
    from diffsteer.worlds.shapes import DETECT_PATH

    return DETECT_PATH


@register(
    "shapes-detect",
    source="shipped in the package (diffsteer/worlds/shapes/weights/detect)",
    differentiable=True,
    summary="log P(image shows exactly the prompt's shapes, colours, sizes and relation) from a learned segmenter",
)
class ShapesDetect(Reward):
    """log P(the image shows exactly the prompt's objects) from the shapes world's learned segmenter: each required
    object's kind, colour and size, the relation between them, and no object beyond them (see the module's
    docstring). In nats, at most 0.

    Args:
        pretrained: "shipped" (default), a folder written by `save_segmenter`, or `None` for random weights (tests).
        device: where to run the model (default CPU).
        batch_size: images per forward pass.
    """

    differentiable = True
    needs_prompts = True

    def __init__(
        self,
        pretrained: str | os.PathLike | None = "shipped",
        *,
        device: str | torch.device | None = None,
        batch_size: int | None = 256,
    ) -> None:
        super().__init__(batch_size=batch_size)
        directory = shipped_weights("shapes-detect", pretrained, _shipped(), WEIGHTS_FILE, "detect")
        model = ShapesSegmenter(SegmenterConfig()) if directory is None else load_segmenter(directory)
        self.model = model.to(device).eval().requires_grad_(False)

    def probabilities(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel (kind, colour) probabilities of [0, 1] images (any size; resized to the model's)."""
        parameter = next(self.model.parameters())
        pixels = resize_center_crop(images.to(parameter), self.model.config.image_size) * 2 - 1
        kind_logits, color_logits = self.model(pixels)
        return kind_logits.softmax(1), color_logits.softmax(1)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        from diffsteer.worlds.shapes.captions import parse

        kinds, colors = self.probabilities(images)
        scores = [
            caption_log_prob(parse(prompt), regions(kind, color), kinds.device)
            for kind, color, prompt in zip(kinds, colors, prompts, strict=True)
        ]
        # Where no region is found (a blank or very blurry x0-hat) the score is the constant floor: tie it to the
        # probabilities with a zero weight, so that the reward stays differentiable there, with gradient 0 (flat),
        # rather than looking non-differentiable to a method that follows its gradient.
        flat = 0.0 * kinds.flatten(1).sum(1)
        return torch.stack([s.to(kinds) for s in scores]) + flat
