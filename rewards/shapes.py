"""The shapes world's rewards: `shapes-clip`, a CLIP model trained with open_clip on the world's scenes (learned,
differentiable), and `shapes-eval`, the world's programmatic evaluator (exact, not differentiable). Both ship in the
package and need no download."""

import os
from pathlib import Path

import torch

from diffsteer.rewards.base import Reward
from diffsteer.rewards.open_clip_base import OpenCLIPReward, open_clip_architecture
from diffsteer.rewards.registry import register


CLIP_MODEL_NAME = "shapes-clip"


def _shipped_clip() -> Path:
    from diffsteer.worlds.shapes import CLIP_PATH

    return CLIP_PATH


def _shipped_negclip() -> Path:
    from diffsteer.worlds.shapes import NEGCLIP_PATH

    return NEGCLIP_PATH


def shipped_weights(
    reward: str, pretrained: str | os.PathLike | None, shipped: Path, file: str, stage: str
) -> Path | None:
    """The weights folder a shapes-world reward loads: the shipped one for "shipped", None for random weights, else
    `pretrained`; a clear error, naming the training stage that writes it, where the folder lacks `file`."""
    if pretrained is None:
        return None
    directory = shipped if pretrained == "shipped" else Path(pretrained)
    if not (directory / file).is_file():
        raise FileNotFoundError(
            f"Reward {reward!r}: no {directory / file}; train it with `python -m diffsteer.worlds.shapes train "
            f"--stage {stage}` or pass pretrained=None for a random model."
        )
    return directory


def register_open_clip_config(directory: str | os.PathLike) -> None:
    """Make open_clip know the `shapes-clip` architecture from `<directory>/shapes-clip.json` (once)."""
    import open_clip

    if CLIP_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(Path(directory) / f"{CLIP_MODEL_NAME}.json")


@register(
    "shapes-clip",
    source="shipped in the package (diffsteer/worlds/shapes/weights/clip)",
    differentiable=True,
    summary="100 x cosine(image, prompt) under a CLIP trained with open_clip on the shapes world",
)
class ShapesCLIP(OpenCLIPReward):
    """CLIP score under the shapes world's own CLIP (a 64x64 ViT and a text transformer trained with open_clip's
    contrastive loss and tokenizer): `100 * cos(image embedding, prompt embedding)`.

    Args:
        pretrained: "shipped" (default) or a folder holding `shapes-clip.json` and `model.safetensors`, or `None`
            for random weights (tests).
        device: where to run the model (default CPU).
        batch_size: images per forward pass.
    """

    differentiable = True
    needs_prompts = True
    name, stage = CLIP_MODEL_NAME, "clip"  # the reward and the training stage that writes its weights

    @staticmethod
    def shipped() -> Path:
        return _shipped_clip()

    def __init__(
        self,
        pretrained: str | os.PathLike | None = "shipped",
        *,
        device: str | torch.device | None = None,
        batch_size: int | None = 256,
    ) -> None:
        import open_clip

        directory = shipped_weights(self.name, pretrained, self.shipped(), "model.safetensors", self.stage)
        register_open_clip_config(directory or _shipped_clip())
        model = open_clip_architecture(CLIP_MODEL_NAME)
        if directory is not None:
            from safetensors.torch import load_file

            model.load_state_dict({k: v.float() for k, v in load_file(directory / "model.safetensors").items()})
        super().__init__(model.to(device), open_clip.get_tokenizer(CLIP_MODEL_NAME), batch_size=batch_size)
        self.mean = self.std = (0.5, 0.5, 0.5)  # training fed images in [-1, 1]

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return 100 * (self.image_features(images) * self.text_features(prompts)).sum(-1)


@register(
    "shapes-negclip",
    source="shipped in the package (diffsteer/worlds/shapes/weights/negclip)",
    differentiable=True,
    summary="100 x cosine(image, prompt) under shapes-clip fine-tuned against one-edit hard-negative captions",
)
class ShapesNegCLIP(ShapesCLIP):
    """CLIP score, `100 * cos(image, prompt)`, under `shapes-clip` fine-tuned as NegCLIP is: each image's row of the
    contrastive loss also holds its own one-edit false captions (a colour, shape, count, relation or size changed),
    on rendered scenes some of which are degraded like a decoder's output. The labels come from the scenes, never
    from the evaluator. Same scale as `shapes-clip`, so steering settings carry over.

    Args:
        pretrained: "shipped" (default) or a folder holding `shapes-clip.json` and `model.safetensors`, or `None`
            for random weights (tests).
        device: where to run the model (default CPU).
        batch_size: images per forward pass.
    """

    name, stage = "shapes-negclip", "negclip"

    @staticmethod
    def shipped() -> Path:
        return _shipped_negclip()


@register(
    "shapes-eval",
    source="programmatic (diffsteer.worlds.shapes.evaluator)",
    differentiable=False,
    summary="1 if the shapes-world evaluator finds exactly the prompt's shapes, colours, sizes and relation, else 0",
)
class ShapesEval(Reward):
    """The shapes world's evaluator as a reward: 1.0 for an image that satisfies its caption, else 0.0; with
    `partial=True`, the fraction of the caption's checks (count, shape, colour, size, position) that pass.

    Args:
        partial: score the fraction of passed checks instead of all-or-nothing.
    """

    differentiable = False
    needs_prompts = True

    def __init__(self, partial: bool = False, *, batch_size: int | None = None) -> None:
        super().__init__(batch_size=batch_size)
        self.partial = partial

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        from diffsteer.worlds.shapes.evaluator import evaluate

        scores = []
        for image, prompt in zip(images, prompts, strict=True):
            verdict = evaluate(image, prompt)
            checks = list(verdict.checks.values())
            scores.append(sum(checks) / len(checks) if self.partial else float(verdict.correct))
        return torch.tensor(scores, dtype=torch.float32, device=images.device)
