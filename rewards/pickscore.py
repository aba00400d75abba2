"""PickScore: the Pick-a-Pic preference model, a CLIP ViT-H-14 in transformers' format."""

import os
from typing import TYPE_CHECKING, Any

import torch

from diffsteer.rewards.base import Reward, encode_per_prompt
from diffsteer.rewards.hub import weights_error
from diffsteer.rewards.registry import register
from diffsteer.rewards.transforms import normalize, resize_center_crop


if TYPE_CHECKING:
    from transformers import CLIPModel


@register(
    "pickscore",
    source="hub: yuvalkirstain/PickScore_v1 + processor laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    needs_download=True,
    differentiable=True,
    summary="Pick-a-Pic preference: logit_scale x cosine (about 18-24)",
)
class PickScore(Reward):
    """PickScore: `logit_scale.exp() * cos(image embedding, prompt embedding)` of the Pick-a-Pic CLIP model, the
    scale its authors compare images with (their softmax over images of one prompt gives preference probabilities).

    Args:
        model: the hub id or local folder of the `CLIPModel` weights, or a `CLIPModel` itself.
        processor: the hub id or local folder of the tokenizer and image-processor configuration, or a
            `(tokenizer, CLIPImageProcessor)` pair.
        device: where to run the model (default CPU).
        dtype: the model's dtype (default float32).
        batch_size: images per forward pass.
    """

    differentiable = True
    needs_prompts = True

    def __init__(
        self,
        model: "str | os.PathLike | CLIPModel" = "yuvalkirstain/PickScore_v1",
        processor: str | os.PathLike | tuple[Any, Any] = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = 8,
    ) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        super().__init__(batch_size=batch_size)
        clip = (
            model if isinstance(model, CLIPModel) else _from_pretrained(CLIPModel, model, "model", "model.safetensors")
        )
        if isinstance(processor, tuple):
            self.tokenizer, image_processor = processor
        else:
            self.tokenizer = _from_pretrained(AutoTokenizer, processor, "processor", "tokenizer.json")
            image_processor = _from_pretrained(CLIPImageProcessor, processor, "processor", "preprocessor_config.json")
        self.model = clip.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.image_size = image_processor.crop_size["height"]
        self.resize_to = image_processor.size["shortest_edge"]
        self.mean, self.std = tuple(image_processor.image_mean), tuple(image_processor.image_std)
        self.max_length = min(self.tokenizer.model_max_length, clip.config.text_config.max_position_embeddings)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        pixels = resize_center_crop(self.to_model(images), self.resize_to)
        pixels = normalize(resize_center_crop(pixels, self.image_size), self.mean, self.std)
        image_embeds = self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)
        text_embeds = encode_per_prompt(prompts, lambda unique: self.text_embeds(unique, image_embeds.device))
        cosine = torch.nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1)
        return self.model.logit_scale.exp() * cosine

    def text_embeds(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Projected text embeddings of distinct prompts."""
        # Padding to a fixed length keeps a prompt's tokens (and so its score) independent of the rest of the batch.
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        tokens = tokens.to(device)
        text = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        return self.model.text_projection(text)


def _from_pretrained(cls: Any, source: str | os.PathLike, option: str, filename: str) -> Any:
    """`cls.from_pretrained(source)`, turning transformers' offline error into one that names the hub id and the
    `load` option that takes a local folder."""
    try:
        return cls.from_pretrained(source)
    except OSError as error:
        raise weights_error("pickscore", str(source), filename, option, error) from None
