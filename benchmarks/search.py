"""Mean reward against budget for every method: best-of-N, FK, zero-order search, search over paths, SVDD, rollover
budget forcing, reward-gradient guidance, twisted SMC and noise optimisation, each made by
`diffsteer.make_method(name, budget=B, num_inference_steps=T)` (the gradient methods' backward passes priced at
`BACKWARD_COST` forward rows in the denoiser cost).

Gaussian-mixture world (the default): `diffsteer.worlds.gmm.four_modes()` with its exact denoiser, DDPM
(`clip_sample=False`), T steps, and the reward of tests/test_search.py, -|x - (2, 3.2)|^2, which peaks above the
smallest mode (weight 0.1, centre (2, 2)), in a region of low density. For every method and budget it accepts (a
budget below a method's minimum is skipped and said so), G independent groups run at once from one fixed seed; the
table gives each (method, budget) the ledger's denoiser cost (`cost`, plain samples per group), its wall-time cost
(`wall_time_cost`: the run's wall time in plain samples' denoiser time, estimated from the run's own time per
denoiser row; the median of `--repeats` runs of the same seed), and the mean over groups of each group's selected
reward with its standard error. Plain sampling
(`BestOfN(1)`) is the row at budget 1. The figure has two panels, mean reward against each cost, log2 x axis.

The exact denoiser of a 2-D mixture costs little, so the wall-time cost here is mostly diffsteer's machinery and
the reward per denoiser row: it is the verifier-and-machinery-heavy end of the scale, where a ranking by denoiser
calls can reverse (a large model moves every method's wall-time cost towards its denoiser cost).

`--shapes`: the same sweep on the shapes world (the embedded text-to-image model), steering on `--shapes-reward`
(shapes-detect) and judged by the evaluator, on training prompts only (one per category, in category order, from the
fixed draw of benchmarks/shapes_fk_settings.py): the evaluator's accuracy and the mean reward of the returned image
against budget. It is slow on the CPU; its defaults are small.

    python benchmarks/search.py [--steps 10] [--groups 64] [--budgets 1 2 4 8 16] [--seed 0] [--methods ...]
    python benchmarks/search.py --shapes [--shapes-prompts 4] [--shapes-seeds 1] [--shapes-budgets 1 2 4]
        [--shapes-steps 10]
"""

import os


# On a shared machine, OpenMP threads that spin while waiting for a descheduled sibling make a 2-thread run up to
# 20x slower at random; passive waiting keeps the timings usable (OMP_WAIT_POLICY=ACTIVE in the environment wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler

import diffsteer
from diffsteer.loop import RunContext
from diffsteer.methods import METHOD_NAMES, make_method
from diffsteer.methods.base import run_method
from diffsteer.outputs import CostLedger
from diffsteer.processes import SchedulerProcess
from diffsteer.processes.scheduler_process import method_scheduler_options
from diffsteer.worlds import gmm


FIGURES = Path(__file__).resolve().parent / "figures"
TARGET = torch.tensor([2.0, 3.2], dtype=torch.float64)  # above the smallest mode: rare under the prior
PLAIN = "plain"
# One colour and marker per method, the same in both worlds' figures.
STYLE = {
    PLAIN: ("black", "s"),
    "bon": ("tab:blue", "o"),
    "fk": ("tab:orange", "v"),
    "zero-order": ("tab:green", "^"),
    "paths": ("tab:red", "D"),
    "svdd": ("tab:purple", "P"),
    "rbf": ("tab:brown", "X"),
    "guidance": ("tab:pink", "*"),
    "twisted": ("tab:olive", "h"),
    "noise-opt": ("tab:cyan", "p"),
}


def distance_reward(x: torch.Tensor) -> torch.Tensor:
    """-|x - (2, 3.2)|^2 per row (tests/test_search.py's reward)."""
    return -((x.double() - TARGET) ** 2).sum(1)


@dataclass
class Row:
    """One (method, budget) of a sweep."""

    method: str
    budget: float
    cost: float  # denoiser rows per group, in plain samples
    wall_time_cost: float  # wall time per group, in plain samples' denoiser time
    mean: float  # mean over groups (or prompts and seeds) of the selected sample's reward, or the accuracy
    se: float  # its standard error
    seconds: float  # wall time of one run (mixture: the median over repeats; shapes: the mean per image)
    extra: str = ""


def counting(model: Callable[..., torch.Tensor], ledgers: list[CostLedger]) -> Callable[..., torch.Tensor]:
    """The model, with every call's rows and time counted in the last ledger of `ledgers` (what `diffsteer.sample`
    does; a list, so that the ledger, whose clock starts when it is made, can be made after the process)."""

    def counted(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        ledger = ledgers[-1]
        ledger.add_model(sample.shape[0])
        started = time.perf_counter()
        output = model(sample, timestep)
        ledger.model_time_s += time.perf_counter() - started
        return output

    return counted


def selected_rewards(run: Any, num_groups: int) -> torch.Tensor:
    """Each group's first selected sample's reward, shape (G,)."""
    per_group = run.rewards.shape[1]
    first = run.selected_indices[:, 0] - torch.arange(num_groups) * per_group
    return run.rewards.gather(1, first[:, None])[:, 0]


def mean_se(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return statistics.fmean(values), math.nan
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def build(name: str, budget: float, steps: int) -> Any:
    """The method at a budget (plain sampling is `BestOfN(1)`); ValueError below the method's minimum."""
    if name == PLAIN:
        return diffsteer.BestOfN(1)
    return make_method(name, budget=budget, num_inference_steps=steps)


def sweep_gmm(args: argparse.Namespace) -> list[Row]:
    mixture = gmm.four_modes()
    scheduler = DDPMScheduler(clip_sample=False)
    model = gmm.exact_denoiser(mixture, scheduler)
    rows = []
    for name, budget in [(PLAIN, 1.0)] + [(m, float(b)) for m in args.methods for b in args.budgets]:
        try:
            method = build(name, budget, args.steps)
        except ValueError as error:
            print(f"{name} at budget {budget:g}: below minimum ({str(error).split(':')[0]})", flush=True)
            continue
        runs = []
        for _ in range(args.repeats + 1):  # the first run warms up; the same seed every time
            ledgers: list[CostLedger] = []
            process = SchedulerProcess(
                counting(model, ledgers),
                scheduler,
                shape=(2,),
                num_inference_steps=args.steps,
                **method_scheduler_options(method),
            )
            generator = torch.Generator().manual_seed(args.seed)
            ledger = CostLedger()  # its clock starts now: the run's wall time, without building the process
            ledgers.append(ledger)
            ctx = RunContext(
                process, distance_reward, distance_reward, ledger, num_groups=args.groups, generator=generator
            )
            with torch.no_grad():
                run = run_method(method, ctx)
            if ledger.within_budget is False:
                raise AssertionError(f"{name} at budget {budget:g} spent {ledger.cost:g} plain samples")
            runs.append((selected_rewards(run, args.groups), ledger))
        rewards, ledger = runs[-1]
        if not all(torch.equal(rewards, other) for other, _ in runs):
            raise AssertionError(f"{name} at budget {budget:g}: the same seed gave different samples")
        timed = [ledger for _, ledger in runs[1:]]
        mean, se = mean_se(rewards.tolist())
        rows.append(
            Row(
                name,
                budget,
                ledger.cost,
                statistics.median(ledger.wall_time_cost for ledger in timed),
                mean,
                se,
                statistics.median(ledger.wall_time_s for ledger in timed),
            )
        )
    return rows


def print_table(rows: list[Row], what: str) -> None:
    """The rows as Markdown; "run" is the median wall time of one run, "/ plain" that over plain sampling's."""
    plain = next((row.seconds for row in rows if row.method == PLAIN), math.nan)
    header = f"| method | budget | denoiser cost | wall-time cost | {what} | run | / plain |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for row in rows:
        print(
            f"| {row.method} | {row.budget:g} | {row.cost:.2f} | {row.wall_time_cost:.2f} | "
            f"{row.mean:.3f} ± {row.se:.3f}{row.extra} | {seconds(row.seconds)} | {row.seconds / plain:.1f} |"
        )


def seconds(value: float) -> str:
    return f"{1000 * value:.1f} ms" if value < 1 else f"{value:.1f} s"


def plot(rows: list[Row], path: Path, title: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    names = list(dict.fromkeys(row.method for row in rows))
    for axis, (attribute, label) in zip(
        axes,
        [("cost", "denoiser cost (plain samples per group)"), ("wall_time_cost", "wall-time cost (plain samples)")],
        strict=True,
    ):
        for name in names:
            points = [row for row in rows if row.method == name]
            colour, marker = STYLE.get(name, ("grey", "o"))
            axis.errorbar(
                [getattr(row, attribute) for row in points],
                [row.mean for row in points],
                yerr=[0.0 if math.isnan(row.se) else row.se for row in points],
                color=colour,
                marker=marker,
                markersize=6 if name != PLAIN else 9,
                linestyle="-" if name != PLAIN else "none",
                capsize=3,
                label=name,
            )
        axis.set_xscale("log", base=2)
        axis.set_xlabel(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", fontsize=9)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0, 0.89, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"wrote {path}")


def shapes_prompts(count: int) -> list[str]:
    """`count` training prompts, one per category in category order (cycling), from the fixed draw of
    benchmarks/shapes_fk_settings.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from shapes_fk_settings import training_prompts

    per_category = math.ceil(count / 6)
    drawn = training_prompts(per_category)
    ordered = [drawn[c][i] for i in range(per_category) for c in drawn]
    return ordered[:count]


def sweep_shapes(args: argparse.Namespace) -> list[Row]:
    import numpy as np

    from diffsteer import generate as gen
    from diffsteer.rewards import load as load_reward
    from diffsteer.worlds.shapes import evaluate

    pipeline = gen.load_pipeline(gen.SHAPES_MODEL)
    pipeline.set_progress_bar_config(disable=True)
    reward = load_reward(args.shapes_reward)
    prompts = shapes_prompts(args.shapes_prompts)
    print(f"shapes world: training prompts {prompts}", flush=True)
    rows = []
    steps = args.shapes_steps
    for name, budget in [(PLAIN, 1.0)] + [(m, float(b)) for m in args.methods for b in args.shapes_budgets]:
        try:
            build(name, budget, steps)
        except ValueError as error:
            print(f"{name} at budget {budget:g}: below minimum ({str(error).split(':')[0]})", flush=True)
            continue
        started = time.perf_counter()
        verdicts, rewards, costs, wall_costs = [], [], [], []
        for prompt in prompts:
            for seed in range(args.shapes_seeds):
                output = gen.generate(
                    pipeline,
                    prompt,
                    reward,
                    build(name, budget, steps),
                    steps=steps,
                    guidance_scale=args.shapes_guidance_scale,
                    seed=seed,
                )
                if output.cost.within_budget is False:
                    raise AssertionError(f"{name} at budget {budget:g} spent {output.cost.cost:g} plain samples")
                image = np.asarray(output.images[0].convert("RGB"))
                selected = int(output.selected_indices[0, 0])
                verdicts.append(float(evaluate(image, prompt).correct))
                rewards.append(float(output.rewards[0, selected]))
                costs.append(output.cost.cost)
                wall_costs.append(output.cost.wall_time_cost)
        accuracy, se = mean_se(verdicts)
        mean_reward, reward_se = mean_se(rewards)
        row = Row(
            name,
            budget,
            statistics.fmean(costs),
            statistics.fmean(wall_costs),
            accuracy,
            se,
            (time.perf_counter() - started) / len(verdicts),  # per generation
            f" | {mean_reward:.1f} ± {reward_se:.1f}",
        )
        rows.append(row)
        print(
            f"{name} at budget {budget:g}: accuracy {accuracy:.2f}, {args.shapes_reward} {mean_reward:.1f}, "
            f"cost {row.cost:.2f}, wall-time cost {row.wall_time_cost:.2f}, {row.seconds:.1f} s per image",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="denoising steps T of the mixture world")
    parser.add_argument("--groups", type=int, default=64, help="independent groups G per (method, budget)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per (method, budget): the median")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figure", type=Path, default=FIGURES / "search_gmm.png")
    parser.add_argument("--no-figure", action="store_true", help="print the table only")
    parser.add_argument("--shapes", action="store_true", help="the shapes world instead of the mixture world")
    parser.add_argument("--shapes-prompts", type=int, default=4, help="training prompts, one per category")
    parser.add_argument("--shapes-seeds", type=int, default=1)
    parser.add_argument("--shapes-budgets", type=float, nargs="+", default=[1, 2, 4])
    parser.add_argument("--shapes-steps", type=int, default=10)
    parser.add_argument("--shapes-guidance-scale", type=float, default=3.0)
    parser.add_argument("--shapes-reward", default="shapes-detect")
    parser.add_argument("--shapes-figure", type=Path, default=FIGURES / "search_shapes.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.shapes:
        rows = sweep_shapes(args)
        count = args.shapes_prompts * args.shapes_seeds
        print(
            f"\nshapes world: {args.shapes_prompts} training prompts x {args.shapes_seeds} seeds, "
            f"{args.shapes_steps} steps, guidance {args.shapes_guidance_scale}, steering on {args.shapes_reward}; "
            f"evaluator accuracy ± se over {count} images, then mean {args.shapes_reward} ± se; "
            f"{time.perf_counter() - started:.0f} s\n"
        )
        print_table(rows, f"accuracy | mean {args.shapes_reward}")
        if not args.no_figure:
            title = (
                f"shapes world, {args.shapes_prompts} training prompts x {args.shapes_seeds} seeds, "
                f"{args.shapes_steps} steps: evaluator accuracy"
            )
            plot(rows, args.shapes_figure, title, "evaluator accuracy (± se)")
        return
    rows = sweep_gmm(args)
    print(
        f"\nGaussian mixture (four_modes), exact denoiser, DDPM, {args.steps} steps, reward -|x - (2, 3.2)|^2; "
        f"{args.groups} groups, seed {args.seed}, {args.threads} threads; wall-time cost and run time: median of "
        f"{args.repeats} runs after a warm-up; {time.perf_counter() - started:.0f} s\n"
    )
    print_table(rows, "mean reward ± se")
    if not args.no_figure:
        title = (
            f"Gaussian mixture, reward -|x - (2, 3.2)|², {args.steps} DDPM steps, {args.groups} groups: "
            "mean selected reward"
        )
        plot(rows, args.figure, title, "mean reward of the selected sample (± se)")


if __name__ == "__main__":
    main()
