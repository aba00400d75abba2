"""Plain sampling vs. best-of-N vs. FK steering on the shapes world's held-out prompts, judged by the evaluator.

FK steers on `--reward` (default shapes-detect); the evaluator never steers, it only judges. For every held-out prompt
of every category (at most `--per-category`, in sorted order), every seed and every budget, it runs plain sampling
(one particle), best-of-N and FK at the same budget, and prints a Markdown table per category and overall: the
evaluator's accuracy on the returned image and its mean reward.

    python benchmarks/shapes.py [--budgets 4 8] [--seeds 3] [--steps 25] [--per-category 6] [--model shapes]

Every cell carries its standard error; a second table compares FK with plain sampling and with best-of-N on the
same prompts and seeds, with the paired standard error of the difference.

`benchmarks/shapes_fk_settings.py` chooses FK's settings with the same loop on training prompts only.
"""

import argparse
import json
import math
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffsteer import generate as gen
from diffsteer.rewards import load as load_reward
from diffsteer.worlds.shapes import CATEGORIES, evaluate, held_out_prompts


Results = dict[tuple[str, str], list[tuple[bool, float]]]


@dataclass(frozen=True)
class Column:
    """One column of the table: a method at a budget, with FK options over `generate.FK_SETTINGS`."""

    name: str
    method: str
    budget: int
    fk_options: dict[str, Any] = field(default_factory=dict)


def standard_columns(budgets: list[int]) -> list[Column]:
    """Plain sampling, then best-of-N and FK at each budget."""
    return [Column("plain", "bon", 1)] + [Column(f"{m}@{b}", m, b) for b in budgets for m in ("bon", "fk")]


def run(
    pipeline: Any,
    reward: Any,
    prompts: dict[str, list[str]],
    columns: list[Column],
    *,
    seeds: int,
    steps: int,
    guidance_scale: float,
) -> Results:
    """(category, column name) -> one (evaluator's verdict, reward) of the returned image per prompt and seed."""
    results: Results = defaultdict(list)
    for category, category_prompts in prompts.items():
        for prompt in category_prompts:
            for seed in range(seeds):
                for column in columns:
                    plan = gen.plan_budget(column.method, column.budget, None, steps)
                    method = gen.build_method(plan, column.fk_options)
                    output = gen.generate(
                        pipeline, prompt, reward, method, steps=steps, guidance_scale=guidance_scale, seed=seed
                    )
                    image = np.asarray(output.images[0].convert("RGB"))
                    selected = int(output.selected_indices[0, 0])
                    results[(category, column.name)].append(
                        (evaluate(image, prompt).correct, float(output.rewards[0, selected]))
                    )
            print(f"{category}: {prompt!r} done", flush=True)
    return results


def _rows(results: Results, column: str, category: str, categories: list[str]) -> list[tuple[bool, float]]:
    if category == "overall":
        return [row for c in categories for row in results[(c, column)]]
    return results[(category, column)]


def table(results: Results, columns: list[str], categories: list[str]) -> str:
    """Markdown: accuracy % with its standard error, and mean reward, per category and overall (all prompts and
    seeds pooled)."""
    lines = ["| category | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for category in [*categories, "overall"]:
        cells = []
        for column in columns:
            rows = _rows(results, column, category, categories)
            accuracy = statistics.mean(correct for correct, _ in rows)
            error = math.sqrt(accuracy * (1 - accuracy) / len(rows))
            reward = statistics.mean(reward for _, reward in rows)
            cells.append(f"{100 * accuracy:.0f} ± {100 * error:.0f}% / {reward:.1f}")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_difference(first: list[bool], second: list[bool]) -> tuple[float, float]:
    """Mean of `first - second` over paired runs (same prompt, same seed) and its standard error, in points."""
    differences = [float(a) - float(b) for a, b in zip(first, second, strict=True)]
    error = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else math.nan
    return 100 * statistics.mean(differences), 100 * error


def paired_table(results: Results, comparisons: list[tuple[str, str]], categories: list[str]) -> str:
    """Markdown: accuracy differences between methods on the same prompts and seeds, with paired standard errors."""
    names = [f"{a} - {b}" for a, b in comparisons]
    lines = ["| category | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for category in [*categories, "overall"]:
        cells = []
        for a, b in comparisons:
            first = [correct for correct, _ in _rows(results, a, category, categories)]
            second = [correct for correct, _ in _rows(results, b, category, categories)]
            mean, error = paired_difference(first, second)
            cells.append(f"{mean:+.0f} ± {error:.0f}")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=gen.SHAPES_MODEL)
    parser.add_argument("--reward", default="shapes-detect")
    parser.add_argument(
        "--reward-option",
        action="append",
        type=gen.reward_option,
        default=[],
        metavar="KEY=JSON",
        help="an option of the reward, e.g. partial=true for shapes-eval (repeatable)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = gen.load_pipeline(args.model)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, load_reward(args.reward, **gen.reward_options(args.reward_option))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--budgets", type=int, nargs="*", default=[4, 8], help="none: plain sampling only")
    parser.add_argument("--per-category", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="also write every run's verdict and reward here")
    args = parser.parse_args()
    pipeline, reward = load(args)
    start = time.perf_counter()
    columns = standard_columns(args.budgets)
    prompts = {c: held_out_prompts()[c][: args.per_category] for c in CATEGORIES}
    results = run(
        pipeline, reward, prompts, columns, seeds=args.seeds, steps=args.steps, guidance_scale=args.guidance_scale
    )
    count = sum(map(len, prompts.values()))
    print(
        f"\n{count} held-out prompts x {args.seeds} seeds; evaluator accuracy / mean {args.reward} of the returned "
        f"image; {args.steps} steps, guidance {args.guidance_scale}, FK {gen.FK_SETTINGS}; "
        f"{time.perf_counter() - start:.0f} s\n"
    )
    print(table(results, [c.name for c in columns], list(CATEGORIES)))
    comparisons = [(f"fk@{b}", other) for b in args.budgets for other in ("plain", f"bon@{b}")]
    if comparisons:
        print("\nPaired differences in accuracy points (same prompts and seeds), ± the paired standard error:\n")
        print(paired_table(results, comparisons, list(CATEGORIES)))
    if args.json:
        rows = [
            {
                "category": c,
                "column": name,
                "prompt": prompts[c][i // args.seeds],
                "seed": i % args.seeds,
                "correct": ok,
                "reward": r,
            }
            for (c, name), runs in results.items()
            for i, (ok, r) in enumerate(runs)
        ]
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
