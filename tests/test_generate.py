"""`diffsteer generate`: budget planning, the command end to end on a tiny shapes-world model, and its errors."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline

import diffsteer.worlds.shapes as shapes
from diffsteer.cli import main
from diffsteer.generate import plan_budget
from diffsteer.worlds.shapes import components


@pytest.fixture(scope="module")
def tiny_shapes_model(tmp_path_factory):
    """A randomly initialised model of the shapes world's form (grammar tokenizer, CLIP text encoder, UNet,
    AutoencoderKL, DDPM), 32x32 images, saved as a diffusers folder."""
    folder = tmp_path_factory.mktemp("tiny-shapes")
    torch.manual_seed(0)
    tokenizer = components.build_tokenizer(folder / "tokenizer-src")
    pipeline = StableDiffusionPipeline(
        vae=components.build_vae(
            dict(
                block_out_channels=[8, 8, 8],
                down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3,
                latent_channels=4,
                norm_num_groups=4,
                sample_size=32,
            )
        ),
        text_encoder=components.build_text_encoder(
            tokenizer, dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
        ),
        tokenizer=tokenizer,
        unet=components.build_unet(
            dict(
                sample_size=8,
                block_out_channels=[16, 32],
                layers_per_block=1,
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
                cross_attention_dim=16,
                attention_head_dim=4,
                norm_num_groups=8,
            )
        ),
        scheduler=components.build_scheduler(dict(beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


@pytest.fixture
def embedded(tiny_shapes_model, monkeypatch):
    """Make the tiny model the embedded one, so `--model shapes` (the default) loads it."""
    monkeypatch.setattr(shapes, "MODEL_PATH", tiny_shapes_model)
    return tiny_shapes_model


def test_budget_turns_into_particles():
    assert plan_budget("fk", 8, None, 25).num_particles == 8
    assert plan_budget("bon", 4.7, None, 25).num_particles == 4
    assert plan_budget("fk", None, 3, 10).budget == 3
    assert plan_budget("fk", None, None, 10).num_particles == 4  # the default budget
    assert "8 particles x 25 steps = 8x" in plan_budget("fk", 8, None, 25).describe()
    for args, fragment in [
        (("fk", 0.5, None, 25), "--budget must be at least 1"),
        (("fk", 2, 3, 25), "raise --budget to 3"),
        (("fk", 4, 0, 25), "--particles must be at least 1"),
        (("fk", 4, None, 0), "--steps must be at least 1"),
        (("beam", 4, None, 25), "--method must be one of fk, bon"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            plan_budget(*args)


@pytest.mark.parametrize("method", ["fk", "bon"])
def test_generate_writes_images_and_a_summary(embedded, tmp_path, capsys, method):
    out = tmp_path / "out"
    argv = ["generate", "a red circle", "--method", method, "--budget", "2", "--steps", "3", "--seed", "5"]
    assert main([*argv, "--reward", "shapes-eval", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["image.png", "particle-0.png", "particle-1.png", "summary.json"]
    assert set(summary) >= {"prompt", "model", "reward", "method", "budget", "rewards", "ledger", "evaluator", "files"}
    assert summary["method"]["name"] == method and summary["budget"]["num_particles"] == 2
    # A plain sample is 3 steps of a guided UNet call on 2 rows (conditional and unconditional) = 6 rows; two
    # particles spend 2 x 6 = 12.
    assert summary["ledger"]["model_rows"] == 12 and summary["budget"]["plain_denoiser_rows"] == 6
    assert len(summary["rewards"]["particles"]) == 2
    assert set(summary["evaluator"]["selected"]) == {"correct", "checks", "objects"}
    assert len(summary["evaluator"]["particles_correct"]) == 2
    err = capsys.readouterr().err
    assert "budget 2 -> " in err and "2 particles x 3 steps" in err
    # Same seed, same images.
    again = tmp_path / "again"
    assert main([*argv, "--reward", "shapes-eval", "--out", str(again)]) == 0
    assert (again / "image.png").read_bytes() == (out / "image.png").read_bytes()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--reward", "nope"], "Unknown reward 'nope'"),
        (["--model", "/no/such/folder"], "--model '/no/such/folder' could not be loaded"),
        (["--budget", "0.5"], "--budget must be at least 1"),
        (["--particles", "8", "--budget", "4"], "raise --budget to 8"),
    ],
)
def test_bad_input_is_one_line(embedded, capsys, argv, fragment):
    assert main(["generate", "a red circle", "--reward", "shapes-eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffsteer: error: ") and fragment in err[0]


def test_a_prompt_the_tokenizer_cannot_take_is_refused_without_traceback(tiny_shapes_model):
    completed = subprocess.run(
        [sys.executable, "-m", "diffsteer", "generate", "a purple dog", "--model", str(tiny_shapes_model)],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not know 'dog'" in lines[0] and "circle" in lines[0], completed.stderr
