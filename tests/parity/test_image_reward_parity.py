"""The native ImageReward against the official image-reward 1.5 package (run by `.ci/image_reward_parity`).

The reference (`image_reward_reference.py`, in the side environment) saved the package model's weights and its
outputs for the same preprocessed images and prompts. The native model loads those weights through the registry,
as a user would load the official checkpoint, and must reproduce every stage.

The package initialises its MLP head with std 1/769 per layer, which makes raw scores about 1e-9: every standardised
score would be -0.16178 and a score comparison could not fail. The reference therefore redraws the head (seeded,
std 0.05), so scores spread over about +-0.2 and the 1e-4 score check is informative; the vision tokens, the [CLS]
features, the raw scores and the input gradient are compared too. Measured on CPU with the package's own head:
vision tokens and features differ by at most 4e-6, raw scores by 1.2e-6 of their size, the gradient by 1.2e-6 of
its norm. The tolerances are about 30 to 100
times those figures: loose enough for another BLAS or attention kernel, tight enough for architectural slips. Measured
by breaking the native encoder on purpose, the largest [CLS] feature difference becomes 1.8 with causal
self-attention, 1.4 when padding is not masked, and 6.6e-4 with tanh-approximated GELU: each fails FEATURE_ATOL.
"""

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

import diffsteer.rewards.image_reward  # noqa: F401  (registers "image-reward")
from diffsteer.rewards.registry import load


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FEATURE_ATOL = 1e-4  # absolute, on vision tokens (|x| up to ~4) and [CLS] features (|x| up to ~3)
RELATIVE_TOL = 1e-4  # raw scores and elementwise gradients, relative to the largest reference value
GRAD_NORM_RTOL = 1e-3  # norm of the gradient difference over the reference gradient's norm
SCORE_ATOL = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict:
    folder = Path(os.environ["DIFFSTEER_PARITY_DIR"])
    path = folder / "reference.pt"
    if not path.is_file():
        pytest.fail(f"No reference outputs at {path}: run bash .ci/image_reward_parity, which builds them first.")
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def native(reference: dict) -> dict:
    """The native model's outputs on the reference inputs, and the measured differences (also saved as JSON)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unless it is a test vocabulary")  # the 38-word test vocab
        model = load(
            "image-reward", pretrained=os.environ["DIFFSTEER_PARITY_DIR"], tokenizer=str(FIXTURES / "bert_vocab")
        )
    input_ids, attention_mask = model.tokenize(reference["prompts"], torch.device("cpu"))
    pixels = reference["pixels"].clone().requires_grad_(True)
    image_embeds = model.blip.visual_encoder.forward_features(pixels)
    features = model.blip.text_encoder(input_ids, attention_mask, image_embeds)[:, 0]
    raw_scores = model.mlp(features).squeeze(-1)
    scores = model.score_preprocessed(pixels, input_ids, attention_mask)
    scores.sum().backward()
    with torch.no_grad():
        own_pixels = torch.cat([model.preprocess(image[None].float() / 255) for image in reference["images"]])
        own_raw = model.raw_score(own_pixels, input_ids, attention_mask)
    outputs = {
        "input_ids": input_ids,
        "image_embeds": image_embeds.detach(),
        "features": features.detach(),
        "raw_scores": raw_scores.detach(),
        "scores": scores.detach(),
        "grad": pixels.grad,
        "own_pixels": own_pixels,
        "own_raw_scores": own_raw,
    }
    _save_summary(outputs, reference)
    return outputs


def _relative(difference: torch.Tensor, scale: torch.Tensor) -> float:
    """Largest absolute difference over the largest absolute reference value (in float64: gradients are ~1e-12)."""
    return (difference.double().abs().max() / scale.double().abs().max()).item()


def _save_summary(outputs: dict, reference: dict) -> None:
    """The measured agreement, for the record (`native_parity.json` next to the reference)."""
    grad, grad_ref = outputs["grad"].double(), reference["grad"].double()
    raw_shift = outputs["own_raw_scores"] - reference["raw_scores"]
    summary = {
        "max_abs_score_diff": (outputs["scores"] - reference["scores"]).abs().max().item(),
        "max_abs_image_token_diff": (outputs["image_embeds"] - reference["image_embeds"]).abs().max().item(),
        "max_abs_feature_diff": (outputs["features"] - reference["text_features"]).abs().max().item(),
        "raw_score_diff_relative": _relative(outputs["raw_scores"] - reference["raw_scores"], reference["raw_scores"]),
        "grad_diff_norm_relative": ((grad - grad_ref).norm() / grad_ref.norm()).item(),
        "grad_cosine": (grad.flatten() @ grad_ref.flatten() / (grad.norm() * grad_ref.norm())).item(),
        "grad_max_abs_diff_relative": _relative(grad - grad_ref, grad_ref),
        "tensor_vs_pil_preprocessing_mean_abs": (outputs["own_pixels"] - reference["pixels"]).abs().mean().item(),
        "tensor_vs_pil_preprocessing_max_abs": (outputs["own_pixels"] - reference["pixels"]).abs().max().item(),
        "raw_score_shift_from_tensor_preprocessing_relative": _relative(raw_shift, reference["raw_scores"]),
        "package_seconds": reference["seconds"],
        "package_versions": reference["versions"],
    }
    path = Path(os.environ["DIFFSTEER_PARITY_DIR"]) / "native_parity.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")


def test_tokens_match(native: dict, reference: dict) -> None:
    assert torch.equal(native["input_ids"], reference["input_ids"])


def test_image_tokens_match(native: dict, reference: dict) -> None:
    torch.testing.assert_close(native["image_embeds"], reference["image_embeds"], rtol=0, atol=FEATURE_ATOL)


def test_text_features_match(native: dict, reference: dict) -> None:
    torch.testing.assert_close(native["features"], reference["text_features"], rtol=0, atol=FEATURE_ATOL)


def test_scores_match(native: dict, reference: dict) -> None:
    assert reference["scores"].std() > 100 * SCORE_ATOL  # the scores differ between images, so the check can fail
    torch.testing.assert_close(native["scores"], reference["scores"], rtol=0, atol=SCORE_ATOL)
    assert _relative(native["raw_scores"] - reference["raw_scores"], reference["raw_scores"]) < RELATIVE_TOL


def test_input_gradient_matches(native: dict, reference: dict) -> None:
    grad, grad_ref = native["grad"].double(), reference["grad"].double()
    assert grad_ref.norm() > 0
    assert ((grad - grad_ref).norm() / grad_ref.norm()).item() < GRAD_NORM_RTOL
    assert _relative(grad - grad_ref, grad_ref) < RELATIVE_TOL


def test_tensor_preprocessing_is_close_to_the_package_pil_path(native: dict, reference: dict) -> None:
    # PIL rounds its resized image to uint8 and filters slightly differently (see tests/test_image_reward.py).
    difference = (native["own_pixels"] - reference["pixels"]).abs()
    assert difference.mean().item() < 0.01
    assert difference.max().item() < 0.15
