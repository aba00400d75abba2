"""`python -m diffsteer.worlds.shapes train`: the shipped recipe, shrunk to a few steps and tiny models, writes a
diffusers folder that loads, a CLIP the reward loads, and the losses of every stage."""

import json
from pathlib import Path

import torch
import yaml
from diffusers import StableDiffusionPipeline

import diffsteer.rewards as rewards
from diffsteer.worlds.shapes.__main__ import main


ROOT = Path(__file__).resolve().parents[1]


def _tiny_recipe(path: Path) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "shapes.yaml").read_text())
    config["data"]["scenes"] = 24
    for stage in ("vae", "decoder", "unet", "clip"):
        config[stage].update(steps=2, batch_size=4)
    config["unet"]["warmup_steps"] = config["clip"]["warmup_steps"] = 1
    config["vae"]["model"].update(block_out_channels=[8, 8, 8], norm_num_groups=4)
    config["unet"]["model"].update(block_out_channels=[16, 16, 16], norm_num_groups=8, cross_attention_dim=16)
    config["text_encoder"].update(hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    config["clip"]["vision"].update(width=32, layers=1, head_width=16)
    config["clip"]["text"].update(width=16, layers=1)
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_writes_a_loadable_model_a_clip_and_every_stage_losses(tmp_path):
    recipe = _tiny_recipe(tmp_path / "recipe.yaml")
    out, cache = tmp_path / "weights", tmp_path / "cache"
    assert main(["train", "--config", str(recipe), "--out", str(out), "--cache", str(cache)]) == 0
    log = json.loads((out / "pipeline" / "training_log.json").read_text())
    assert list(log) == ["vae", "decoder", "unet"]
    assert all(len(log[stage]["losses"]) >= 1 for stage in log)
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline")
    assert pipe.vae.config.scaling_factor == log["unet"]["scaling_factor"]
    image = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert image.images.shape == (1, 64, 64, 3)
    clip_log = json.loads((out / "clip" / "training_log.json").read_text())
    assert len(clip_log["clip"]["losses"]) >= 1
    score = rewards.load("shapes-clip", pretrained=out / "clip")(torch.rand(1, 3, 64, 64), ["a red circle"])
    assert torch.isfinite(score).all()
