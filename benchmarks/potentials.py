"""Which potential on which schedule: FK on the Gaussian-mixture world against its closed-form target.

The same setup as tests/test_fk_exactness.py (four modes in 2-D, r(x) = a.x, lambda = 0.6, 100 DDPM steps); for
each potential and schedule, R independent replicates of N particles. Prints the worst mode-weight error of the
replicate mean, the largest replicate standard deviation of a mode weight (the spread), and the log Z estimate.

    python benchmarks/potentials.py [--particles 1000] [--replicates 16]
"""

import argparse
import math

import torch
from diffusers import DDPMScheduler

import diffsteer
from diffsteer.worlds.gmm import exact_denoiser, four_modes, linear_reward


CONFIGS = {
    "diff, adaptive ESS": dict(potential="diff"),
    "diff, resample every step": dict(potential="diff", ess_threshold=None),
    "max, every 20 steps": dict(potential="max", interval=20),
    "immediate, every 20 steps": dict(potential="immediate", interval=20),
    "sum, every 50 steps": dict(potential="sum", interval=50),
    "sum, every 20 steps": dict(potential="sum", interval=20),
    "max, every step": dict(potential="max", ess_threshold=None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--replicates", type=int, default=16)
    args = parser.parse_args()
    mixture = four_modes()
    direction, lmbda = torch.tensor([1.0, 0.5]), 0.6
    tilted, log_z = mixture.tilt(direction, lmbda)
    scheduler = DDPMScheduler(clip_sample=False)
    print(f"target mode weights {[round(w, 3) for w in tilted.weights.tolist()]}, log Z {log_z:.3f}")
    print(f"{'potential, schedule':28s} {'worst error':>11s} {'spread':>7s}   log Z (mean ± SE)")
    for name, config in CONFIGS.items():
        modes, log_zs = [], []
        for seed in range(args.replicates):
            result = diffsteer.sample(
                exact_denoiser(mixture, scheduler),
                scheduler,
                shape=(2,),
                method=diffsteer.FK(args.particles, lmbda=lmbda, **config),
                reward=linear_reward(direction),
                num_inference_steps=100,
                generator=torch.Generator().manual_seed(seed),
            )
            modes.append(tilted.mode_weights(result.samples, result.log_weights))
            log_zs.append(result.log_normalizer)
        modes, log_zs = torch.stack(modes), torch.tensor(log_zs)
        error = (modes.mean(0) - tilted.weights).abs().max()
        spread = modes.std(0).max()
        se = log_zs.std() / math.sqrt(args.replicates)
        print(f"{name:28s} {error:11.3f} {spread:7.3f}   {log_zs.mean():.3f} ± {se:.3f}")


if __name__ == "__main__":
    main()
