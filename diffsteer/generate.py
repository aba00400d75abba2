"""Text-to-image generation under a compute budget: what `diffsteer generate` does, as functions that the gallery and
the benchmarks reuse.

The budget is counted in denoiser evaluations: `budget B` spends at most B times what one plain sample of the same
steps and guidance costs. Best-of-N and FK steering both denoise every particle at every step, so each turns B into
floor(B) particles; FK additionally decodes and scores x0-hat at its reward steps, which the ledger reports.
"""

import json
import math
import os
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
            f"budget {self.budget:g} -> {name} with {self.num_particles} particle{'s' * (self.num_particles != 1)} x "
            f"{self.steps} steps = {self.spent:g}x the denoiser cost of one plain sample"
        )


def plan_budget(method: str, budget: float | None, num_particles: int | None, steps: int) -> BudgetPlan:
    """Turn `--budget` and/or `--particles` into a plan; `ValueError` names the bad argument and the fix."""
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}.")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}.")
    if budget is not None and not (math.isfinite(budget) and budget >= 1):
        raise ValueError(f"--budget must be at least 1 (one plain sample), got {budget:g}.")
    if num_particles is not None and num_particles < 1:
        raise ValueError(f"--particles must be at least 1, got {num_particles}.")
    if budget is None:
        budget = float(num_particles or DEFAULT_BUDGET)
    if num_particles is None:
        num_particles = math.floor(budget)
    elif num_particles > budget:
        raise ValueError(
            f"--particles {num_particles} costs {num_particles} plain samples, over --budget {budget:g}; "
            f"raise --budget to {num_particles} or lower --particles."
        )
    return BudgetPlan(method, float(budget), num_particles, steps)


def make_method(plan: BudgetPlan, **fk_options: Any) -> FK | BestOfN:
    """The method object for a plan (FK with `FK_SETTINGS` overridden by `fk_options`)."""
    if plan.method == "bon":
        return BestOfN(plan.num_particles)
    return FK(plan.num_particles, **{**FK_SETTINGS, **fk_options})


def is_shapes_model(model: str | os.PathLike) -> bool:
    from diffsteer.worlds.shapes import MODEL_PATH

    return str(model) == SHAPES_MODEL or Path(model).resolve() == MODEL_PATH.resolve()


def load_pipeline(model: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """The steering pipeline of `model` ("shapes" for the embedded model, a local folder or a hub id)."""
    from diffsteer.pipelines import AutoSteeringPipeline
    from diffsteer.worlds.shapes import MODEL_PATH

    embedded = str(model) == SHAPES_MODEL
    path = MODEL_PATH if embedded else model
    if embedded and not (MODEL_PATH / "model_index.json").is_file():
        raise ValueError(f"The embedded shapes model is missing from {MODEL_PATH}; reinstall diffsteer.")
    # Loading bars of diffusers and transformers would bury the one progress bar that matters (denoising).
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        pipeline = AutoSteeringPipeline.from_pretrained(path)
    except (OSError, ValueError) as error:
        local = Path(path).exists()
        where = "a local folder without a diffusers model_index.json" if local else "not a local folder"
        raise ValueError(
            f"--model {model!r} could not be loaded ({where}; hub ids need network access): "
            f"{str(error).strip().splitlines()[0]}"
        ) from None
    pipeline.set_progress_bar_config(desc="denoising", leave=False)
    return pipeline.to(device)


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


def write_outputs(out_dir: Path, output: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Save the selected image, every particle and `summary.json`; returns the summary with the file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    output.images[0].save(out_dir / "image.png")
    particles = []
    for index, image in enumerate(output.particles):
        name = f"particle-{index}.png"
        image.save(out_dir / name)
        particles.append(name)
    summary["files"] = {"image": "image.png", "particles": particles, "summary": "summary.json"}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
) -> dict[str, Any]:
    """The JSON summary of a run (everything but the file names)."""
    ledger = {key: value for key, value in asdict(output.cost).items() if not key.startswith("_")}
    selected = int(output.selected_indices[0, 0])
    summary: dict[str, Any] = {
        "prompt": prompt,
        "model": model,
        "reward": reward_name,
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
