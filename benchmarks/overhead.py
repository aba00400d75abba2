"""Overhead of FK steering over plain sampling, measured in one run.

FK with N particles, the reward evaluated and the particles resampled at every step, against the plain sampler of
N samples (`BestOfN(N)`: the same model calls, one final reward) on a model whose forward pass dominates: a residual
MLP denoiser (width 1024, 4 blocks) on 64-dimensional samples. Runs alternate and repeat; the script prints the
median wall times, their ratio, and both ledgers.

    python benchmarks/overhead.py [--particles 256] [--steps 50] [--repeats 5] [--threads 2]
"""

import argparse
import statistics

import torch
from diffusers import DDPMScheduler

import diffsteer


class MLPDenoiser(torch.nn.Module):
    """A timestep-conditioned residual MLP; random weights are fine for timing."""

    def __init__(self, dim: int = 64, width: int = 1024, blocks: int = 4) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(dim + 1, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, width), torch.nn.SiLU())
            for _ in range(blocks)
        )
        self.out = torch.nn.Linear(width, dim)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.full((sample.shape[0], 1), float(timestep) / 1000, dtype=sample.dtype)
        hidden = self.inp(torch.cat([sample, t], 1))
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.out(hidden)


def reward(x: torch.Tensor) -> torch.Tensor:
    return -(x - 0.5).pow(2).mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MLPDenoiser().eval()
    scheduler = DDPMScheduler()
    methods = {
        "plain (BestOfN)": diffsteer.BestOfN(args.particles),
        "FK, every step": diffsteer.FK(args.particles, lmbda=5.0, ess_threshold=None),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    ledgers = {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is discarded
        for name, method in methods.items():
            result = diffsteer.sample(
                model,
                scheduler,
                shape=(64,),
                method=method,
                reward=reward,
                num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(repeat),
            )
            if repeat:
                times[name].append(result.cost.wall_time_s)
            ledgers[name] = result.cost
    plain, fk = (statistics.median(times[name]) for name in methods)
    print(
        f"N = {args.particles} particles, {args.steps} DDPM steps, {args.threads} threads, "
        f"median of {args.repeats} runs"
    )
    for name, median in zip(methods, (plain, fk), strict=True):
        cost = ledgers[name]
        print(
            f"  {name:16s} {median:7.3f} s   model rows {cost.model_rows}, reward rows {cost.reward_rows} "
            f"in {cost.reward_calls} calls ({cost.reward_time_s:.3f} s), resampling steps {cost.resampling_steps}"
        )
    print(f"  FK / plain wall-time ratio: {fk / plain:.3f}")


if __name__ == "__main__":
    main()
