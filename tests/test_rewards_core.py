"""The reward interface, the registry, the combinators and the weight-free rewards, against exact answers."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import rankdata

import diffsteer.rewards as rewards
from diffsteer.rewards import (
    Brightness,
    Colorfulness,
    JpegCompressibility,
    JpegIncompressibility,
    Negated,
    RankEnsemble,
    Reward,
    Scaled,
    TargetColor,
    WeightedSum,
    from_function,
)


def random_images(n: int = 5, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class CountingReward(Reward):
    """Mean red minus mean blue, recording the chunk sizes it was called with."""

    differentiable = True

    def __init__(self, batch_size: int | None) -> None:
        super().__init__(batch_size=batch_size)
        self.chunks: list[int] = []

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        self.chunks.append(images.shape[0])
        return images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))


# The interface ----------------------------------------------------------------------------------------------------


def test_chunks_of_batch_size_give_the_scores_of_one_by_one_calls():
    images, reward = random_images(7), CountingReward(batch_size=3)
    batched = reward(images)
    assert reward.chunks == [3, 3, 1]
    one_by_one = torch.cat([reward(image[None]) for image in images])
    torch.testing.assert_close(batched, one_by_one)
    assert batched.dtype == torch.float32 and batched.shape == (7,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_float_dtype_in_float32_scores_out(dtype):
    images = random_images(4)
    scores = Brightness()(images.to(dtype))
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, Brightness()(images), atol=1e-2, rtol=0)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(2, 24, 24, 3), r"\(N, 3, H, W\)"),
        (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), "divide uint8 images by 255"),
        (torch.rand(2, 3, 8, 8) * 2 - 1, r"\(x / 2 \+ 0.5\)"),
        ([[0.5]], "torch.Tensor"),
    ],
)
def test_bad_images_are_refused_with_the_fix(images, match):
    with pytest.raises(ValueError, match=match):
        Brightness()(images)


def test_prompts_broadcast_from_one_string_and_must_match_the_batch():
    seen = []
    reward = from_function(
        lambda images, prompts: seen.append(prompts) or images.mean((1, 2, 3)), differentiable=False
    )
    reward(random_images(3), "a red circle")
    assert seen == [["a red circle"] * 3]
    with pytest.raises(ValueError, match=r"one per image"):
        reward(random_images(3), ["a", "b"])
    prompt_reward = from_function(
        lambda images, prompts: images.mean((1, 2, 3)), differentiable=False, needs_prompts=True
    )
    with pytest.raises(ValueError, match=r"pass prompts="):
        prompt_reward(random_images(3))


def test_a_reward_returning_the_wrong_number_of_scores_is_named():
    reward = from_function(lambda images, prompts: images.mean(), differentiable=False)
    with pytest.raises(RuntimeError, match=r"FunctionReward.score returned 1 scores for 3 images"):
        reward(random_images(3))


def test_non_differentiable_rewards_run_without_a_graph():
    images = random_images(2).requires_grad_()
    assert not JpegIncompressibility()(images).requires_grad
    assert from_function(lambda x, p: x.mean((1, 2, 3)), differentiable=True)(images).requires_grad


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
        Brightness(batch_size=batch_size)


# The registry -----------------------------------------------------------------------------------------------------


def test_available_lists_every_builtin_with_its_source():
    specs = {spec.name: spec for spec in rewards.available()}
    expected = {"aesthetic", "brightness", "clip", "colorfulness", "hpsv2", "hpsv2.1", "image-reward", "pickscore"}
    assert expected | {"target-color", "jpeg-compressibility", "jpeg-incompressibility"} <= set(specs)
    assert not specs["brightness"].needs_download and specs["brightness"].source == "none"
    assert specs["image-reward"].needs_download and "THUDM/ImageReward" in specs["image-reward"].source
    assert specs["jpeg-compressibility"].differentiable is False and specs["clip"].differentiable is True
    assert [spec.name for spec in rewards.available()] == sorted(specs)


def test_load_builds_with_options_and_refuses_unknown_names_and_options():
    reward = rewards.load("target-color", color=(0.0, 1.0, 0.0))
    assert isinstance(reward, TargetColor) and reward.color == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"Unknown reward 'imagereward'; available rewards: .*image-reward"):
        rewards.load("imagereward")
    with pytest.raises(ValueError, match=r"Reward 'brightness': .*colour.*Its options are: batch_size"):
        rewards.load("brightness", colour=(1, 0, 0))


def test_register_adds_a_reward_and_refuses_to_overwrite_another():
    @rewards.register("test-redness", differentiable=True, summary="mean red")
    def redness() -> Reward:
        return from_function(lambda images, prompts: images[:, 0].mean((1, 2)), differentiable=True)

    images = random_images(3)
    torch.testing.assert_close(rewards.load("test-redness")(images), images[:, 0].mean((1, 2)))
    assert "test-redness" in {spec.name for spec in rewards.available()}
    with pytest.raises(ValueError, match=r"already registered"):
        rewards.register("test-redness", differentiable=False)(lambda: None)


# Combinators ------------------------------------------------------------------------------------------------------


def test_weighted_sum_scaled_negated_and_operators_are_exact():
    images = random_images(4)
    bright, red = Brightness(), TargetColor((1.0, 0.0, 0.0))
    b, r = bright(images), red(images)
    torch.testing.assert_close(WeightedSum([bright, red], [2.0, -0.5])(images), 2 * b - 0.5 * r)
    torch.testing.assert_close((bright + red)(images), b + r)
    torch.testing.assert_close((3 * bright)(images), 3 * b)
    torch.testing.assert_close(Scaled(bright, 0.25)(images), 0.25 * b)
    torch.testing.assert_close((-bright)(images), -b)
    assert isinstance(-bright, Negated)
    with pytest.raises(ValueError, match=r"2 rewards but 1 weights"):
        WeightedSum([bright, red], [1.0])


def test_combinators_keep_gradients_and_flags():
    images = random_images(3).requires_grad_()
    combined = 2 * Brightness() + Colorfulness()
    assert combined.differentiable
    combined(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not (Brightness() + JpegCompressibility()).differentiable


def test_rank_ensemble_is_the_mean_of_scipy_ranks_with_ties():
    images = random_images(6)
    first = from_function(lambda x, p: torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 0.0]), differentiable=False)
    second = from_function(lambda x, p: x[:, 0].mean((1, 2)), differentiable=True)
    expected = (rankdata([3.0, 1.0, 2.0, 2.0, 5.0, 0.0]) + rankdata(second(images).numpy())) / 2
    ensemble = RankEnsemble([first, second])
    np.testing.assert_allclose(ensemble(images).numpy(), expected, rtol=0, atol=1e-6)
    assert ensemble.batch_relative and not ensemble.differentiable


def test_rank_ensemble_is_never_chunked():
    part = CountingReward(batch_size=2)
    ensemble = RankEnsemble([part])
    ensemble.batch_size = 2  # a batch-relative reward sees the whole batch even when a chunk size is set
    images = random_images(5)
    scores = ensemble(images)
    assert part.chunks == [2, 2, 1]  # the part chunks itself; the ranks still see all five images
    np.testing.assert_allclose(scores.numpy(), rankdata(part(images).numpy()), atol=1e-6)
    assert sorted(scores.tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]


# Weight-free rewards ----------------------------------------------------------------------------------------------


def test_brightness_and_target_color_closed_forms():
    uniform = torch.ones(2, 3, 4, 4) * torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    torch.testing.assert_close(Brightness()(uniform), torch.full((2,), 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6))
    torch.testing.assert_close(TargetColor((0.2, 0.4, 0.6))(uniform), torch.zeros(2))
    torch.testing.assert_close(TargetColor((0.0, 0.4, 0.6))(uniform), torch.full((2,), -(0.2**2) / 3))
    with pytest.raises(ValueError, match=r"three values in"):
        TargetColor((255, 0, 0))


def test_colorfulness_matches_the_paper_formula_in_numpy():
    images = random_images(3)
    pixels = images.double().numpy() * 255
    rg = pixels[:, 0] - pixels[:, 1]
    yb = 0.5 * (pixels[:, 0] + pixels[:, 1]) - pixels[:, 2]
    axes = (1, 2)
    expected = np.sqrt(rg.std(axes) ** 2 + yb.std(axes) ** 2) + 0.3 * np.sqrt(rg.mean(axes) ** 2 + yb.mean(axes) ** 2)
    np.testing.assert_allclose(Colorfulness()(images).numpy(), expected, rtol=1e-4)
    grey = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
    Colorfulness()(grey).sum().backward()
    assert torch.isfinite(grey.grad).all()


def test_jpeg_sizes_are_pils_sizes_at_quality_95():
    smooth = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    images = torch.cat([random_images(2, size=64), smooth])
    pil_sizes = []
    for image in images:
        array = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
        pil_sizes.append(buffer.tell() / 1000)
    np.testing.assert_allclose(JpegIncompressibility()(images).numpy(), pil_sizes, rtol=0, atol=1e-6)
    np.testing.assert_allclose(JpegCompressibility()(images).numpy(), [-size for size in pil_sizes], atol=1e-6)
    assert pil_sizes[0] > 3 * pil_sizes[2]  # noise costs more bytes than a gradient
