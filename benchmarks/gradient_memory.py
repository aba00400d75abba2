"""Peak memory of the reward-gradient methods on the shapes world against the particle count and the chunk size.

Each configuration runs in a fresh process (peak resident memory, `ru_maxrss`, only grows within a process), on the
embedded model with `shapes-detect`, 25 steps, guidance 3: `guidance` (DPS: backward through the UNet, the VAE
decoder and the reward) at N particles with `chunk_size` rows per backward pass, and, as the baseline, FK with the
same N (no gradients). It prints the peak above the same process's memory after loading the model, in MiB.

    python benchmarks/gradient_memory.py [--particles 8 16 32 64] [--chunks 8 64]
"""

import argparse
import json
import os
import resource
import subprocess
import sys


def measure(method: str, particles: int, chunk: int) -> dict[str, float]:
    import torch

    import diffsteer
    from diffsteer import generate as gen

    torch.set_num_threads(2)
    pipe = gen.load_pipeline(gen.SHAPES_MODEL)
    pipe.set_progress_bar_config(disable=True)
    reward = diffsteer.rewards.load("shapes-detect")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method == "fk":
        steering = diffsteer.FK(particles, interval=5)
    else:
        steering = diffsteer.Guidance(particles, chunk_size=chunk)
    pipe(
        "a red circle left of a blue square",
        reward=reward,
        method=steering,
        num_inference_steps=25,
        guidance_scale=3.0,
        decode_batch_size=chunk,
        generator=torch.Generator().manual_seed(0),
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loaded_mib": loaded, "peak_above_mib": peak - loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, particles, chunk = args.child
        print(json.dumps(measure(method, int(particles), int(chunk))))
        return
    print("| method | particles | chunk | peak above the loaded model (MiB) |\n| --- | --- | --- | --- |")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for particles in args.particles:
        runs = [("fk", max(args.chunks))] + [("guidance", chunk) for chunk in args.chunks]
        for method, chunk in runs:
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, str(particles), str(chunk)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {method} | {particles} | {chunk} | {result['peak_above_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
