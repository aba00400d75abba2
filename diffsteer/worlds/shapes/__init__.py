"""The shapes world: scenes of coloured shapes with captions, a programmatic evaluator, and a text-to-image latent
diffusion model and CLIP reward trained on them, shipped in the package (no download needed)."""

from pathlib import Path

from diffsteer.worlds.shapes.captions import (
    CATEGORIES,
    ObjectRequirement,
    Requirements,
    all_captions,
    caption_of,
    category_of,
    held_out_prompts,
    parse,
    scene_for,
    training_captions,
)
from diffsteer.worlds.shapes.evaluator import DetectedObject, Verdict, detect, evaluate
from diffsteer.worlds.shapes.scenes import COLORS, IMAGE_SIZE, SHAPES, Shape, render


WEIGHTS = Path(__file__).parent / "weights"
MODEL_PATH = WEIGHTS / "pipeline"  # a diffusers StableDiffusionPipeline folder
CLIP_PATH = WEIGHTS / "clip"  # the open_clip model behind the `shapes-clip` reward
NEGCLIP_PATH = WEIGHTS / "negclip"  # shapes-clip fine-tuned against hard negatives: the `shapes-negclip` reward
ITM_PATH = WEIGHTS / "itm"  # the image-text matching model behind the `shapes-itm` reward
DETECT_PATH = WEIGHTS / "detect"  # the segmenter behind the `shapes-detect` reward

__all__ = [
    "CATEGORIES",
    "CLIP_PATH",
    "COLORS",
    "DETECT_PATH",
    "IMAGE_SIZE",
    "ITM_PATH",
    "MODEL_PATH",
    "NEGCLIP_PATH",
    "SHAPES",
    "DetectedObject",
    "ObjectRequirement",
    "Requirements",
    "Shape",
    "Verdict",
    "all_captions",
    "caption_of",
    "category_of",
    "detect",
    "evaluate",
    "held_out_prompts",
    "parse",
    "render",
    "scene_for",
    "training_captions",
]
