"""Choose FK steering's settings for the shapes world on training prompts only (never the held-out ones).

Draws `--per-category` training captions of every category (a fixed draw), runs best-of-N and FK under each
candidate setting at `--budget`, and prints the evaluator's accuracy and mean reward per category and overall. The
winner goes into `diffsteer.generate.FK_SETTINGS`; `benchmarks/shapes.py` then measures it on the held-out prompts.

    python benchmarks/shapes_fk_settings.py [--budget 4] [--seeds 2] [--per-category 3] [--lmbdas 0.1 0.3 1 3]
        [--potentials diff max] [--intervals 5] [--starts 0]
"""

import argparse
import itertools
import random
import time

from shapes import Column, add_common_arguments, load, run, table

from diffsteer.worlds.shapes import CATEGORIES, training_captions


def training_prompts(per_category: int, seed: int = 0) -> dict[str, list[str]]:
    """A fixed draw of training captions per category."""
    draw = random.Random(f"fk-settings-{seed}")
    return {c: sorted(draw.sample(training_captions()[c], per_category)) for c in CATEGORIES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--per-category", type=int, default=3)
    parser.add_argument("--lmbdas", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0])
    parser.add_argument("--potentials", nargs="+", default=["diff", "max"])
    parser.add_argument("--intervals", type=int, nargs="+", default=[5])
    parser.add_argument("--starts", type=int, nargs="+", default=[0], help="first steps with a potential")
    parser.set_defaults(seeds=2)
    args = parser.parse_args()
    pipeline, reward = load(args)
    columns = [Column("plain", "bon", 1), Column(f"bon@{args.budget}", "bon", args.budget)]
    grid = itertools.product(args.potentials, args.lmbdas, args.intervals, args.starts)
    for potential, lmbda, interval, start in grid:
        options = {"potential": potential, "lmbda": lmbda, "interval": interval, "start": start}
        name = f"fk {potential} λ={lmbda:g} every {interval} from {start}"
        columns.append(Column(name, "fk", args.budget, options))
    prompts = training_prompts(args.per_category)
    start = time.perf_counter()
    results = run(
        pipeline, reward, prompts, columns, seeds=args.seeds, steps=args.steps, guidance_scale=args.guidance_scale
    )
    print(
        f"\n{args.per_category} training prompts per category x {args.seeds} seeds, budget {args.budget}, "
        f"{args.steps} steps, guidance {args.guidance_scale}; {time.perf_counter() - start:.0f} s\n"
    )
    print(table(results, [c.name for c in columns], list(CATEGORIES)))


if __name__ == "__main__":
    main()
