"""How well does a reward of an intermediate x0-hat predict the final verdict? (shapes world, training prompts.)

FK steering resamples on rewards of x0-hat, the model's guess of the final image from a noisy latent. Resampling
can only help where the ranking of particles by that early reward agrees with the final outcome. For a fixed draw
of training prompts this runs `--particles` unsteered particles (FK with lambda 0: rewards are computed at every
step, nothing is resampled) and scores the same x0-hats with every reward of `--rewards`. Per step and reward:

- the rank correlation (Spearman) between the particles' reward now and their final reward, averaged over runs;
- the pairwise accuracy: over pairs of particles of one run where the evaluator accepts one final image and rejects
  the other, how often the accepted one has the higher reward now (0.5 is chance; a tie counts half). Pairs of one
  run share their images, so the standard error treats runs as clusters (the ratio estimator's), not pairs as
  independent.

    python benchmarks/shapes_intermediate.py [--rewards shapes-clip shapes-itm] [--particles 8] [--per-category 3]
        [--seeds 4] [--plot gallery/images/shapes_intermediate.png]

A reward of `--rewards` is a registered name, or `LABEL=NAME:JSON` with the reward's options as a JSON object, to
compare weights that are not shipped: `'negclip-v2=shapes-negclip:{"pretrained": "/tmp/out/negclip"}'`.
"""

import argparse
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from shapes import add_common_arguments, load
from shapes_fk_settings import training_prompts

from diffsteer import generate as gen
from diffsteer.methods import FK
from diffsteer.rewards import load as load_reward
from diffsteer.worlds.shapes import CATEGORIES, evaluate


def reward_spec(text: str) -> tuple[str, str, dict[str, Any]]:
    """`NAME` or `LABEL=NAME:JSON` as (label, registered name, options)."""
    label, rest = ("", text)
    if "=" in text.split(":", 1)[0]:  # a label, before the name (the options' JSON may hold "=" too)
        label, _, rest = text.partition("=")
    name, _, options = rest.partition(":")
    parsed = json.loads(options) if options else {}
    if not isinstance(parsed, dict):
        raise ValueError(
            f"--rewards {text!r}: the options after ':' are a JSON object, e.g. '{{\"pretrained\": \"/path\"}}'."
        )
    return label or rest, name, parsed


class RecordingRewards:
    """Scores every call with each reward and keeps the scores; returns the first reward's (it steers nothing, as
    FK runs with lambda 0)."""

    def __init__(self, rewards: dict[str, Any]) -> None:
        self.rewards = rewards
        self.scores: dict[str, list[torch.Tensor]] = {name: [] for name in rewards}

    def __call__(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        first = None
        for name, reward in self.rewards.items():
            scores = reward(images, prompts)
            self.scores[name].append(scores.detach().float().cpu())
            first = scores if first is None else first
        return first


@dataclass
class Agreement:
    """Per run: (pairs the accepted image wins, pairs); the ratio estimator and its cluster standard error."""

    runs: list[tuple[float, int]] = field(default_factory=list)

    def add(self, now: np.ndarray, correct: np.ndarray) -> None:
        accepted, rejected = now[correct], now[~correct]
        if len(accepted) and len(rejected):
            wins = (accepted[:, None] > rejected[None]).sum() + 0.5 * (accepted[:, None] == rejected[None]).sum()
            self.runs.append((float(wins), len(accepted) * len(rejected)))

    @property
    def pairs(self) -> int:
        return sum(n for _, n in self.runs)

    @property
    def accuracy(self) -> float:
        return sum(w for w, _ in self.runs) / self.pairs if self.pairs else math.nan

    @property
    def standard_error(self) -> float:
        k = len(self.runs)
        if k < 2:
            return math.nan
        residuals = [w - self.accuracy * n for w, n in self.runs]
        return math.sqrt(k / (k - 1) * sum(r * r for r in residuals)) / self.pairs


def measure(
    pipeline: Any, rewards: dict[str, Any], prompts: dict[str, str], args: argparse.Namespace
) -> tuple[dict[str, dict[int, list[float]]], dict[str, dict[int, Agreement]], dict[str, dict[str, Agreement]]]:
    """Per reward and step: the Spearman correlations of every run, and the pairwise agreement; per reward and
    category (`prompts` maps each prompt to its category), the final image's pairwise agreement."""
    correlations: dict[str, dict[int, list[float]]] = {name: {} for name in rewards}
    agreements: dict[str, dict[int, Agreement]] = {name: {} for name in rewards}
    finals: dict[str, dict[str, Agreement]] = {name: {} for name in rewards}
    for prompt, category in prompts.items():
        for seed in range(args.seeds):
            recorder = RecordingRewards(rewards)
            output = gen.generate(
                pipeline,
                prompt,
                recorder,
                FK(args.particles, lmbda=0.0, interval=1),
                steps=args.steps,
                guidance_scale=args.guidance_scale,
                seed=seed,
            )
            correct = np.array([evaluate(np.asarray(im.convert("RGB")), prompt).correct for im in output.particles])
            for name in rewards:
                scores = torch.cat(recorder.scores[name]).view(-1, args.particles).numpy()  # (calls, particles)
                final = scores[-1]
                for step, now in enumerate(scores):  # the final reward too: does it agree with the evaluator?
                    if step < len(scores) - 1 and now.std() > 0 and final.std() > 0:
                        correlations[name].setdefault(step, []).append(float(spearmanr(now, final).statistic))
                    agreements[name].setdefault(step, Agreement()).add(now, correct)
                finals[name].setdefault(category, Agreement()).add(final, correct)
        print(f"{prompt!r} done", flush=True)
    return correlations, agreements, finals


def category_table(finals: dict[str, dict[str, Agreement]]) -> str:
    """The final image's pairwise agreement per category: which failures each reward can see."""
    names = list(finals)
    lines = [f"| category | {' | '.join(names)} | pairs (runs) |", "|" + " --- |" * (len(names) + 2)]
    for category in CATEGORIES:
        first = finals[names[0]].get(category, Agreement())
        cells = []
        for name in names:
            agreement = finals[name].get(category, Agreement())
            cells.append(f"{agreement.accuracy:.2f} ± {agreement.standard_error:.2f}" if agreement.pairs else "-")
        lines.append(f"| {category} | {' | '.join(cells)} | {first.pairs} ({len(first.runs)}) |")
    return "\n".join(lines)


def table(correlations: dict[str, dict[int, list[float]]], agreements: dict[str, dict[int, Agreement]]) -> str:
    names = list(agreements)
    header = " | ".join(f"{name}: Spearman | {name}: pairwise" for name in names)
    lines = [f"| step | {header} | pairs (runs) |", "|" + " --- |" * (2 * len(names) + 2)]
    for step in sorted(agreements[names[0]]):
        cells = []
        for name in names:
            rho = correlations[name].get(step)
            cells.append(f"{statistics.mean(rho):.2f}" if rho else "1 (final)")
            agreement = agreements[name][step]
            cells.append(f"{agreement.accuracy:.2f} ± {agreement.standard_error:.2f}")
        first = agreements[names[0]][step]
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {first.pairs} ({len(first.runs)}) |")
    return "\n".join(lines)


def plot(agreements: dict[str, dict[int, Agreement]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for name, by_step in agreements.items():
        steps = sorted(by_step)
        accuracy = np.array([by_step[s].accuracy for s in steps])
        error = np.array([by_step[s].standard_error for s in steps])
        (line,) = axis.plot(steps, accuracy, marker="o", markersize=3, label=name)
        axis.fill_between(steps, accuracy - error, accuracy + error, color=line.get_color(), alpha=0.2)
    axis.axhline(0.5, color="grey", linestyle=":", label="chance")
    axis.set_xlabel("denoising step (x0-hat scored); the last point is the final image")
    axis.set_ylabel("pairwise agreement with the evaluator")
    axis.set_ylim(0.3, 1.0)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=9)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--rewards", nargs="+", default=None, help="rewards to compare (default: --reward alone)")
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--per-category", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=None, help="write the pairwise curves here (needs matplotlib)")
    parser.set_defaults(seeds=1)
    args = parser.parse_args()
    pipeline, first = load(args)
    specs = [reward_spec(text) for text in args.rewards or [args.reward]]
    rewards = {
        label: first if (name, options) == (args.reward, {}) else load_reward(name, **options)
        for label, name, options in specs
    }
    prompts = {prompt: c for c, group in training_prompts(args.per_category).items() for prompt in group}
    correlations, agreements, finals = measure(pipeline, rewards, prompts, args)
    setting = (
        f"{len(prompts)} training prompts x {args.seeds} seeds, {args.particles} particles, {args.steps} steps, "
        f"guidance {args.guidance_scale}"
    )
    print(f"\n{setting}\n")
    print(table(correlations, agreements))
    print("\nThe final image, per category:\n")
    print(category_table(finals))
    if args.plot:
        plot(agreements, args.plot, setting)


if __name__ == "__main__":
    main()
