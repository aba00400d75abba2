"""Plain-sampling accuracy of a shapes-world model, judged by the evaluator, per category with standard errors.

Samples every prompt of the chosen split (at most `--per-category` per category, in a fixed shuffled order) at
`--seeds` seeds, in batches, and prints one Markdown row per category and overall. `--checkpoint` measures a UNet
training checkpoint (`train --stage unet` writes one to its cache) by loading its EMA weights into the model, which
is how the README's learning curve was measured.

    python benchmarks/shapes_accuracy.py [--split held-out|training] [--seeds 16] [--per-category 100]
        [--checkpoint CACHE/checkpoints/KEY/unet.pt] [--json out.json]

The standard error is that of the accuracy on these prompts over seeds (the binomial one of all their images): the
prompts are fixed, only the seeds are drawn. A category with two prompts and 16 seeds holds 32 images.
"""

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from diffsteer import generate as gen
from diffsteer.worlds.shapes import CATEGORIES, evaluate, held_out_prompts, parse, training_captions
from diffsteer.worlds.shapes.evaluator import detect


def load_checkpoint(pipeline: object, path: Path) -> None:
    """Put a UNet-stage checkpoint's EMA weights (the ones training ships) into the pipeline's UNet and text
    encoder."""
    state = torch.load(path, weights_only=False)["state"]["ema"]
    ema = state.get("tensors", state)
    for prefix, module in (("unet.", pipeline.unet), ("text.", pipeline.text_encoder)):
        result = module.load_state_dict({k[len(prefix) :]: v for k, v in ema.items() if k.startswith(prefix)}, False)
        if result.unexpected_keys:
            raise ValueError(f"{path} does not fit this model: unexpected {result.unexpected_keys[:3]} ...")


def chosen_prompts(split: str, per_category: int) -> dict[str, list[str]]:
    pools = held_out_prompts() if split == "held-out" else training_captions()
    chosen = {}
    for category in CATEGORIES:
        pool = sorted(pools[category])
        random.Random(0).shuffle(pool)
        chosen[category] = pool[:per_category]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=gen.SHAPES_MODEL)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--split", choices=("held-out", "training"), default="held-out")
    parser.add_argument("--per-category", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = gen.load_pipeline(args.model)
    pipeline.set_progress_bar_config(disable=True)
    if args.checkpoint:
        load_checkpoint(pipeline, args.checkpoint)
    prompts = chosen_prompts(args.split, args.per_category)
    ordered = [(c, p) for c in CATEGORIES for p in prompts[c]]
    # Each image's noise depends only on its prompt's place and its seed, not on the batch it falls in.
    jobs = [(c, p, s, 1000 * s + i) for s in range(args.seeds) for i, (c, p) in enumerate(ordered)]
    start = time.perf_counter()
    runs = []
    for first in range(0, len(jobs), args.batch_size):
        batch = jobs[first : first + args.batch_size]
        images = pipeline(
            [p for _, p, _, _ in batch],
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            generator=[torch.Generator().manual_seed(noise) for *_, noise in batch],
            output_type="np",
        ).images
        for (category, prompt, seed, _), image in zip(batch, images, strict=True):
            pixels = (image * 255).round().astype(np.uint8)
            asked_circle = any(o.shape == "circle" for o in parse(prompt).objects)
            drew_circle = any(o.shape == "circle" for o in detect(pixels))
            runs.append((category, prompt, seed, evaluate(pixels, prompt).correct, asked_circle, drew_circle))
    elapsed = time.perf_counter() - start
    print(
        f"{args.split} prompts, {args.seeds} seeds, {args.steps} steps, guidance {args.guidance_scale}, "
        f"{args.checkpoint or args.model}; {len(runs)} images in {elapsed:.0f} s\n"
    )
    print("| category | prompts | images | accuracy |\n| --- | --- | --- | --- |")
    for category in [*CATEGORIES, "overall"]:
        verdicts = [r[3] for r in runs if category in ("overall", r[0])]
        accuracy = float(np.mean(verdicts))
        error = math.sqrt(accuracy * (1 - accuracy) / len(verdicts))
        count = sum(map(len, prompts.values())) if category == "overall" else len(prompts[category])
        print(f"| {category} | {count} | {len(verdicts)} | {100 * accuracy:.1f} ± {100 * error:.1f}% |")
    asked = [r for r in runs if r[4]]
    print(f"\nimages asked for a circle that hold one: {sum(r[5] for r in asked)} of {len(asked)}")
    if args.json:
        keys = ("category", "prompt", "seed", "correct", "asked_circle", "drew_circle")
        payload = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "runs": [dict(zip(keys, r, strict=True)) for r in runs],
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
