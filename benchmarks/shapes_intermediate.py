"""How well does the reward of an intermediate x0-hat predict the final image? (shapes world, training prompts.)

FK steering resamples on rewards of x0-hat, the model's guess of the final image from a noisy latent. Resampling
can only help where the ranking of particles by that early reward agrees with the ranking by the final outcome. For
a fixed draw of training prompts this runs `--particles` unsteered particles (FK with lambda 0: the reward is
evaluated at every step, nothing is resampled) and reports per step:

- the rank correlation (Spearman) between the particles' reward now and their final reward, averaged over runs;
- the pairwise accuracy: over pairs of particles of one run where the evaluator accepts one final image and rejects
  the other, how often the accepted one has the higher reward now (0.5 is chance).

    python benchmarks/shapes_intermediate.py [--particles 8] [--per-category 3] [--seeds 1]
"""

import argparse
import statistics
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from shapes import add_common_arguments, load
from shapes_fk_settings import training_prompts

from diffsteer import generate as gen
from diffsteer.methods import FK
from diffsteer.worlds.shapes import evaluate


class RecordingReward:
    """Wraps a reward and keeps every score it returns, in call order."""

    def __init__(self, reward: Any) -> None:
        self.reward, self.scores = reward, []

    def __call__(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        scores = self.reward(images, prompts)
        self.scores.append(scores.detach().float().cpu())
        return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--per-category", type=int, default=3)
    parser.set_defaults(seeds=1)
    args = parser.parse_args()
    pipeline, reward = load(args)
    correlations: dict[int, list[float]] = {}
    agreements: dict[int, list[bool]] = {}
    for prompts in training_prompts(args.per_category).values():
        for prompt in prompts:
            for seed in range(args.seeds):
                recorder = RecordingReward(reward)
                output = gen.generate(
                    pipeline,
                    prompt,
                    recorder,
                    FK(args.particles, lmbda=0.0, interval=1),
                    steps=args.steps,
                    guidance_scale=args.guidance_scale,
                    seed=seed,
                )
                scores = torch.cat(recorder.scores).view(-1, args.particles).numpy()  # (reward calls, particles)
                final = scores[-1]
                correct = np.array(
                    [evaluate(np.asarray(im.convert("RGB")), prompt).correct for im in output.particles]
                )
                for step, now in enumerate(scores[:-1]):
                    if now.std() > 0 and final.std() > 0:
                        correlations.setdefault(step, []).append(float(spearmanr(now, final).statistic))
                for step, now in enumerate(scores):  # the final reward too: does it agree with the evaluator?
                    for i in np.flatnonzero(correct):
                        for j in np.flatnonzero(~correct):
                            agreements.setdefault(step, []).append(bool(now[i] > now[j]))
    print(f"\n{args.particles} particles, {args.steps} steps, guidance {args.guidance_scale}; training prompts only\n")
    print("| step | Spearman(reward now, final reward) | pairwise accuracy for the evaluator's verdict | pairs |")
    print("| --- | --- | --- | --- |")
    for step in sorted(agreements.keys() | correlations.keys()):
        pairs = agreements.get(step, [])
        accuracy = f"{statistics.mean(pairs):.2f}" if pairs else "-"
        rho = f"{statistics.mean(correlations[step]):.2f}" if step in correlations else "1 (final)"
        print(f"| {step} | {rho} | {accuracy} | {len(pairs)} |")


if __name__ == "__main__":
    main()
