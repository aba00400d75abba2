"""Plain sampling vs. best-of-N vs. FK steering on the shapes world's held-out prompts, judged by the evaluator.

The methods steer on `--reward` (default shapes-detect); the evaluator never steers, it only judges. For every
held-out prompt of every category (at most `--per-category`, in sorted order), every seed and every budget, it runs
plain sampling (one particle) and every method of `--methods` (default best-of-N and FK; the search methods too if
named) at the same budget, and prints a Markdown table per category and overall: the evaluator's accuracy on the
returned image and its mean reward. A method that refuses a budget (too small for it) is left out of that budget's
columns, and the reason printed.

    python benchmarks/shapes.py [--budgets 4 8] [--seeds 3] [--first-seed 0] [--methods bon fk zero-order paths svdd]
        [--steps 25] [--per-category 6] [--model shapes] [--json runs.json]
    python benchmarks/shapes.py --merge runs-0.json runs-1.json

Every cell carries its standard error; a second table compares every method but best-of-N with plain sampling and
with best-of-N on the same prompts and seeds, with the paired standard error of the difference. `--first-seed`
splits one table across processes (seeds 0-4 in one, `--first-seed 5` in another, each with `--json`); `--merge`
prints the tables of the runs the JSON files hold together.

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


def standard_columns(budgets: list[int], methods: tuple[str, ...] = ("bon", "fk"), steps: int = 25) -> list[Column]:
    """Plain sampling, then every method at each budget, less the budgets a method refuses (said on stdout)."""
    columns = [Column("plain", "bon", 1)]
    for budget in budgets:
        for method in methods:
            try:
                gen.build_method(gen.plan_budget(method, budget, None, steps))
            except ValueError as error:
                print(f"{method}@{budget} left out: {error}")
                continue
            columns.append(Column(f"{method}@{budget}", method, budget))
    return columns


def comparisons(names: list[str]) -> list[tuple[str, str]]:
    """Every steered column but best-of-N ("method@budget") against plain sampling and best-of-N at its budget."""
    pairs = []
    for name in names:
        method, _, budget = name.partition("@")
        if budget and method != "bon":
            pairs += [(name, other) for other in ("plain", f"bon@{budget}") if other in names]
    return pairs


def run(
    pipeline: Any,
    reward: Any,
    prompts: dict[str, list[str]],
    columns: list[Column],
    *,
    seeds: int,
    steps: int,
    guidance_scale: float,
    first_seed: int = 0,
) -> Results:
    """(category, column name) -> one (evaluator's verdict, reward) of the returned image per prompt and seed
    (seeds `first_seed` to `first_seed + seeds - 1`), prompt by prompt."""
    results: Results = defaultdict(list)
    for category, category_prompts in prompts.items():
        for prompt in category_prompts:
            for seed in range(first_seed, first_seed + seeds):
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


def to_json(results: Results, prompts: dict[str, list[str]], seeds: int, first_seed: int) -> list[dict[str, Any]]:
    """One row per run: category, column, prompt, seed, the evaluator's verdict and the reward."""
    return [
        {
            "category": category,
            "column": name,
            "prompt": prompts[category][i // seeds],
            "seed": first_seed + i % seeds,
            "correct": correct,
            "reward": reward,
        }
        for (category, name), runs in results.items()
        for i, (correct, reward) in enumerate(runs)
    ]


def from_json(rows: list[dict[str, Any]]) -> tuple[Results, list[str]]:
    """Results of saved runs (of one or several files) and their column names in first-seen order.

    Runs are sorted by prompt and seed, so every column pairs up; a column that lacks a run another has is refused.
    """
    keyed: dict[tuple[str, str], dict[tuple[str, int], tuple[bool, float]]] = defaultdict(dict)
    columns: list[str] = []
    for row in rows:
        if row["column"] not in columns:
            columns.append(row["column"])
        keyed[(row["category"], row["column"])][(row["prompt"], row["seed"])] = (row["correct"], row["reward"])
    results: Results = {}
    for category in {c for c, _ in keyed}:
        runs = {name: keyed[(category, name)] for name in columns}
        expected = set().union(*runs.values())
        for name, column_runs in runs.items():
            if set(column_runs) != expected:
                raise ValueError(f"{name} lacks {len(expected - set(column_runs))} run(s) of {category} to pair up.")
            results[(category, name)] = [column_runs[key] for key in sorted(expected)]
    return results, columns


def print_tables(results: Results, names: list[str]) -> None:
    """The accuracy table, then the paired differences of `comparisons(names)`."""
    categories = [c for c in CATEGORIES if (c, names[0]) in results]
    print(table(results, names, categories))
    pairs = comparisons(names)
    if pairs:
        print("\nPaired differences in accuracy points (same prompts and seeds), ± the paired standard error:\n")
        print(paired_table(results, pairs, categories))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--budgets", type=int, nargs="*", default=[4, 8], help="none: plain sampling only")
    parser.add_argument("--methods", nargs="+", default=["bon", "fk"], choices=gen.METHODS)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from here (to split a run)")
    parser.add_argument("--per-category", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="also write every run's verdict and reward here")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="print the tables of saved runs, no runs")
    args = parser.parse_args()
    if args.merge:
        saved = [json.loads(path.read_text()) for path in args.merge]
        results, names = from_json([row for runs in saved for row in runs["runs"]])
        runs = sum(len(rows) for (_, name), rows in results.items() if name == names[0])
        print(f"{runs} runs per column from {len(saved)} file(s); steered on {saved[0]['args']['reward']}\n")
        print_tables(results, names)
        return
    pipeline, reward = load(args)
    start = time.perf_counter()
    columns = standard_columns(args.budgets, tuple(args.methods), args.steps)
    prompts = {c: held_out_prompts()[c][: args.per_category] for c in CATEGORIES}
    results = run(
        pipeline,
        reward,
        prompts,
        columns,
        seeds=args.seeds,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        first_seed=args.first_seed,
    )
    count = sum(map(len, prompts.values()))
    print(
        f"\n{count} held-out prompts x {args.seeds} seeds from {args.first_seed}; evaluator accuracy / mean "
        f"{args.reward} of the returned image; {args.steps} steps, guidance {args.guidance_scale}, "
        f"FK {gen.FK_SETTINGS}; {time.perf_counter() - start:.0f} s\n"
    )
    print_tables(results, [c.name for c in columns])
    if args.json:
        rows = to_json(results, prompts, args.seeds, args.first_seed)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
