"""The offline fixtures the steering pipelines are tested on: each family's parent pipeline runs on tiny seeded
components with tokenizers built from the vocabulary files in tests/tiny, with real prompt strings."""

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from .tiny.components import (
    clip_tokenizer,
    flux_components,
    sd3_components,
    sd_components,
    sdxl_components,
    t5_tokenizer,
)


FAMILIES = {
    "sd": (StableDiffusionPipeline, sd_components, {}),
    "sdxl": (StableDiffusionXLPipeline, sdxl_components, {}),
    "sd3": (StableDiffusion3Pipeline, sd3_components, {"max_sequence_length": 16}),
    "flux": (FluxPipeline, flux_components, {"max_sequence_length": 16}),
}


def test_tokenizers_split_prompts_into_known_words():
    clip = clip_tokenizer()
    prompt = "two blue squares left of a circle"
    ids = clip(prompt).input_ids
    assert clip.decode(ids, skip_special_tokens=True).strip() == prompt
    assert {"blue</w>", "left</w>", "circle</w>"} <= set(clip.convert_ids_to_tokens(ids))
    t5 = t5_tokenizer()
    assert t5.convert_ids_to_tokens(t5("a red cat").input_ids) == ["\u2581a", "\u2581red", "\u2581cat", "</s>"]
    assert t5("a zebra").input_ids[1] == t5.unk_token_id


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_parent_pipeline_runs_offline_with_string_prompts(family):
    cls, make_components, extra = FAMILIES[family]
    components = make_components()
    expected = set(cls._get_signature_keys(cls)[0]) | set(cls._get_signature_keys(cls)[1])
    pipe = cls(**{name: value for name, value in components.items() if name in expected})
    pipe.set_progress_bar_config(disable=True)

    def call(seed: int) -> torch.Tensor:
        return pipe(
            ["a photo of a red cat", "two blue squares"],
            num_inference_steps=2,
            height=32,
            width=32,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
            **extra,
        ).images

    images = call(0)
    assert images.shape == (2, 3, 32, 32)
    assert torch.isfinite(images).all()
    assert torch.equal(images, call(0))
