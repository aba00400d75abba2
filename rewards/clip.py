"""CLIP score on any open_clip model: prompt fidelity, differentiable."""

import os

import torch

from diffsteer.rewards.open_clip_base import OpenCLIPReward, create_open_clip_model
from diffsteer.rewards.registry import register


@register(
    "clip",
    source="hub: open_clip tag (default ViT-L-14 'openai' = timm/vit_large_patch14_clip_224.openai)",
    needs_download=True,
    differentiable=True,
    summary="100 x cosine(image, prompt), clamped at 0 (torchmetrics' CLIPScore)",
)
class CLIPScore(OpenCLIPReward):
    """CLIP score: `100 * cos(image embedding, prompt embedding)`, clamped at 0 as torchmetrics' `CLIPScore` does.

    Args:
        model_name: an open_clip architecture ("ViT-B-32", "ViT-L-14", "ViT-H-14", ...) or "hf-hub:org/repo".
        pretrained: an open_clip pretrained tag ("openai", "laion2b_s32b_b82k", ...) or a local weights file;
            `None` leaves the weights random (for tests).
        clamp: clamp at 0 (torchmetrics' definition); `False` keeps the raw `100 * cos`, whose gradient never stops.
        device: where to run the model (default CPU); images are moved there and scores come back.
        dtype: the model's dtype (default float32).
        batch_size: images per forward pass.
    """

    differentiable = True
    needs_prompts = True

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | os.PathLike | None = "openai",
        *,
        clamp: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 16,
    ) -> None:
        import open_clip

        model = create_open_clip_model(model_name, pretrained, reward="clip", option="pretrained")
        super().__init__(
            model.to(device=device, dtype=dtype), open_clip.get_tokenizer(model_name), batch_size=batch_size
        )
        self.clamp = clamp

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        scores = 100 * (self.image_features(images) * self.text_features(prompts)).sum(-1)
        return scores.clamp(min=0) if self.clamp else scores
