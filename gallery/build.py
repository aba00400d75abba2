"""Regenerate `gallery/index.html` and its images: for one held-out prompt per category of the shapes world, plain
sampling, best-of-N and FK steering at the same budget, side by side, with their rewards and the evaluator's verdicts.

    python gallery/build.py [--budget 8] [--seed 0] [--steps 25] [--model shapes] [--reward shapes-detect]
    python gallery/build.py --html-only
    python gallery/build.py --rejudge       # the saved images judged again by the current evaluator

The page embeds its results (settings, rewards, verdicts, image names) as JSON, so `--html-only` re-renders it from
them without sampling (a full build samples 17 particles per prompt; on 2 CPU cores that takes tens of minutes).
"""

import argparse
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffsteer import generate as gen
from diffsteer.rewards import load as load_reward
from diffsteer.worlds.shapes import CATEGORIES, evaluate, held_out_prompts


HERE = Path(__file__).parent
SCALE = 3  # 64x64 images shown at 192x192, nearest neighbour, so pixels stay visible
CATEGORY_LABELS = {
    "single_object": "single object",
    "two_object": "two objects",
    "counting": "counting",
    "colors": "colours",
    "position": "position",
    "color_attr": "colour attribution",
}
CHECK_LABELS = {"count": "count", "shape": "shape", "color": "colour", "size": "size", "position": "position"}
RESULTS = re.compile(r'<script type="application/json" id="gallery-results">\n(.*?)\n</script>', re.DOTALL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=gen.SHAPES_MODEL)
    parser.add_argument("--reward", default="shapes-detect")
    parser.add_argument("--budget", type=float, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--html-only", action="store_true", help="re-render index.html from the results it embeds, without sampling"
    )
    parser.add_argument(
        "--rejudge", action="store_true", help="judge the saved images again with the current evaluator, no sampling"
    )
    args = parser.parse_args()
    page = args.out / "index.html"
    if args.html_only or args.rejudge:
        results = read_results(page)
        if args.rejudge:
            rejudge(results, args.out)
    else:
        results = sample(args)
    page.write_text(render(results))
    print(f"wrote {page}")


def columns(budget: float) -> list[dict[str, Any]]:
    """Plain sampling (one sample), then best-of-N and FK steering at `budget`."""
    particles = math.floor(budget)
    return [
        {"title": "plain sampling", "method": "bon", "budget": 1.0},
        {"title": f"best-of-{particles}", "method": "bon", "budget": budget},
        {"title": f"FK steering, {gen.plural(particles, 'particle')}", "method": "fk", "budget": budget},
    ]


def judge(image: np.ndarray, prompt: str) -> dict[str, Any]:
    """The evaluator's verdict on one cell, as the page stores it."""
    verdict = evaluate(image, prompt)
    return {"correct": verdict.correct, "failed": [check for check, ok in verdict.checks.items() if not ok]}


def rejudge(results: dict[str, Any], out: Path) -> None:
    """Judge every saved image again (the 64x64 image is every SCALE-th pixel of the nearest-neighbour PNG)."""
    for row in results["rows"]:
        for cell in row["cells"]:
            image = np.asarray(Image.open(out / cell["image"]).convert("RGB"))[::SCALE, ::SCALE]
            cell.update(judge(np.ascontiguousarray(image), row["prompt"]))


def sample(args: argparse.Namespace) -> dict[str, Any]:
    """Run every cell, save its image under `<out>/images`, and return the page's results."""
    pipeline = gen.load_pipeline(args.model)
    pipeline.set_progress_bar_config(disable=True)
    reward = load_reward(args.reward)
    images_dir = args.out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "model": str(args.model),
        "reward": args.reward,
        "budget": args.budget,
        "seed": args.seed,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "fk_settings": gen.FK_SETTINGS,
        "columns": columns(args.budget),
        "rows": [],
    }
    for category in CATEGORIES:
        prompt = held_out_prompts()[category][0]
        cells = []
        for index, column in enumerate(results["columns"]):
            plan = gen.plan_budget(column["method"], column["budget"], None, args.steps)
            output = gen.generate(
                pipeline,
                prompt,
                reward,
                gen.build_method(plan),
                steps=plan.steps,
                guidance_scale=args.guidance_scale,
                seed=args.seed,
            )
            image = output.images[0].convert("RGB")
            name = f"images/{category}-{index}.png"
            image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST).save(args.out / name)
            reward_value = float(output.rewards[0, int(output.selected_indices[0, 0])])
            cells.append({"image": name, "reward": reward_value, **judge(np.asarray(image), prompt)})
        results["rows"].append({"category": category, "prompt": prompt, "cells": cells})
        print(f"{category}: {prompt!r} done", flush=True)
    return results


def read_results(page: Path) -> dict[str, Any]:
    """The results a page built by `render` embeds."""
    found = RESULTS.search(page.read_text())
    if found is None:
        raise SystemExit(f"{page} embeds no results; build it without --html-only.")
    return json.loads(found.group(1))


def settings_sentence(results: dict[str, Any]) -> str:
    """What the page compares, for people: model, steps, guidance, methods, budget, reward and FK's settings."""
    model = "the embedded shapes model" if results["model"] == gen.SHAPES_MODEL else f"the model {results['model']}"
    particles = math.floor(results["budget"])
    fk = results["fk_settings"]
    return (
        f"Images by {model}, {gen.plural(results['steps'], 'denoising step')} with classifier-free guidance "
        f"{results['guidance_scale']:g}, seed {results['seed']}, for one held-out prompt per category. Plain "
        f"sampling draws one sample; best-of-N and FK steering each spend a budget of {results['budget']:g} plain "
        f"samples, that is {gen.plural(particles, 'particle')}. The reward {results['reward']} steers FK and picks "
        f"best-of-N's winner; the shapes evaluator, which never steers, gives the verdicts. FK steering uses the "
        f"{fk['potential']} potential with lambda {fk['lmbda']:g}, scores the particles every {fk['interval']} "
        f"steps and resamples them with {fk['resampling']} resampling."
    )


def verdict_text(cell: dict[str, Any]) -> str:
    if cell["correct"]:
        return "correct"
    if not cell["failed"]:  # every check passes for some reading of the image, but no one reading passes them all
        return "wrong: attributes on the wrong shapes"
    return "wrong " + ", ".join(CHECK_LABELS.get(check, check) for check in cell["failed"])


def render(results: dict[str, Any]) -> str:
    """The page, with `results` embedded so `--html-only` can render it again."""
    header = "".join(f"<th>{html.escape(column['title'])}</th>" for column in results["columns"])
    rows = []
    for row in results["rows"]:
        label = CATEGORY_LABELS.get(row["category"], row["category"].replace("_", " "))
        cells = "".join(
            f'<td><img src="{html.escape(cell["image"])}" alt="{html.escape(column["title"])}"><br>'
            f"{html.escape(results['reward'])} {cell['reward']:.1f}<br>"
            f'<span class="{"ok" if cell["correct"] else "bad"}">{html.escape(verdict_text(cell))}</span></td>'
            for column, cell in zip(results["columns"], row["cells"], strict=True)
        )
        rows.append(f"<tr><th>{html.escape(label)}<br><i>{html.escape(row['prompt'])}</i></th>{cells}</tr>")
    embedded = json.dumps(results, indent=1).replace("</", "<\\/")  # a JSON string must not close the script
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>diffsteer gallery: the shapes world</title>
<style>body{{font-family:sans-serif}} td,th{{padding:6px;text-align:center;vertical-align:top}}
.ok{{color:#070}} .bad{{color:#b00}}</style></head><body>
<h1>Plain sampling, best-of-N and FK steering at equal budget</h1>
<p>{html.escape(settings_sentence(results))}</p>
<p>Regenerate with <code>python gallery/build.py</code>; <code>python gallery/build.py --html-only</code> renders
this page again from the results it embeds.</p>
<table><tr><th>category and prompt</th>{header}</tr>
{chr(10).join(rows)}
</table>
<script type="application/json" id="gallery-results">
{embedded}
</script>
</body></html>
"""


if __name__ == "__main__":
    main()
