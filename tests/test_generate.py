"""`diffsteer generate`: budget planning, the command end to end on a tiny shapes-world model, its errors, and how
it writes its output folder (whole or not at all)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, StableDiffusionPipeline, UNet2DModel
from PIL import Image

import diffsteer.generate as gen
import diffsteer.output_folder as output_folder
import diffsteer.rewards
import diffsteer.worlds.shapes as shapes
from diffsteer.cli import main
from diffsteer.generate import build_method, describe_method, plan_budget
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


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, so the default --out (./diffsteer-output) and its temporary folder land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command loads the model: input checks must come before any compute."""

    def load(*args, **kwargs):
        pytest.fail("the model loaded before the bad input was refused")

    monkeypatch.setattr(gen, "load_pipeline", load)


def run(out: Path, *args: str) -> int:
    """`diffsteer generate 'a red circle'` on shapes-eval into `out`, 2 steps unless told."""
    steps = [] if "--steps" in args else ["--steps", "2"]
    return main(["generate", "a red circle", "--reward", "shapes-eval", *steps, *args, "--out", str(out)])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffsteer: error: "), err
    return lines[0]


def test_budget_turns_into_particles():
    def particles(*args):
        return build_method(plan_budget(*args)).num_particles

    def described(*args):
        plan = plan_budget(*args)
        return describe_method(build_method(plan), plan)

    assert particles("fk", 8, None, 25) == 8
    assert particles("bon", 4.7, None, 25) == 4
    assert plan_budget("fk", None, 3, 10).budget == 3
    assert particles("fk", None, 3, 10) == 3
    assert particles("fk", None, None, 10) == 4  # the default budget
    assert "8 particles x 25 steps = 8x" in described("fk", 8, None, 25)
    assert "with 1 particle x 1 step = 1x" in described("bon", 1, None, 1)
    assert particles("fk", 4096, None, 25) == 4096  # the cap itself is allowed
    assert particles("fk", 5000, None, 25, 5000) == 5000
    for args, fragment in [
        (("fk", 0.5, None, 25), "--budget must be at least 1"),
        (("fk", 2, 3, 25), "raise --budget to 3"),
        (("fk", 4, 0, 25), "--particles must be at least 1"),
        (("fk", 4, None, 0), "--steps must be at least 1"),
        (("beam", 4, None, 25), "--method must be one of bon, fk, zero-order, paths, svdd, rbf"),
        (("svdd", 4, 2, 25), "--particles is a count of best-of-N and FK; svdd turns --budget"),
        (("fk", 4097, None, 25), "--budget 4097 asks for 4097 particles, over the cap of 4096"),
        (("fk", None, 4097, 25), "--particles asks for 4097 particles"),
        (("fk", 4, None, 25, 0), "--max-particles must be at least 1"),
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
    "method, budget, settings",
    [
        ("zero-order", "3", {"num_rounds": 1, "num_neighbors": 2}),
        ("paths", "6", {"num_paths": 2, "num_branches": 2}),  # 3 steps: the search starts at the end, no hop
        ("svdd", "2", {"num_children": 2, "num_chains": 1}),
        ("rbf", "2", {"quota": 2, "num_chains": 1, "init_particles": 2}),
    ],
)
def test_every_search_method_runs_from_the_cli_within_its_budget(embedded, tmp_path, capsys, method, budget, settings):
    out = tmp_path / "out"
    argv = ["generate", "a red circle", "--method", method, "--budget", budget, "--steps", "3"]
    assert main([*argv, "--reward", "shapes-eval", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"]["name"] == method
    assert {key: summary["method"]["settings"][key] for key in settings} == settings
    budget_summary = summary["budget"]
    assert budget_summary["within"] is True and budget_summary["requested"] == float(budget)
    # 3 steps of a guided call on 2 rows per particle: a plain sample is 6 rows.
    assert budget_summary["plain_denoiser_rows"] == 6
    assert summary["ledger"]["model_rows"] <= float(budget) * 6
    assert budget_summary["spent"] == summary["ledger"]["model_rows"] / 6
    assert budget_summary["spent_wall_time"] > 0
    assert summary["ledger"]["decode_rows"] > 0 and summary["ledger"]["decode_time_s"] > 0
    assert (out / "image.png").is_file()
    assert f"budget {budget} -> " in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--reward", "nope"], "Unknown reward 'nope'"),
        (["--budget", "0.5"], "--budget must be at least 1"),
        (["--particles", "8", "--budget", "4"], "raise --budget to 8"),
        (["--budget", "1e9"], "--budget 1e+09 asks for 1000000000 particles, over the cap of 4096"),
        (["--particles", "2000000000", "--budget", "2e9"], "--particles asks for 2000000000 particles"),
        (["--particles", "5", "--max-particles", "4"], "over the cap of 4"),
        (["--device", "foo"], "--device 'foo' is not a torch device"),
        (["--device", "cuda:99"], "--device 'cuda:99'"),  # no such GPU, with or without a GPU
        (["--device", "meta"], "--device meta holds no data"),
        (["--guidance-scale", "nan"], "--guidance-scale must be a finite number >= 0"),
        (["--guidance-scale", "inf"], "--guidance-scale must be a finite number >= 0"),
        (["--guidance-scale", "-1"], "--guidance-scale must be a finite number >= 0"),
        (["--lmbda", "nan"], "--lmbda must be a finite number, got nan"),
        (["--lmbda", "inf"], "--lmbda must be a finite number, got inf"),
        (
            ["--lmbda", "1", "--method", "bon"],
            "--lmbda is a setting of FK, SVDD, guidance, twisted SMC and noise optimisation; best-of-N has none",
        ),
        (["--method", "zero-order", "--budget", "2"], "budget 2 is too small for zero-order search"),
        (["--method", "svdd", "--method-option", "num_children=3"], "num_children is what the budget decides"),
        (["--method", "svdd", "--method-option", "radius=1"], "--method-option radius: svdd takes"),
        (["--method-option", "lmbda"], "argument --method-option: expected KEY=JSON"),
        (["--method-option", "lmbda=2", "--lmbda", "2"], "--lmbda and --method-option lmbda=... are the same"),
        (["--seed", "99999999999999999999999"], "--seed must be between 0 and 2**64 - 1"),
        (["--seed", str(2**64)], "--seed must be between 0 and 2**64 - 1"),
        (["--seed", "-1"], "--seed must be between 0 and 2**64 - 1"),
        (["--model", ""], "--model is empty"),
        (["--out", ""], "--out is empty"),
        (["--out", "/proc/x"], "--out '/proc/x' cannot be written: no new folder can be made in /proc"),
        (["--reward-option", "partial"], "argument --reward-option: expected KEY=JSON"),
        (["--reward-option", "partial=yes"], "argument --reward-option: expected KEY=JSON"),
        (["--reward-option", "foo=1"], "Reward 'shapes-eval': got an unexpected keyword argument 'foo'"),
        (["--reward-option", "partial=true", "--reward-option", "partial=false"], "--reward-option partial is given"),
        (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
        (["--method", "beam"], "argument --method: invalid choice: 'beam'"),
    ],
)
def test_bad_input_is_one_line_before_the_model_loads(in_tmp, no_model_load, capsys, argv, fragment):
    assert main(["generate", "a red circle", "--reward", "shapes-eval", *argv]) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert list(in_tmp.iterdir()) == []  # the --out check left nothing behind


def test_cuda_on_a_machine_without_a_gpu_is_one_line(in_tmp, no_model_load, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", "a red circle", "--device", "cuda"]) == 2
    assert "--device 'cuda': this machine has no CUDA GPU" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--model", "/no/such/folder"], "--model '/no/such/folder' could not be loaded (not a local folder"),
        (["--model", "someone/some-model"], "--model 'someone/some-model' could not be loaded (not a local folder"),
        ([], "The prompt is 25 tokens; the model's tokenizer takes at most 20."),
    ],
)
def test_failed_loads_and_long_prompts_are_one_line_without_third_party_output(
    embedded, in_tmp, capsys, recwarn, argv, fragment
):
    """The hub's warnings and transformers' log line about long prompts would precede the error; the command mutes
    them (a log record reaches the libraries' stderr handlers, and this test's, only at their verbosity), and only
    for its run."""
    import logging

    import transformers.utils.logging

    records: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = records.append
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "huggingface_hub")]
    for logger in loggers:
        logger.addHandler(listener)
    level = transformers.utils.logging.get_verbosity()
    prompt = " and ".join(["a red circle"] * 6 if not argv else ["a red circle"])
    try:
        assert main(["generate", prompt, "--reward", "shapes-eval", *argv]) == 2
    finally:
        for logger in loggers:
            logger.removeHandler(listener)
    assert fragment in one_error_line(capsys.readouterr().err)
    assert [record.getMessage() for record in records] == []
    assert [str(warning.message) for warning in recwarn] == []
    assert transformers.utils.logging.get_verbosity() == level


def test_a_diffusers_folder_without_a_steering_pipeline_is_named(in_tmp, capsys):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(in_tmp / "ddpm")
    assert main(["generate", "a red circle", "--model", str(in_tmp / "ddpm"), "--out", str(in_tmp / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is a diffusers DDPMPipeline, which diffsteer cannot steer" in line
    assert "Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux" in line


def test_an_existing_file_at_out_is_refused_before_the_model_loads(tmp_path, no_model_load, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    assert run(out) == 2
    assert f"--out {str(out)!r} is a file" in one_error_line(capsys.readouterr().err)
    assert out.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [out]


def test_a_folder_of_other_files_is_never_replaced(tmp_path, no_model_load, capsys):
    out = tmp_path / "documents"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "image.png").write_text("also mine")
    assert run(out) == 2
    assert "holds files diffsteer did not write ('notes.txt')" in one_error_line(capsys.readouterr().err)
    assert snapshot(out) == {"notes.txt": b"mine", "image.png": b"also mine"}


def test_files_that_come_into_out_during_the_run_are_never_replaced(earlier_output, monkeypatch, capsys):
    out, before = earlier_output
    generate = gen.generate

    def someone_writes_into_out(*args, **kwargs):
        output = generate(*args, **kwargs)
        (out / "notes.txt").write_text("mine")
        return output

    monkeypatch.setattr(gen, "generate", someone_writes_into_out)
    assert run(out, "--particles", "2", "--seed", "2") == 2
    assert "holds files diffsteer did not write ('notes.txt')" in capsys.readouterr().err.strip().splitlines()[-1]
    assert snapshot(out) == {**before, "notes.txt": b"mine"} and sorted(out.parent.iterdir()) == [out]


def test_a_second_run_with_fewer_particles_leaves_no_stale_files(embedded, tmp_path):
    out = tmp_path / "out"
    assert run(out, "--particles", "3", "--seed", "1") == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "image.png",
        "particle-0.png",
        "particle-1.png",
        "particle-2.png",
        "summary.json",
    ]
    assert run(out, "--particles", "1", "--seed", "2") == 0
    assert sorted(path.name for path in out.iterdir()) == ["image.png", "particle-0.png", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["seed"] == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no temporary or old folder left
    (tmp_path / "plain").mkdir()  # the output folder has the permissions of any new folder
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_image_png_is_the_selected_particle_file(embedded, tmp_path, monkeypatch):
    """Even when the pipeline's `images` (a second decode of the selected particle) differ from its particle,
    image.png is that particle's file, byte for byte."""
    generate = gen.generate

    def other_images(*args, **kwargs):
        output = generate(*args, **kwargs)
        output.images = [Image.new("RGB", output.images[0].size, (0, 0, 0))]
        return output

    monkeypatch.setattr(gen, "generate", other_images)
    out = tmp_path / "out"
    assert run(out, "--particles", "3") == 0
    selected = json.loads((out / "summary.json").read_text())["selected_particle"]
    assert (out / "image.png").read_bytes() == (out / f"particle-{selected}.png").read_bytes()
    assert Image.open(out / "image.png").getextrema() != ((0, 0), (0, 0), (0, 0))


def test_one_particle_and_one_step_read_in_the_singular(embedded, tmp_path, capsys):
    assert run(tmp_path / "out", "--particles", "1", "--steps", "1") == 0
    captured = capsys.readouterr()
    assert (
        "budget 1 -> FK steering with 1 particle x 1 step = 1x the denoiser cost of one plain sample" in captured.err
    )
    assert f"), 1 particle and {tmp_path / 'out' / 'summary.json'}" in captured.out


def test_summary_json_is_strict_json(embedded, tmp_path, monkeypatch):
    """A reward of -inf (zero weight, allowed) is written as null, not as -Infinity, which is not JSON."""
    generate = gen.generate

    def minus_inf(*args, **kwargs):
        output = generate(*args, **kwargs)
        output.rewards[0, 1] = float("-inf")
        return output

    monkeypatch.setattr(gen, "generate", minus_inf)
    assert run(tmp_path / "out", "--particles", "2", "--method", "bon") == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["rewards"]["particles"][1] is None


def test_reward_options_reach_the_reward_and_the_summary(embedded, tmp_path, monkeypatch):
    calls = []
    load = diffsteer.rewards.load

    def spy(name, **options):
        calls.append((name, options))
        return load(name, **options)

    monkeypatch.setattr(diffsteer.rewards, "load", spy)
    assert run(tmp_path / "out", "--particles", "2", "--reward-option", "partial=true") == 0
    assert calls == [("shapes-eval", {"partial": True})]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["reward_options"] == {"partial": True}


def send_sigint_on_call(module: torch.nn.Module, call: int) -> None:
    """A real SIGINT (what Ctrl-C sends) to this process during the module's `call`-th forward pass."""
    calls = []

    def hook(*args):
        calls.append(None)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)

    module.register_forward_hook(hook)


@pytest.fixture
def earlier_output(embedded, tmp_path, capsys):
    """An earlier run's folder and its bytes."""
    out = tmp_path / "out"
    assert run(out, "--particles", "3", "--seed", "1") == 0
    capsys.readouterr()
    return out, snapshot(out)


def test_ctrl_c_during_denoising_exits_130_and_keeps_the_earlier_output(earlier_output, monkeypatch, capsys):
    out, before = earlier_output
    load = gen.load_pipeline

    def load_and_interrupt(*args, **kwargs):
        pipeline = load(*args, **kwargs)
        send_sigint_on_call(pipeline.unet, 2)
        return pipeline

    monkeypatch.setattr(gen, "load_pipeline", load_and_interrupt)
    assert run(out, "--particles", "2", "--seed", "2", "--steps", "4") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("budget 2 -> ") and err[1:] == ["diffsteer: interrupted"]
    assert snapshot(out) == before and sorted(out.parent.iterdir()) == [out]


@pytest.mark.parametrize(
    "failure, code, message",
    [
        (KeyboardInterrupt(), 130, "diffsteer: interrupted"),
        (
            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
            2,
            "diffsteer: error: could not write particle-2.png of --out {out!r} (No space left on device); the "
            "earlier output is unchanged.",
        ),
    ],
)
def test_ctrl_c_or_a_full_disk_while_writing_keeps_the_earlier_output(
    earlier_output, monkeypatch, capsys, failure, code, message
):
    out, before = earlier_output
    write = output_folder._write_file
    written = []

    def fail_on_third(path, data):
        if len(written) == 2:
            raise failure
        write(path, data)
        written.append(path.name)

    monkeypatch.setattr(output_folder, "_write_file", fail_on_third)
    assert run(out, "--particles", "4", "--seed", "2") == code
    assert written == ["particle-0.png", "particle-1.png"]
    assert capsys.readouterr().err.strip().splitlines()[-1] == message.format(out=str(out))
    assert snapshot(out) == before and sorted(out.parent.iterdir()) == [out]


def test_a_full_disk_on_a_first_run_writes_nothing(embedded, tmp_path, monkeypatch, capsys):
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(output_folder, "_write_file", full)
    assert run(tmp_path / "out") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith("(No space left on device); nothing was written.") and "particle-0.png" in line
    assert list(tmp_path.iterdir()) == []


def test_a_failed_swap_puts_the_earlier_output_back(earlier_output, monkeypatch, capsys):
    out, before = earlier_output
    rename = os.rename

    def second_rename_fails(source, target):
        if Path(target) == out and Path(source).suffix == ".tmp":  # the new folder in, after the old went aside
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        rename(source, target)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    assert run(out, "--particles", "2", "--seed", "2") == 2
    assert "Input/output error" in capsys.readouterr().err.strip().splitlines()[-1]
    assert snapshot(out) == before and sorted(out.parent.iterdir()) == [out]


def test_ctrl_c_during_the_swap_is_held_until_the_swap_is_done(earlier_output, monkeypatch, capsys):
    """Ctrl-C between the two renames would leave no --out; it is held, so --out is the new run, whole."""
    out, before = earlier_output
    rename = os.rename

    def interrupt_first_rename(source, target):
        if Path(source) == out:  # the old folder aside: the swap has begun
            os.kill(os.getpid(), signal.SIGINT)
        rename(source, target)

    monkeypatch.setattr(os, "rename", interrupt_first_rename)
    assert run(out, "--particles", "2", "--seed", "2") == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "diffsteer: interrupted"
    assert sorted(path.name for path in out.iterdir()) == [
        "image.png",
        "particle-0.png",
        "particle-1.png",
        "summary.json",
    ]
    assert json.loads((out / "summary.json").read_text())["seed"] == 2 and snapshot(out) != before
    assert sorted(out.parent.iterdir()) == [out]


def test_out_of_memory_is_one_line(embedded, tmp_path, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    monkeypatch.setattr(gen, "generate", out_of_memory)
    assert run(tmp_path / "out") == 2
    assert "out of memory; lower --budget or --particles" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_type_error_is_one_line(embedded, tmp_path, monkeypatch, capsys):
    def wrong_type(*args, **kwargs):
        raise TypeError("reward must be a Reward, a callable or a registered name, got int")

    monkeypatch.setattr(gen, "generate", wrong_type)
    assert run(tmp_path / "out") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "diffsteer: error: reward must be a Reward, a callable or a registered name, got int"
    )


def test_a_prompt_the_tokenizer_cannot_take_is_refused_without_traceback(tiny_shapes_model, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "diffsteer", "generate", "a purple dog", "--model", str(tiny_shapes_model)],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not know 'dog'" in lines[0] and "circle" in lines[0], completed.stderr


def test_sigint_during_denoising_ends_the_command_with_one_line_and_exit_130(earlier_output, tiny_shapes_model):
    """The real thing: `python -m diffsteer generate` in its own process, sent SIGINT while it denoises (999 steps,
    so it is still denoising when the signal comes; 1000 would end at once, since with the pipeline's steps_offset
    of 1 they reach timestep 1000)."""
    out, before = earlier_output
    argv = ["generate", "a red circle", "--model", str(tiny_shapes_model), "--method", "bon", "--particles", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "diffsteer", *argv, "--steps", "999", "--reward", "shapes-eval", "--out", str(out)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        cwd=out.parent,
    )
    plan = process.stderr.readline()  # printed just before denoising starts
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert plan.startswith("budget 2 -> best-of-N") and stderr.strip().splitlines() == ["diffsteer: interrupted"]
    assert stdout == "" and snapshot(out) == before and sorted(out.parent.iterdir()) == [out]
