"""Text-to-image generation under a compute budget: what `diffsteer generate` does, as functions that the gallery and
the benchmarks reuse.

The budget is counted in denoiser evaluations: `budget B` spends at most B times what one plain sample of the same
steps and guidance costs. Best-of-N and FK steering both denoise every particle at every step, so each turns B into
floor(B) particles; FK additionally decodes and scores x0-hat at its reward steps, which the ledger reports.

The output folder is written whole or not at all (`diffsteer.output_folder`).
"""

import argparse
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffsteer.methods import FK, BestOfN


METHODS = ("fk", "bon")
DEFAULT_BUDGET = 4.0
SHAPES_MODEL = "shapes"  # the embedded model's name on the command line
# FK steering's settings for `generate` (chosen on training prompts of the shapes world, never the held-out ones).
FK_SETTINGS: dict[str, Any] = {"potential": "diff", "lmbda": 1.0, "interval": 5, "resampling": "systematic"}
# Every particle is denoised in one batch and every decoded particle is kept for the output, so memory grows with N.
# The cap stops a typo such as `--budget 1e9` before any compute instead of in the allocator; `--max-particles`
# raises it for a machine and model that can hold more.
MAX_PARTICLES = 4096
# `torch.Generator.manual_seed` takes 0 .. 2**64 - 1 (a negative seed wraps around to the same streams).
MAX_SEED = 2**64 - 1
# Families with a steering pipeline, as people name them (`diffsteer.pipelines.STEERING_PIPELINES` has the classes).
STEERED_FAMILIES = "Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux"


def plural(count: int, noun: str) -> str:
    """`count` and `noun`, with an "s" unless the count is 1: "1 particle", "4 particles"."""
    return f"{count} {noun}{'s' * (count != 1)}"


@dataclass(frozen=True)
class BudgetPlan:
    """How a method spends a budget: `num_particles` particles of `steps` steps each.

    Attributes:
        method: "fk" or "bon".
        budget: the budget asked for, in plain samples.
        num_particles: particles the method runs.
        steps: denoising steps per particle.
    """

    method: str
    budget: float
    num_particles: int
    steps: int

    @property
    def spent(self) -> float:
        """Denoiser cost in plain samples (each particle costs one plain sample)."""
        return float(self.num_particles)

    def describe(self) -> str:
        name = {"fk": "FK steering", "bon": "best-of-N"}[self.method]
        return (
            f"budget {self.budget:g} -> {name} with {plural(self.num_particles, 'particle')} x "
            f"{plural(self.steps, 'step')} = {self.spent:g}x the denoiser cost of one plain sample"
        )


def plan_budget(
    method: str, budget: float | None, num_particles: int | None, steps: int, max_particles: int = MAX_PARTICLES
) -> BudgetPlan:
    """Turn `--budget` and/or `--particles` into a plan; `ValueError` names the bad argument and the fix.

    Args:
        method: "fk" or "bon".
        budget: denoiser cost allowed, in plain samples (None: `num_particles`, else `DEFAULT_BUDGET`).
        num_particles: particles N (None: floor of the budget).
        steps: denoising steps per particle.
        max_particles: the most particles a plan may take (`--max-particles`).
    """
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}.")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}.")
    if budget is not None and not (math.isfinite(budget) and budget >= 1):
        raise ValueError(f"--budget must be at least 1 (one plain sample), got {budget:g}.")
    if num_particles is not None and num_particles < 1:
        raise ValueError(f"--particles must be at least 1, got {num_particles}.")
    if max_particles < 1:
        raise ValueError(f"--max-particles must be at least 1, got {max_particles}.")
    asked_for = "--particles" if num_particles is not None else f"--budget {budget or DEFAULT_BUDGET:g}"
    if budget is None:
        budget = float(num_particles or DEFAULT_BUDGET)
    if num_particles is None:
        num_particles = math.floor(budget)
    elif num_particles > budget:
        raise ValueError(
            f"--particles {num_particles} costs {plural(num_particles, 'plain sample')}, over --budget {budget:g}; "
            f"raise --budget to {num_particles} or lower --particles."
        )
    if num_particles > max_particles:
        raise ValueError(
            f"{asked_for} asks for {num_particles} particles, over the cap of {max_particles} (every particle is "
            "denoised at once and kept as an image, so memory grows with them); lower it, or raise --max-particles "
            "if this machine holds that many."
        )
    return BudgetPlan(method, float(budget), num_particles, steps)


def make_method(plan: BudgetPlan, **fk_options: Any) -> FK | BestOfN:
    """The method object for a plan (FK with `FK_SETTINGS` overridden by `fk_options`)."""
    if plan.method == "bon":
        return BestOfN(plan.num_particles)
    return FK(plan.num_particles, **{**FK_SETTINGS, **fk_options})


def check_seed(seed: int) -> None:
    """Refuse a seed `torch.Generator.manual_seed` cannot take, or one that only aliases another (a negative one)."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be between 0 and 2**64 - 1 = {MAX_SEED} (torch's seed range), got {seed}.")


def check_guidance_scale(guidance_scale: float) -> None:
    """Refuse NaN, infinite and negative guidance (diffusers would quietly run such values unguided)."""
    if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(
            f"--guidance-scale must be a finite number >= 0 (values <= 1 turn classifier-free guidance off), "
            f"got {guidance_scale:g}."
        )


def check_lmbda(lmbda: float | None, method: str = "fk") -> None:
    """Refuse a non-finite FK tilt (it would fail mid-run in the log-weights), and any `--lmbda` for best-of-N."""
    if lmbda is None:
        return
    if method == "bon":
        raise ValueError("--lmbda is an FK setting; best-of-N has none. Drop --lmbda or pass --method fk.")
    if not math.isfinite(lmbda):
        raise ValueError(f"--lmbda must be a finite number, got {lmbda:g}.")


def resolve_device(device: str | None) -> torch.device:
    """The torch device `--device` names (None: cuda if available, else cpu), checked by putting a tensor on it.

    Raises:
        ValueError: for a name torch does not parse or a device this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"--device {device!r} is not a torch device ({_first_line(error)}); use cpu or cuda."
        ) from None
    if parsed.type == "meta":
        raise ValueError("--device meta holds no data, so it cannot make images; use cpu or cuda.")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: this machine has no CUDA GPU that torch can use; use --device cpu.")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(
            f"--device {device!r}: this machine has {plural(count, 'CUDA GPU')} (cuda:0 .. cuda:{count - 1})."
        )
    try:
        torch.zeros(1, device=parsed)
    except Exception as error:  # torch raises RuntimeError or AssertionError for a backend it was built without
        raise ValueError(f"--device {device!r} is not available here ({_first_line(error)}).") from None
    return parsed


def reward_option(text: str) -> tuple[str, Any]:
    """`--reward-option KEY=JSON` as (key, value), for argparse's `type=`: a malformed one is reported under its flag.

    The value is JSON, so strings need double quotes: `partial=true`, `pretrained='"/path/to/ImageReward.pt"'`.
    """
    key, separator, value = text.partition("=")
    try:
        if not (key and separator):
            raise ValueError
        return key, json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected KEY=JSON such as partial=true or pretrained='\"/path/to/weights\"', got {text!r}"
        ) from None


def reward_options(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The `--reward-option` pairs as keyword options; a key given twice is refused rather than silently replaced."""
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(f"--reward-option {key} is given twice; pass each option once.")
        options[key] = value
    return options


def is_shapes_model(model: str | os.PathLike) -> bool:
    from diffsteer.worlds.shapes import MODEL_PATH

    return str(model) == SHAPES_MODEL or Path(model).resolve() == MODEL_PATH.resolve()


def check_model(model: str | os.PathLike) -> None:
    """Refuse an empty `--model` (a path would read it as the current folder)."""
    if not str(model).strip():
        raise ValueError(f"--model is empty; pass '{SHAPES_MODEL}', a local diffusers folder or a hub id.")


def load_pipeline(model: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """The steering pipeline of `model` ("shapes" for the embedded model, a local folder or a hub id).

    Raises:
        ValueError: one line naming `--model` and what is wrong: an empty name, a folder or hub id without a diffusers
            `model_index.json`, a pipeline class diffsteer cannot steer, or components that fail to load.
    """
    from diffsteer.pipelines import AutoSteeringPipeline
    from diffsteer.worlds.shapes import MODEL_PATH

    check_model(model)
    embedded = str(model) == SHAPES_MODEL
    path = MODEL_PATH if embedded else model
    if embedded and not (MODEL_PATH / "model_index.json").is_file():
        raise ValueError(f"The embedded shapes model is missing from {MODEL_PATH}; reinstall diffsteer.")
    # Loading bars of diffusers and transformers would bury the one progress bar that matters (denoising).
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    _check_steerable(model, path)
    try:
        pipeline = AutoSteeringPipeline.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {model!r} could not be loaded: {_first_line(error)}") from None
    # disable=None: tqdm shows the bar on a terminal only, so logs and pipes get clean lines.
    pipeline.set_progress_bar_config(desc="denoising", leave=False, disable=None)
    return pipeline.to(device)


def _check_steerable(model: str | os.PathLike, path: str | os.PathLike) -> None:
    """Read `model_index.json` and refuse a pipeline class without a steering twin (an unconditional DDPM, ...)."""
    from diffusers import DiffusionPipeline

    from diffsteer.pipelines.auto_steering import STEERING_PIPELINES

    try:
        config = DiffusionPipeline.load_config(path)
    except (OSError, ValueError) as error:
        local = Path(path)
        if local.is_dir():
            where = "a local folder without a diffusers model_index.json"
        elif local.exists():
            where = "a file, not a diffusers folder"
        else:
            where = "not a local folder; hub ids need network access"
        raise ValueError(f"--model {model!r} could not be loaded ({where}): {_first_line(error)}") from None
    class_name = config.get("_class_name")
    if class_name not in STEERING_PIPELINES:
        raise ValueError(
            f"--model {model!r} is a diffusers {class_name}, which diffsteer cannot steer: it steers text-to-image "
            f"pipelines of {STEERED_FAMILIES}."
        )


def check_prompt(pipeline: Any, prompt: str) -> None:
    """Refuse a prompt the model's tokenizer cannot take: words it does not know, or too many tokens."""
    tokenizer = getattr(pipeline, "tokenizer", None)
    if not prompt.strip():
        raise ValueError("The prompt is empty; pass a description such as 'a red circle left of a blue square'.")
    if tokenizer is None:
        return
    unknown_id = tokenizer.unk_token_id
    unknown = [word for word in prompt.split() if unknown_id in tokenizer(word, add_special_tokens=False).input_ids]
    if unknown:
        vocabulary = sorted(token.removesuffix("</w>") for token in tokenizer.get_vocab() if token.endswith("</w>"))
        known = (
            f" Its words: {' '.join(w for w in vocabulary if len(w) > 1 or w == 'a')}."
            if len(vocabulary) < 200
            else ""
        )
        raise ValueError(f"The model's tokenizer does not know {', '.join(map(repr, unknown))}.{known}")
    length = len(tokenizer(prompt).input_ids)
    if length > tokenizer.model_max_length:
        raise ValueError(
            f"The prompt is {length} tokens; the model's tokenizer takes at most {tokenizer.model_max_length}."
        )


def generate(
    pipeline: Any, prompt: str, reward: Any, method: FK | BestOfN, *, steps: int, guidance_scale: float, seed: int
) -> Any:
    """One steered generation: the pipeline's output (images, particles, rewards, ledger)."""
    generator = torch.Generator(pipeline.device).manual_seed(seed)
    return pipeline(
        prompt,
        reward=reward,
        method=method,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
    )


def verdicts(images: list[Any], prompt: str) -> list[dict[str, Any]] | str:
    """The shapes evaluator's verdict on each PIL image, or why it cannot judge the prompt."""
    import numpy as np

    from diffsteer.worlds.shapes import evaluate, parse

    try:
        parse(prompt)
    except ValueError as error:
        return f"not judged: {error}"
    out = []
    for image in images:
        verdict = evaluate(np.asarray(image.convert("RGB")), prompt)
        out.append(
            {
                "correct": verdict.correct,
                "checks": verdict.checks,
                "objects": [
                    f"{obj.size} {obj.color} {obj.shape} at ({obj.x:.0f}, {obj.y:.0f})" for obj in verdict.objects
                ],
            }
        )
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def summarize(
    output: Any,
    *,
    prompt: str,
    model: str,
    reward_name: str,
    plan: BudgetPlan,
    method: FK | BestOfN,
    guidance_scale: float,
    seed: int,
    judge: bool,
    reward_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON summary of a run (everything but the file names)."""
    ledger = {key: value for key, value in asdict(output.cost).items() if not key.startswith("_")}
    selected = int(output.selected_indices[0, 0])
    summary: dict[str, Any] = {
        "prompt": prompt,
        "model": model,
        "reward": reward_name,
        "reward_options": dict(reward_options or {}),
        "method": {"name": plan.method, "settings": asdict(method)},
        "budget": {
            "requested": plan.budget,
            "spent": plan.spent,
            "num_particles": plan.num_particles,
            "steps": plan.steps,
            "plain_denoiser_rows": ledger["model_rows"] // plan.num_particles,
            "how": plan.describe(),
        },
        "guidance_scale": guidance_scale,
        "seed": seed,
        "rewards": {"selected": float(output.rewards[0, selected]), "particles": output.rewards[0].tolist()},
        "selected_particle": selected,
        "ledger": ledger,
        "changes": list(output.changes),
    }
    if judge:
        particle_verdicts = verdicts(output.particles, prompt)
        if isinstance(particle_verdicts, str):
            summary["evaluator"] = particle_verdicts
        else:
            summary["evaluator"] = {
                "selected": particle_verdicts[selected],
                "particles_correct": [v["correct"] for v in particle_verdicts],
            }
    return summary
