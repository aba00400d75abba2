"""What a backward row costs next to a forward row of the denoiser: the measurement behind
`diffsteer.gradients.BACKWARD_COST`.

On the embedded shapes model (its UNet with classifier-free guidance, as a steered run calls it), it times a forward
pass over `--rows` particles under `torch.no_grad()` and a forward plus a backward pass with respect to the input
(`torch.autograd.grad`, what reward guidance through the denoiser runs), at several timesteps, and prints the median
of `--repeats` runs of each and their ratio. The backward's cost in forward rows is that ratio minus one.

    python benchmarks/gradients.py [--rows 8] [--repeats 7] [--threads 2] [--model shapes]
"""

import argparse
import statistics
import time

import torch

from diffsteer import generate as gen
from diffsteer.gradients import BACKWARD_COST


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=gen.SHAPES_MODEL)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = gen.load_pipeline(args.model)
    unet = pipe.unet.eval()
    for parameter in unet.parameters():
        parameter.requires_grad_(False)  # the gradient is taken with respect to the latents alone
    embeds, negative = pipe.encode_prompt("a red circle above a blue square", "cpu", args.rows, True)
    conditioning = torch.cat([negative, embeds])
    size = unet.config.sample_size
    latents = torch.randn(args.rows, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))

    def forward(x: torch.Tensor, t: int) -> torch.Tensor:
        output = unet(torch.cat([x] * 2), t, encoder_hidden_states=conditioning, return_dict=False)[0]
        uncond, cond = output.chunk(2)
        return uncond + 3.0 * (cond - uncond)

    def timed(run) -> float:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    ratios = []
    print("| timestep | forward (s) | forward + backward (s) | ratio |\n| --- | --- | --- | --- |")
    for t in (900, 500, 100):
        with torch.no_grad():
            forward(latents, t)  # warm-up
            plain = timed(lambda t=t: forward(latents, t))

        def with_backward(t: int = t) -> None:
            with torch.enable_grad():
                x = latents.clone().requires_grad_(True)
                torch.autograd.grad(forward(x, t).square().sum(), x)

        with_backward()
        both = timed(with_backward)
        ratios.append(both / plain)
        print(f"| {t} | {plain:.4f} | {both:.4f} | {both / plain:.2f} |")
    ratio = statistics.median(ratios)
    print(
        f"\n{args.rows} rows (x2 for guidance), {args.threads} threads, median of {args.repeats}: forward + backward "
        f"= {ratio:.2f} forwards, so a backward row costs {ratio - 1:.2f} forward rows (BACKWARD_COST = "
        f"{BACKWARD_COST:g})."
    )


if __name__ == "__main__":
    main()
