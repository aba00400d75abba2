"""`python -m diffsteer.worlds.shapes train`: the shipped recipe, shrunk to a few steps and tiny models, writes a
diffusers folder that loads, a CLIP the reward loads, and the losses of every stage."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline

import diffsteer.rewards as rewards
from diffsteer.worlds.shapes.__main__ import main


ROOT = Path(__file__).resolve().parents[1]


def _tiny_recipe(path: Path, steps: int = 2) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "shapes.yaml").read_text())
    config["data"]["scenes"] = 24
    for stage in ("vae", "decoder", "corners", "unet", "clip", "negclip", "itm", "detect"):
        config[stage].update(steps=steps, batch_size=4)
    config["unet"]["warmup_steps"] = config["clip"]["warmup_steps"] = 1
    config["vae"]["model"].update(block_out_channels=[8, 8, 8], norm_num_groups=4)
    config["unet"]["model"].update(block_out_channels=[16, 16, 16], norm_num_groups=8, cross_attention_dim=16)
    config["text_encoder"].update(hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    config["clip"]["vision"].update(width=32, layers=1, head_width=16)
    config["clip"]["text"].update(width=16, layers=1)
    config["itm"].update(scenes=24, warmup_steps=1)
    config["negclip"].update(scenes=24, warmup_steps=1)
    config["itm"]["model"].update(width=16, vision_layers=1, text_layers=1, heads=2)
    config["detect"].update(scenes=24, warmup_steps=1)
    config["detect"]["model"].update(widths=[8, 8])
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_writes_a_loadable_model_a_clip_and_every_stage_losses(tmp_path):
    recipe = _tiny_recipe(tmp_path / "recipe.yaml")
    out, cache = tmp_path / "weights", tmp_path / "cache"
    assert main(["train", "--config", str(recipe), "--out", str(out), "--cache", str(cache)]) == 0
    log = json.loads((out / "pipeline" / "training_log.json").read_text())
    assert list(log) == ["vae", "decoder", "corners", "unet"]
    assert all(len(log[stage]["losses"]) >= 1 for stage in log)
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline")
    assert pipe.vae.config.scaling_factor == log["unet"]["scaling_factor"]
    image = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert image.images.shape == (1, 64, 64, 3)
    clip_log = json.loads((out / "clip" / "training_log.json").read_text())
    assert len(clip_log["clip"]["losses"]) >= 1
    score = rewards.load("shapes-clip", pretrained=out / "clip")(torch.rand(1, 3, 64, 64), ["a red circle"])
    assert torch.isfinite(score).all()
    negclip_log = json.loads((out / "negclip" / "training_log.json").read_text())
    assert len(negclip_log["negclip"]["losses"]) >= 1
    score = rewards.load("shapes-negclip", pretrained=out / "negclip")(torch.rand(1, 3, 64, 64), ["a red circle"])
    assert torch.isfinite(score).all()
    itm_log = json.loads((out / "itm" / "training_log.json").read_text())
    assert len(itm_log["itm"]["losses"]) >= 1
    score = rewards.load("shapes-itm", pretrained=out / "itm")(torch.rand(1, 3, 64, 64), ["a red circle"])
    assert torch.isfinite(score).all() and score.item() <= 0
    detect_log = json.loads((out / "detect" / "training_log.json").read_text())
    assert len(detect_log["detect"]["losses"]) >= 1
    score = rewards.load("shapes-detect", pretrained=out / "detect")(torch.rand(1, 3, 64, 64), ["a red circle"])
    assert torch.isfinite(score).all() and score.item() <= 0


def test_a_run_stopped_in_every_stage_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Each stage is stopped once after its checkpoint at step 2 of 4 (as a session's end would stop it) and the run
    goes on with `--resume`: every weight file equals an uninterrupted run's byte for byte, and so do the losses."""
    from diffsteer.worlds.shapes import training

    recipe = _tiny_recipe(tmp_path / "recipe.yaml", steps=4)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    base = ["train", "--config", str(recipe), "--checkpoint-every", "2"]
    assert main([*base, "--out", str(straight), "--cache", str(tmp_path / "cache-straight")]) == 0

    stopped: set[str] = set()
    steps_run: Counter[str] = Counter()
    add = training.LossLog.add

    def stop_once(self, step, loss):
        add(self, step, loss)
        steps_run[self.stage] += 1
        if step == 2 and self.stage not in stopped:  # the third step: the checkpoint after two is on disk
            stopped.add(self.stage)
            raise KeyboardInterrupt

    monkeypatch.setattr(training.LossLog, "add", stop_once)
    command = [*base, "--out", str(resumed), "--cache", str(tmp_path / "cache-resumed")]
    for attempt in range(10):  # one stop per stage, then the run that finishes
        try:
            assert main(command if attempt == 0 else [*command, "--resume"]) == 0
            break
        except KeyboardInterrupt:
            continue
    else:
        pytest.fail("the resumed run never finished")
    assert stopped == {"vae", "decoder", "corners", "unet", "clip", "negclip", "itm", "detect"}
    # Steps 0, 1, 2 (stopped), then 2 and 3 again from the checkpoint: a restart from step 0 would run 7.
    assert steps_run == {
        "vae": 5,
        "decoder": 5,
        "corners": 5,
        "unet": 5,
        "clip": 5,
        "negclip": 5,
        "itm": 5,
        "detect": 5,
    }
    weights = sorted(path.relative_to(straight) for path in straight.rglob("*.safetensors"))
    # The autoencoder (after its decoder stage), UNet, text encoder, two CLIPs, matcher and segmenter.
    assert len(weights) == 7
    for path in weights:
        assert (straight / path).read_bytes() == (resumed / path).read_bytes(), path
    for folder in ("pipeline", "clip", "negclip", "itm", "detect"):
        logs = [json.loads((root / folder / "training_log.json").read_text()) for root in (straight, resumed)]
        for stage in logs[0]:
            assert [row["loss"] for row in logs[0][stage]["losses"]] == [
                row["loss"] for row in logs[1][stage]["losses"]
            ]


def test_resume_refuses_a_checkpoint_of_another_stage(tmp_path):
    from diffsteer.worlds.shapes.training import Checkpoint, _GeneratorState

    path = tmp_path / "stage.pt"
    Checkpoint(path, every=1).save_if_due(1, 1, {"generator": _GeneratorState(torch.Generator())})
    with pytest.raises(ValueError, match="not this stage's"):
        Checkpoint(path).resume({"model": torch.nn.Linear(1, 1)})
    with pytest.raises(ValueError, match="every must be at least 1"):
        Checkpoint(path, every=0)


def test_corner_weights_weigh_the_three_by_three_corners_only():
    from diffsteer.worlds.shapes.training import corner_weights

    weights = corner_weights(8, 300.0)
    heavy = weights == 300.0
    assert heavy.sum() == 4 * 9 and (weights[~heavy] == 1).all()
    assert heavy[:3, :3].all() and heavy[-3:, -3:].all() and heavy[:3, -3:].all() and heavy[-3:, :3].all()
    assert not heavy[3:-3].any() and not heavy[:, 3:-3].any()
    with pytest.raises(ValueError, match="corner_weight must be at least 1"):
        corner_weights(8, 0.5)


def test_negclip_loss_matches_its_definition_and_leaves_padding_out():
    """Against the loss written out image by image (softmax over the batch's captions and the image's own unpadded
    false captions, plus the text-to-image direction); a padded slot changes nothing, an unpadded one counts."""
    import math

    from diffsteer.worlds.shapes.training import negclip_loss

    generator = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)  # noqa: E731
    images, positive, negative = unit(3, 8), unit(3, 8), unit(3, 2, 8)
    padding = torch.tensor([[False, False], [False, True], [True, True]])

    def by_hand(negative: torch.Tensor, padding: torch.Tensor) -> float:
        total = 0.0
        for i in range(3):
            row = [5.0 * float(images[i] @ positive[j]) for j in range(3)]
            row += [5.0 * float(images[i] @ negative[i, k]) for k in range(2) if not padding[i, k]]
            column = [5.0 * float(images[j] @ positive[i]) for j in range(3)]
            own = 5.0 * float(images[i] @ positive[i])
            for logits in (row, column):
                total += (math.log(sum(math.exp(v) for v in logits)) - own) / 6
        return total

    def loss(negative: torch.Tensor, padding: torch.Tensor) -> float:
        return negclip_loss(images, positive, negative, padding, torch.tensor(5.0)).item()

    expected = by_hand(negative, padding)
    assert loss(negative, padding) == pytest.approx(expected, rel=1e-5)
    copied = negative.clone()
    copied[2, 0] = positive[2]  # a padded slot holding the true caption: left out
    assert loss(copied, padding) == pytest.approx(expected, rel=1e-6)
    unpadded = padding.clone()
    unpadded[2, 0] = False  # the same slot counted: the true caption now competes with itself
    assert by_hand(copied, unpadded) > expected + 1e-3
    assert loss(copied, unpadded) == pytest.approx(by_hand(copied, unpadded), rel=1e-5)
