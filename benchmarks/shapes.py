"""Plain sampling vs. best-of-N vs. FK steering on the shapes world's held-out prompts, judged by the evaluator.

FK steers on `--reward` (default shapes-clip); the evaluator never steers, it only judges. For every held-out prompt
of every category (at most `--per-category`, in sorted order), every seed and every budget, it runs plain sampling
(one particle), best-of-N and FK at the same budget, and prints a Markdown table per category and overall: the
evaluator's accuracy on the returned image and its mean reward.

    python benchmarks/shapes.py [--budgets 4 8] [--seeds 3] [--steps 25] [--per-category 6] [--model shapes]
"""

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

from diffsteer import generate as gen
from diffsteer.rewards import load as load_reward
from diffsteer.worlds.shapes import CATEGORIES, evaluate, held_out_prompts


def run(args: argparse.Namespace) -> dict[tuple[str, str], list[tuple[bool, float]]]:
    """(category, column) -> one (correct, reward) per prompt and seed."""
    pipeline = gen.load_pipeline(args.model)
    pipeline.set_progress_bar_config(disable=True)
    reward = load_reward(args.reward)
    columns = [("plain", "bon", 1)] + [(f"{m}@{b}", m, b) for b in args.budgets for m in ("bon", "fk")]
    results: dict[tuple[str, str], list[tuple[bool, float]]] = defaultdict(list)
    prompts = {c: held_out_prompts()[c][: args.per_category] for c in CATEGORIES}
    for category, category_prompts in prompts.items():
        for prompt in category_prompts:
            for seed in range(args.seeds):
                for column, method, budget in columns:
                    plan = gen.plan_budget(method, budget, None, args.steps)
                    method = gen.make_method(plan)
                    output = gen.generate(
                        pipeline,
                        prompt,
                        reward,
                        method,
                        steps=plan.steps,
                        guidance_scale=args.guidance_scale,
                        seed=seed,
                    )
                    image = np.asarray(output.images[0].convert("RGB"))
                    selected = int(output.selected_indices[0, 0])
                    results[(category, column)].append(
                        (evaluate(image, prompt).correct, float(output.rewards[0, selected]))
                    )
            print(f"{category}: {prompt!r} done", flush=True)
    return results


def table(results: dict[tuple[str, str], list[tuple[bool, float]]], columns: list[str]) -> str:
    header = "| category | " + " | ".join(columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 1)]
    for category in [*CATEGORIES, "overall"]:
        cells = []
        for column in columns:
            rows = (
                [r for c in CATEGORIES for r in results[(c, column)]]
                if category == "overall"
                else results[(category, column)]
            )
            accuracy = 100 * statistics.mean(correct for correct, _ in rows)
            cells.append(f"{accuracy:.0f}% / {statistics.mean(reward for _, reward in rows):.1f}")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=gen.SHAPES_MODEL)
    parser.add_argument("--reward", default="shapes-clip")
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--per-category", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = run(args)
    columns = ["plain"] + [f"{m}@{b}" for b in args.budgets for m in ("bon", "fk")]
    print(
        f"\nevaluator accuracy / mean {args.reward} of the returned image; {args.seeds} seeds, {args.steps} steps, "
        f"guidance {args.guidance_scale}, FK {gen.FK_SETTINGS}; {time.perf_counter() - start:.0f} s\n"
    )
    print(table(results, columns))


if __name__ == "__main__":
    main()
