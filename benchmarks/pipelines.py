"""Steered vs plain: StableDiffusionSteeringPipeline against its parent pipeline, in one run.

Tiny seeded Stable Diffusion components (tests/tiny/components.py; random weights cost what trained ones do) on
the CPU, 64x64 images. For N in --particles: FK with N particles, the reward (decode + redness) and a resampling
every --interval steps, against the parent `StableDiffusionPipeline` with `num_images_per_prompt=N` (the same N
denoiser rows per step). Runs alternate; the script prints median wall times, their ratio and FK's ledger.

    python benchmarks/pipelines.py [--particles 4 16] [--steps 20] [--interval 5] [--repeats 3]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

import diffsteer
from diffsteer.pipelines import StableDiffusionSteeringPipeline


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "tiny"))
from components import sd_components


def redness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parent = StableDiffusionPipeline(**sd_components(), requires_safety_checker=False)
    parent.set_progress_bar_config(disable=True)
    steering = StableDiffusionSteeringPipeline.from_pipe(parent)
    steering.set_progress_bar_config(disable=True)
    call = {
        "prompt": "a photo of a red cat",
        "num_inference_steps": args.steps,
        "height": 64,
        "width": 64,
        "output_type": "pt",
    }
    print(
        f"Stable Diffusion, tiny components, 64x64, {args.steps} DDIM steps, reward every {args.interval} steps, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    for n in args.particles:
        plain_times, fk_times, ledger = [], [], None
        method = diffsteer.FK(n, lmbda=50.0, interval=args.interval, ess_threshold=None)  # resample every time
        for repeat in range(args.repeats + 1):  # round 0 warms up
            started = time.perf_counter()
            parent(num_images_per_prompt=n, generator=torch.Generator().manual_seed(repeat), **call)
            plain = time.perf_counter() - started
            started = time.perf_counter()
            out = steering(generator=torch.Generator().manual_seed(repeat), reward=redness, method=method, **call)
            fk = time.perf_counter() - started
            if repeat:
                plain_times.append(plain)
                fk_times.append(fk)
                ledger = out.cost
        plain, fk = statistics.median(plain_times), statistics.median(fk_times)
        print(
            f"  N={n:3d}: parent {plain:6.2f} s, FK {fk:6.2f} s, ratio {fk / plain:.2f}; FK ledger: "
            f"{ledger.model_rows} UNet rows, {ledger.decode_rows} VAE rows in {ledger.decode_calls} decodes, "
            f"{ledger.reward_rows} reward rows, {ledger.resampling_steps} resampling steps"
        )


if __name__ == "__main__":
    main()
