"""The LAION aesthetic predictor ("improved", v2): an MLP on normalised CLIP ViT-L/14 image embeddings."""

import os

import torch

from diffsteer.rewards.hub import resolve_file
from diffsteer.rewards.open_clip_base import OpenCLIPReward, create_open_clip_model
from diffsteer.rewards.registry import register


AESTHETIC_FILE = "aesthetic-model.pth"


class AestheticHead(torch.nn.Module):
    """The predictor's MLP (keys `layers.0` ... `layers.7`, as in the released `.pth` files). It has no activations:
    the released model is linear in the embedding, with dropout only in training."""

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(embed_dim, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


@register(
    "aesthetic",
    source="hub: trl-lib/ddpo-aesthetic-predictor (aesthetic-model.pth) + open_clip ViT-L-14 'openai'",
    needs_download=True,
    differentiable=True,
    summary="LAION aesthetic predictor v2 (about 1-10)",
)
class AestheticScore(OpenCLIPReward):
    """The LAION aesthetic predictor v2 (`sac+logos+ava1-l14-linearMSE`): its MLP on the L2-normalised OpenAI CLIP
    ViT-L/14 image embedding; ratings are on the AVA 1-10 scale.

    Args:
        predictor: the hub id holding `aesthetic-model.pth` (TRL's copy, used by DDPO), a local folder holding it, or
            the `.pth` file itself (for example `sac+logos+ava1-l14-linearMSE.pth`); `None` leaves the head random.
        clip_pretrained: the open_clip tag or local weights file of the CLIP backbone; `None` leaves it random.
        clip_model: the open_clip architecture of the backbone (ViT-L-14 for the released predictor).
        device: where to run the models (default CPU).
        dtype: the models' dtype (default float32).
        batch_size: images per forward pass.
    """

    differentiable = True

    def __init__(
        self,
        predictor: str | os.PathLike | None = "trl-lib/ddpo-aesthetic-predictor",
        clip_pretrained: str | os.PathLike | None = "openai",
        *,
        clip_model: str = "ViT-L-14",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 16,
    ) -> None:
        path = (
            None
            if predictor is None
            else resolve_file(predictor, AESTHETIC_FILE, reward="aesthetic", option="predictor")
        )
        model = create_open_clip_model(clip_model, clip_pretrained, reward="aesthetic", option="clip_pretrained")
        super().__init__(model.to(device=device, dtype=dtype), tokenizer=None, batch_size=batch_size)
        head = AestheticHead(model.visual.output_dim)
        if path is not None:
            head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.head = head.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.head(self.image_features(images))
