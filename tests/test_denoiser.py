"""The denoiser's parts and the guidance that combines them: diffusers' guider, bit for bit with the parents'
formula, and every family handing over both parts while making the calls its parent makes."""

import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

import diffsteer
from diffsteer.pipelines.denoiser import ClassifierFreeCombine, DenoiserParts, combined

from .tiny.families import FAMILIES


def parents_formula(batch: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """What StableDiffusionPipeline's loop computes from its [uncond; cond] batch."""
    noise_pred_uncond, noise_pred_text = batch.chunk(2)
    noise_pred = noise_pred_uncond + scale * (noise_pred_text - noise_pred_uncond)
    if rescale > 0.0:
        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=rescale)
    return noise_pred


@pytest.mark.parametrize("rescale", [0.0, 0.7])
@pytest.mark.parametrize("scale", [1.5, 7.5])
def test_the_guider_combines_bit_for_bit_as_the_parents_do(scale, rescale):
    batch = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    combine = ClassifierFreeCombine(lambda: scale, lambda: rescale)
    assert torch.equal(combine(DenoiserParts.from_batch(batch, guided=True)), parents_formula(batch, scale, rescale))


def test_from_batch_reads_the_parents_uncond_then_cond_order():
    batch = torch.arange(4.0).view(4, 1)
    parts = DenoiserParts.from_batch(batch, guided=True)
    assert parts.uncond.flatten().tolist() == [0.0, 1.0] and parts.cond.flatten().tolist() == [2.0, 3.0]
    unguided = DenoiserParts.from_batch(batch, guided=False)
    assert unguided.cond is batch and unguided.uncond is None


def test_a_call_without_an_unconditional_part_is_the_conditional_output():
    cond = torch.randn(3, 2)
    assert ClassifierFreeCombine(lambda: 7.5)(DenoiserParts(cond)) is cond


def test_the_scale_is_read_at_every_call():
    # A callback may change the pipeline's scale mid-run (diffusers' dynamic-CFG recipe); the parent reads it then.
    scale = {"value": 2.0}
    combine = ClassifierFreeCombine(lambda: scale["value"])
    parts = DenoiserParts(torch.ones(1), torch.zeros(1))
    assert combine(parts).item() == 2.0
    scale["value"] = 5.0
    assert combine(parts).item() == 5.0


def test_building_the_guider_prints_no_experimental_warning(capfd):
    ClassifierFreeCombine(lambda: 2.0)
    assert "experimental" not in capfd.readouterr().err


def test_combined_is_the_model_a_plain_run_steps_with():
    def denoise(sample, timestep, prompt_embeds):
        return DenoiserParts(sample + prompt_embeds, sample - prompt_embeds)

    model = combined(denoise, ClassifierFreeCombine(lambda: 3.0))
    sample, embeds = torch.randn(2, 3), torch.randn(2, 3)
    expected = (sample - embeds) + 3.0 * ((sample + embeds) - (sample - embeds))
    assert torch.equal(model(sample, torch.tensor(1), prompt_embeds=embeds), expected)


@pytest.mark.parametrize(
    ("name", "extra", "guided"),
    [
        ("sd", {}, True),
        ("sd", {"guidance_scale": 1.0}, False),
        ("sdxl", {}, True),
        ("sd3", {}, True),
        ("flux", {}, False),  # guidance-distilled: one pass, no unconditional part
        ("flux", {"negative_prompt": "a dog", "true_cfg_scale": 2.0}, True),
    ],
)
def test_every_family_hands_both_parts_to_the_combine_step(monkeypatch, name, extra, guided):
    family = FAMILIES[name]
    pipe = family.steering(**family.components())
    pipe.set_progress_bar_config(disable=True)
    seen = []
    original = ClassifierFreeCombine.__call__

    def spy(self, parts):
        seen.append((parts.cond.shape, None if parts.uncond is None else parts.uncond.shape))
        return original(self, parts)

    monkeypatch.setattr(ClassifierFreeCombine, "__call__", spy)
    call = {**family.call, **extra}
    out = pipe(
        ["a red cat"],
        generator=torch.Generator().manual_seed(0),
        reward=lambda images, prompts: images.mean((1, 2, 3)),
        method=diffsteer.BestOfN(3),
        **call,
    )
    steps = call["num_inference_steps"]
    assert len(seen) == steps
    cond_shape, uncond_shape = seen[0]
    assert cond_shape[0] == 3
    assert (uncond_shape == cond_shape) if guided else uncond_shape is None
    # The calls the parent makes: one row per particle and part (a batched call for SD, SDXL and SD3, two passes
    # for Flux's true CFG).
    assert out.cost.model_rows == 3 * steps * (2 if guided else 1)
