"""The shapes world's rewards: `shapes-eval` (the evaluator) and the `shapes-clip` mechanics on random weights."""

import numpy as np
import pytest
import torch

import diffsteer.rewards as rewards
from diffsteer.worlds.shapes import parse, render, scene_for


def _images(captions, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [render(scene_for(parse(caption), rng)) for caption in captions]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def test_shapes_eval_scores_one_for_the_drawn_caption_and_zero_for_another():
    captions = ["a red circle left of a blue square", "three triangles", "a small square"]
    images = _images(captions)
    reward = rewards.load("shapes-eval")
    assert not reward.differentiable
    assert reward(images, captions).tolist() == [1.0, 1.0, 1.0]
    assert reward(images, ["a blue circle left of a red square", "two triangles", "a large square"]).tolist() == [
        0.0,
        0.0,
        0.0,
    ]
    partial = rewards.load("shapes-eval", partial=True)(images[:1], ["a blue circle left of a red square"])
    assert partial.item() == pytest.approx(3 / 4)  # count, shape and position pass; colour fails


def test_shapes_clip_is_differentiable_and_reads_its_architecture_from_the_package():
    reward = rewards.load("shapes-clip", pretrained=None)  # random weights: mechanics only
    images = _images(["a red circle", "two green squares"]).requires_grad_(True)
    scores = reward(images, ["a red circle", "two green squares"])
    assert scores.shape == (2,) and torch.isfinite(scores).all() and scores.abs().max() <= 100
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_shapes_clip_without_weights_names_the_train_command(tmp_path):
    (tmp_path / "shapes-clip.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"python -m diffsteer\.worlds\.shapes train --stage clip"):
        rewards.load("shapes-clip", pretrained=tmp_path)


def test_shapes_negclip_is_shapes_clip_on_its_own_weights(tmp_path):
    shipped = rewards.load("shapes-negclip")
    assert shipped.shipped().name == "negclip" and shipped.shipped() != rewards.load("shapes-clip").shipped()
    images, prompts = _images(["a red circle", "two green squares"]), ["a red circle", "two green squares"]
    assert not torch.allclose(shipped(images, prompts), rewards.load("shapes-clip")(images, prompts))
    (tmp_path / "shapes-clip.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"python -m diffsteer\.worlds\.shapes train --stage negclip"):
        rewards.load("shapes-negclip", pretrained=tmp_path)


def test_shapes_itm_is_a_differentiable_log_probability_on_random_weights():
    reward = rewards.load("shapes-itm", pretrained=None)  # random weights: mechanics only
    images = _images(["a red circle", "two green squares"]).requires_grad_(True)
    scores = reward(images, ["a red circle", "two green squares"])
    assert scores.shape == (2,) and torch.isfinite(scores).all() and (scores <= 0).all()
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    larger = torch.nn.functional.interpolate(images.detach(), size=128, mode="nearest")  # resized to 64 first
    torch.testing.assert_close(
        reward(larger, ["a red circle", "two green squares"]), scores.detach(), atol=5e-3, rtol=0
    )


def test_shapes_itm_saves_and_loads_its_weights_config_and_tokenizer(tmp_path):
    from diffsteer.rewards.shapes_itm import save_matcher

    reward = rewards.load("shapes-itm", pretrained=None)
    with torch.no_grad():  # the file holds half precision; round first so that the scores match exactly
        for parameter in reward.model.parameters():
            parameter.copy_(parameter.half().float())
    save_matcher(reward.model, tmp_path, reward.tokenizer)
    loaded = rewards.load("shapes-itm", pretrained=tmp_path)
    images, prompts = _images(["a blue square above a red triangle"] * 2), ["a blue square above a red triangle", "x"]
    torch.testing.assert_close(loaded(images, prompts), reward(images, prompts))


def test_shapes_itm_without_weights_names_the_train_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m diffsteer\.worlds\.shapes train --stage itm"):
        rewards.load("shapes-itm", pretrained=tmp_path)
