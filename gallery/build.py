"""Regenerate `gallery/index.html` and its images: for one held-out prompt per category of the shapes world, plain
sampling, best-of-N and FK steering at the same budget, side by side, with their rewards and the evaluator's verdicts.

    python gallery/build.py [--budget 8] [--seed 0] [--steps 25] [--model shapes] [--reward shapes-clip]
"""

import argparse
import html
from pathlib import Path

import numpy as np
from PIL import Image

from diffsteer import generate as gen
from diffsteer.rewards import load as load_reward
from diffsteer.worlds.shapes import CATEGORIES, evaluate, held_out_prompts


HERE = Path(__file__).parent
SCALE = 3  # 64x64 images shown at 192x192, nearest neighbour, so pixels stay visible


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=gen.SHAPES_MODEL)
    parser.add_argument("--reward", default="shapes-clip")
    parser.add_argument("--budget", type=float, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    pipeline = gen.load_pipeline(args.model)
    pipeline.set_progress_bar_config(disable=True)
    reward = load_reward(args.reward)
    columns = [("plain", "bon", 1.0), (f"best-of-N, budget {args.budget:g}", "bon", args.budget)]
    columns.append((f"FK, budget {args.budget:g}", "fk", args.budget))
    images_dir = args.out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for category in CATEGORIES:
        prompt = held_out_prompts()[category][0]
        cells = []
        for index, (title, method, budget) in enumerate(columns):
            plan = gen.plan_budget(method, budget, None, args.steps)
            output = gen.generate(
                pipeline,
                prompt,
                reward,
                gen.make_method(plan),
                steps=plan.steps,
                guidance_scale=args.guidance_scale,
                seed=args.seed,
            )
            image = output.images[0].convert("RGB")
            name = f"{category}-{index}.png"
            image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST).save(images_dir / name)
            verdict = evaluate(np.asarray(image), prompt)
            failed = [check for check, ok in verdict.checks.items() if not ok]
            judged = "correct" if verdict.correct else "wrong: " + ", ".join(failed or ["extra shapes"])
            score = float(output.rewards[0, int(output.selected_indices[0, 0])])
            cells.append(
                f'<td><img src="images/{name}" alt="{html.escape(title)}"><br>{args.reward} {score:.1f}<br>'
                f'<span class="{"ok" if verdict.correct else "bad"}">{html.escape(judged)}</span></td>'
            )
        rows.append(f"<tr><th>{html.escape(category)}<br><i>{html.escape(prompt)}</i></th>{''.join(cells)}</tr>")
        print(f"{category}: {prompt!r} done", flush=True)
    header = "".join(f"<th>{html.escape(title)}</th>" for title, _, _ in columns)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>diffsteer gallery: the shapes world</title>
<style>body{{font-family:sans-serif}} td,th{{padding:6px;text-align:center;vertical-align:top}}
.ok{{color:#070}} .bad{{color:#b00}}</style></head><body>
<h1>Plain sampling, best-of-N and FK steering at equal budget</h1>
<p>Model {html.escape(str(args.model))}; reward {html.escape(args.reward)} (steers FK, picks best-of-N); verdicts by
the shapes evaluator, which never steers. Held-out prompts, seed {args.seed}, {args.steps} steps, guidance
{args.guidance_scale:g}, FK {html.escape(str(gen.FK_SETTINGS))}.
Regenerate with <code>python gallery/build.py</code>.</p>
<table><tr><th>prompt</th>{header}</tr>
{chr(10).join(rows)}
</table></body></html>
"""
    (args.out / "index.html").write_text(page)
    print(f"wrote {args.out / 'index.html'}")


if __name__ == "__main__":
    main()
