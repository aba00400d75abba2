"""HPSv2 and HPSv2.1: human preference scores on open_clip's ViT-H-14, without the `hpsv2` package.

The `hpsv2` package vendors an old open_clip without its tokenizer file and downloads the LAION ViT-H-14 before its
own checkpoint; the checkpoint alone holds every weight, and its keys match open_clip's ViT-H-14, so it loads into a
randomly initialised open_clip model directly.
"""

import os

import torch

from diffsteer.rewards.hub import resolve_file
from diffsteer.rewards.open_clip_base import OpenCLIPReward, open_clip_architecture
from diffsteer.rewards.registry import register


HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_NAMES = {"v2.0": "hpsv2", "v2.1": "hpsv2.1"}


class HPSv2(OpenCLIPReward):
    """Human Preference Score v2: `cos(image embedding, prompt embedding)` of the HPS-tuned ViT-H-14 (about 0.2-0.35
    for ordinary images; no logit scale, as in `hpsv2.score`). Images are resized on their longer side and padded
    with black to a square, as HPSv2's evaluation transform does.

    Args:
        checkpoint: the hub id holding the HPS checkpoints, a local folder holding them, or the checkpoint file;
            `None` leaves the weights random (for tests).
        version: "v2.0" or "v2.1".
        model_name: the open_clip architecture (ViT-H-14 for the released checkpoints).
        device: where to run the model (default CPU).
        dtype: the model's dtype (default float32).
        batch_size: images per forward pass.
    """

    differentiable = True
    needs_prompts = True

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = "xswu/HPSv2",
        version: str = "v2.1",
        *,
        model_name: str = "ViT-H-14",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 8,
    ) -> None:
        import open_clip

        if version not in HPS_FILES:
            raise ValueError(f"version must be one of {list(HPS_FILES)}, got {version!r}.")
        name = "hpsv2" if version == "v2.0" else "hpsv2.1"
        path = (
            None
            if checkpoint is None
            else resolve_file(checkpoint, HPS_FILES[version], reward=name, option="checkpoint")
        )
        model = open_clip_architecture(model_name)
        if path is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state))
        tokenizer = open_clip.get_tokenizer(model_name)
        super().__init__(model.to(device=device, dtype=dtype), tokenizer, resize_mode="longest", batch_size=batch_size)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return (self.image_features(images) * self.text_features(prompts)).sum(-1)


def _register_version(version: str) -> None:
    """Register `HPSv2` at one checkpoint version under its own name (`hpsv2` is v2.0, `hpsv2.1` is v2.1)."""

    def factory(
        checkpoint: str | os.PathLike | None = "xswu/HPSv2",
        *,
        model_name: str = "ViT-H-14",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 8,
    ) -> HPSv2:
        return HPSv2(checkpoint, version, model_name=model_name, device=device, dtype=dtype, batch_size=batch_size)

    factory.__doc__ = f"HPS{version}; see `HPSv2`."
    register(
        HPS_NAMES[version],
        source=f"hub: xswu/HPSv2 ({HPS_FILES[version]})",
        needs_download=True,
        differentiable=True,
        summary=f"Human Preference Score {version} (open_clip ViT-H-14)",
    )(factory)


for _version in HPS_FILES:
    _register_version(_version)
