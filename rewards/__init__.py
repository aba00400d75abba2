"""Reward models as potentials (installed as `diffsteer.rewards`).

Every reward is called as `reward(images, prompts) -> Tensor[N]`, images float in [0, 1] of shape (N, 3, H, W) on any
device and dtype, and scores in chunks of its `batch_size`:

    reward = diffsteer.rewards.load("image-reward")               # or a local path: load(..., pretrained="/ckpt")
    scores = reward(images, ["a red circle left of a blue square"] * len(images))
    ensemble = diffsteer.rewards.RankEnsemble([load("clip"), load("aesthetic"), load("image-reward")])

Heavy libraries (open_clip, transformers, timm) are imported when a model is built, not here.
"""

from diffsteer.rewards import aesthetic, clip, hps, image_reward, pickscore, pixel, shapes, shapes_detect, shapes_itm  # noqa: F401  (registers)
from diffsteer.rewards.aesthetic import AestheticScore
from diffsteer.rewards.base import Reward
from diffsteer.rewards.clip import CLIPScore
from diffsteer.rewards.combinators import Negated, RankEnsemble, Scaled, WeightedSum, from_function
from diffsteer.rewards.hps import HPSv2
from diffsteer.rewards.hub import RewardWeightsNotFoundError
from diffsteer.rewards.image_reward import ImageReward
from diffsteer.rewards.pickscore import PickScore
from diffsteer.rewards.pixel import Brightness, Colorfulness, JpegCompressibility, JpegIncompressibility, TargetColor
from diffsteer.rewards.registry import RewardSpec, available, get_spec, load, register
from diffsteer.rewards.shapes import ShapesCLIP, ShapesEval, ShapesNegCLIP
from diffsteer.rewards.shapes_detect import ShapesDetect
from diffsteer.rewards.shapes_itm import ShapesITM


__all__ = [
    "AestheticScore",
    "Brightness",
    "CLIPScore",
    "Colorfulness",
    "HPSv2",
    "ImageReward",
    "JpegCompressibility",
    "JpegIncompressibility",
    "Negated",
    "PickScore",
    "RankEnsemble",
    "Reward",
    "RewardSpec",
    "RewardWeightsNotFoundError",
    "Scaled",
    "ShapesCLIP",
    "ShapesDetect",
    "ShapesEval",
    "ShapesITM",
    "ShapesNegCLIP",
    "TargetColor",
    "WeightedSum",
    "available",
    "from_function",
    "get_spec",
    "load",
    "register",
]
