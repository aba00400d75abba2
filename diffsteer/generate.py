"""Text-to-image generation under a compute budget: what `diffsteer generate` does, as functions that the gallery and
the benchmarks reuse.

The budget is counted in denoiser evaluations: `budget B` spends at most B times what one plain sample of the same
steps and guidance costs. Every method turns B into its own counts (`diffsteer.make_method`, whose rules
`diffsteer.methods.BUDGET_RULES` states); best-of-N and FK turn it into floor(B) particles, or take `--particles`.
The ledger also reports what a denoiser count hides (rewards, decodes, their time).

The output folder is written whole or not at all (`diffsteer.output_folder`).
"""

import argparse
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffsteer.methods import BUDGET_RULES, DEFAULT_SETTINGS, METHOD_CLASSES, METHOD_NAMES, make_method


METHODS = METHOD_NAMES
PARTICLE_METHODS = ("fk", "bon")  # the methods whose count is particles (`--particles`)
DEFAULT_BUDGET = 4.0
SHAPES_MODEL = "shapes"  # the embedded model's name on the command line
# FK steering's settings for `generate` (chosen on training prompts of the shapes world, never the held-out ones).
FK_SETTINGS: dict[str, Any] = DEFAULT_SETTINGS["fk"]
METHOD_TITLES = {
    "bon": "best-of-N",
    "fk": "FK steering",
    "zero-order": "zero-order search",
    "paths": "search over paths",
    "svdd": "SVDD",
    "rbf": "rollover budget forcing",
    "guidance": "reward-gradient guidance",
    "twisted": "twisted SMC",
    "noise-opt": "noise optimisation",
}
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
    """A method, the budget it may spend, and the steps of one plain sample.

    Attributes:
        method: a name in `METHODS`.
        budget: the budget asked for, in plain samples.
        num_particles: particles asked for with `--particles` (best-of-N and FK only), else None (the budget decides).
        steps: denoising steps of one plain sample (and of every trajectory).
    """

    method: str
    budget: float
    num_particles: int | None
    steps: int


def plan_budget(
    method: str, budget: float | None, num_particles: int | None, steps: int, max_particles: int = MAX_PARTICLES
) -> BudgetPlan:
    """Check `--method`, `--budget`, `--particles` and `--steps` together; `ValueError` names the bad argument and
    the fix.

    Args:
        method: a name in `METHODS`.
        budget: denoiser cost allowed, in plain samples (None: `num_particles`, else `DEFAULT_BUDGET`).
        num_particles: particles N for best-of-N and FK (None: the budget decides).
        steps: denoising steps per plain sample.
        max_particles: the most particles best-of-N or FK may take (`--max-particles`).
    """
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}.")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}.")
    if budget is not None and not (math.isfinite(budget) and budget >= 1):
        raise ValueError(f"--budget must be at least 1 (one plain sample), got {budget:g}.")
    if num_particles is not None and method not in PARTICLE_METHODS:
        raise ValueError(
            f"--particles is a count of best-of-N and FK; {method} turns --budget into its own counts "
            f"({BUDGET_RULES[method]}). Drop --particles, or set a count with --method-option."
        )
    if num_particles is not None and num_particles < 1:
        raise ValueError(f"--particles must be at least 1, got {num_particles}.")
    if max_particles < 1:
        raise ValueError(f"--max-particles must be at least 1, got {max_particles}.")
    asked_for = "--particles" if num_particles is not None else f"--budget {budget or DEFAULT_BUDGET:g}"
    if budget is None:
        budget = float(num_particles or DEFAULT_BUDGET)
    if num_particles is not None and num_particles > budget:
        raise ValueError(
            f"--particles {num_particles} costs {plural(num_particles, 'plain sample')}, over --budget {budget:g}; "
            f"raise --budget to {num_particles} or lower --particles."
        )
    particles = num_particles if num_particles is not None else math.floor(budget)
    if method in PARTICLE_METHODS and particles > max_particles:
        raise ValueError(
            f"{asked_for} asks for {particles} particles, over the cap of {max_particles} (every particle is "
            "denoised at once and kept as an image, so memory grows with them); lower it, or raise --max-particles "
            "if this machine holds that many."
        )
    return BudgetPlan(method, float(budget), num_particles, steps)


def build_method(plan: BudgetPlan, options: dict[str, Any] | None = None, num_model_calls: int | None = None) -> Any:
    """The method of a plan, with `options` (`--method-option`, `--lmbda`) over its defaults.

    Raises:
        ValueError: for a budget below the method's minimum, or a setting it does not take (naming both).
    """
    options = dict(options or {})
    if plan.num_particles is not None:
        cls = METHOD_CLASSES[plan.method]
        return cls(plan.num_particles, **_checked_options(plan.method, options, DEFAULT_SETTINGS), budget=plan.budget)
    _checked_options(plan.method, options, {})
    return make_method(
        plan.method, budget=plan.budget, num_inference_steps=plan.steps, num_model_calls=num_model_calls, **options
    )


def _checked_options(method: str, options: dict[str, Any], defaults: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`options` over `defaults[method]`, with an option the method's class does not take refused by name."""
    import inspect

    accepted = set(inspect.signature(METHOD_CLASSES[method]).parameters) - {"budget"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"--method-option {', '.join(unknown)}: {method} takes {', '.join(sorted(accepted))}.")
    return {**defaults.get(method, {}), **options}


def describe_method(method: Any, plan: BudgetPlan, num_model_calls: int | None = None) -> str:
    """One line: the budget, the method and its counts, and the denoiser cost it plans, in plain samples."""
    calls = plan.steps if num_model_calls is None else num_model_calls
    spent = method.model_passes(plan.steps, calls) / calls
    counts = {
        "bon": lambda m: plural(m.num_particles, "particle"),
        "fk": lambda m: plural(m.num_particles, "particle"),
        "guidance": lambda m: plural(m.num_particles, "particle"),
        "twisted": lambda m: plural(m.num_particles, "particle"),
        "noise-opt": lambda m: f"{plural(m.num_chains, 'chain')} of {plural(m.num_iterations, 'iteration')}",
        "zero-order": lambda m: f"{plural(m.num_rounds, 'round')} of {plural(m.num_neighbors, 'neighbour')}",
        "paths": lambda m: f"{plural(m.num_paths, 'path')} of {plural(m.num_branches, 'branch')}".replace(
            "branchs", "branches"
        ),
        "svdd": lambda m: f"{plural(m.num_chains, 'chain')} of {plural(m.num_children, 'child')} per step".replace(
            "childs", "children"
        ),
        "rbf": lambda m: f"{plural(m.num_chains, 'chain')} of {plural(m.quota, 'try')} per step".replace(
            "trys", "tries"
        ),
    }[plan.method](method)
    return (
        f"budget {plan.budget:g} -> {METHOD_TITLES[plan.method]} with {counts} x {plural(plan.steps, 'step')} = "
        f"{spent:.4g}x the denoiser cost of one plain sample"
    )


def _key_json(text: str, examples: str) -> tuple[str, Any]:
    """`KEY=JSON` as (key, value); an `argparse.ArgumentTypeError` (reported under its flag) citing `examples`."""
    key, separator, value = text.partition("=")
    try:
        if not (key and separator):
            raise ValueError
        return key, json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY=JSON such as {examples}, got {text!r}") from None


def method_option(text: str) -> tuple[str, Any]:
    """`--method-option KEY=JSON` as (key, value), for argparse's `type=`."""
    return _key_json(text, "num_neighbors=4 or selection='\"sample\"'")


def method_options(pairs: Iterable[tuple[str, Any]], lmbda: float | None = None) -> dict[str, Any]:
    """The `--method-option` pairs (and `--lmbda`) as settings; a key given twice is refused."""
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(f"--method-option {key} is given twice; pass each option once.")
        options[key] = value
    if lmbda is not None:
        if "lmbda" in options:
            raise ValueError("--lmbda and --method-option lmbda=... are the same setting; pass one.")
        options["lmbda"] = lmbda
    return options


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
    """Refuse a non-finite tilt (it would fail mid-run in the log-weights), and `--lmbda` for a method without one."""
    if lmbda is None:
        return
    if method not in ("fk", "svdd", "guidance", "twisted", "noise-opt"):
        raise ValueError(
            f"--lmbda is a setting of FK, SVDD, guidance, twisted SMC and noise optimisation; "
            f"{METHOD_TITLES.get(method, method)} has none. Drop --lmbda or pass --method fk."
        )
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
    return _key_json(text, "partial=true or pretrained='\"/path/to/weights\"'")


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
    pipeline: Any, prompt: str, reward: Any, method: Any, *, steps: int, guidance_scale: float, seed: int
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
    from diffsteer.worlds.shapes.evaluator import OTHER

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
                    f"{obj.size} {obj.color} {'shape of no named kind' if obj.shape == OTHER else obj.shape} "
                    f"at ({obj.x:.0f}, {obj.y:.0f})"
                    for obj in verdict.objects
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
    method: Any,
    guidance_scale: float,
    seed: int,
    judge: bool,
    reward_options: dict[str, Any] | None = None,
    num_model_calls: int | None = None,
) -> dict[str, Any]:
    """The JSON summary of a run (everything but the file names); `num_model_calls` is one plain sample's model calls
    (defaults to the steps)."""
    cost = output.cost
    ledger = cost.as_dict()
    selected = int(output.selected_indices[0, 0])
    summary: dict[str, Any] = {
        "prompt": prompt,
        "model": model,
        "reward": reward_name,
        "reward_options": dict(reward_options or {}),
        "method": {"name": plan.method, "settings": method.settings()},
        "budget": {
            "requested": plan.budget,
            "spent": ledger["cost"],
            "spent_wall_time": ledger["wall_time_cost"],
            "within": ledger["within_budget"],
            "num_particles": method.num_particles,
            "steps": plan.steps,
            "plain_denoiser_rows": cost.plain_model_rows,
            "rule": BUDGET_RULES[plan.method],
            "how": describe_method(method, plan, num_model_calls),
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
