"""Steered vs plain: StableDiffusionSteeringPipeline against its parent pipeline, in one run.

Tiny seeded Stable Diffusion components (tests/tiny/components.py; random weights cost what trained ones do) on
the CPU. Runs alternate (plain, [reference,] steered, the order rotated each round); the first round warms up and
is discarded. The script prints median wall times and process CPU times (with min-max, since the machine is
shared), the ratios to plain, and where each pipeline's time goes: the denoiser (the UNet's forward), the decoder
(the VAE's `decode`), the reward, and the rest, which for the steered pipeline is diffsteer's machinery. The parts
are timed by wrapping those three callables in this script (the library is not touched).

Two configurations:

- default: for N in --particles, FK with N particles, the reward (decode + redness) and a resampling every
  --interval steps, against the parent `StableDiffusionPipeline` with `num_images_per_prompt=N` (the same N
  denoiser rows per step), 64x64 images, --steps DDIM steps (eta 0; FK switches to its stochastic variant).
- `--identical-work`: the figure of issue 12. 32x32 images, CFG 7.5, DDIM with eta=1 for every pipeline (so plain
  sampling is stochastic too), 50 steps, 8 particles, redness potentials and resampling at every step
  (`FK(8, interval=1, ess_threshold=None)`), against the parent with `num_images_per_prompt=8, eta=1.0`. With
  `--reference PATH` the public FK-steering reference code (imported from PATH, see benchmarks/reference_fk.py)
  runs the same work in the same rounds: 8 copies of the prompt, `eta=1.0`, resampling at every step. The arms do
  the same UNet calls and VAE rows (their ledgers are printed), so a noise-normalised estimate prices every arm's
  calls and rows at the pooled median and keeps each arm's own reward and rest.

    python benchmarks/pipelines.py [--particles 4 16] [--steps 20] [--interval 5] [--repeats 3]
    python benchmarks/pipelines.py --identical-work [--reference /tmp/speed/reference] [--repeats 5] [--profile 25]
"""

import os


# On a shared machine, OpenMP threads that spin while waiting for a descheduled sibling make a 2-thread run up to
# 20x slower at random; passive waiting keeps the medians usable (OMP_WAIT_POLICY=ACTIVE in the environment wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import cProfile
import functools
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

import diffsteer
from diffsteer.pipelines import StableDiffusionSteeringPipeline


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "tiny"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from components import sd_components
from reference_fk import fk_args, load_reference, quiet


PARTS = ("denoiser", "decode", "reward")
PROMPT = "a photo of a red cat"


def redness(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Mean red minus mean green and blue, per image in [0, 1]."""
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


@dataclass
class Timers:
    """Seconds and calls spent in each wrapped part during the current run."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))

    def reset(self) -> None:
        for part in PARTS:
            self.seconds[part], self.calls[part], self.rows[part] = 0.0, 0, 0

    def wrap(self, part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function` timed under `part` (its first argument's leading dimension counts the rows)."""

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - started
                self.calls[part] += 1
                self.rows[part] += args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else 0

        return timed


@dataclass
class Arm:
    """One pipeline under test: how to call it, and what its runs measured."""

    name: str
    call: Callable[[int], Any]
    totals: list[float] = field(default_factory=list)
    cpu_totals: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    ledger: str = ""

    def run(self, seed: int, timers: Timers, keep: bool) -> None:
        timers.reset()
        started, cpu_started = time.perf_counter(), time.process_time()
        self.call(seed)
        total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if keep:
            self.totals.append(total)
            self.cpu_totals.append(cpu)
            self.parts.append(dict(timers.seconds))
            self.calls, self.rows = dict(timers.calls), dict(timers.rows)
            self.ledger = ", ".join(
                f"{part} {timers.calls[part]} calls / {timers.rows[part]} rows" for part in PARTS if timers.calls[part]
            )

    @property
    def median(self) -> float:
        return statistics.median(self.totals)

    def rest(self) -> float:
        """Median over runs of the time outside the timed parts."""
        runs = zip(self.totals, self.parts, strict=True)
        return statistics.median(total - sum(parts.values()) for total, parts in runs)

    def breakdown(self) -> str:
        """Median seconds of each part and of the rest (total minus the parts, run by run)."""
        medians = {part: statistics.median(parts[part] for parts in self.parts) for part in PARTS}
        text = ", ".join(f"{part} {seconds:.3f}" for part, seconds in medians.items())
        return f"{text}, rest {self.rest():.3f} s"

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_totals)

    def spread(self) -> str:
        return f"min {min(self.totals):.2f}, max {max(self.totals):.2f}"

    def cpu_spread(self) -> str:
        return f"min {min(self.cpu_totals):.2f}, max {max(self.cpu_totals):.2f}"


def instrument(parent: StableDiffusionPipeline, timers: Timers) -> None:
    """Time the UNet's forward and the VAE's decode on the shared component instances (every pipeline built from
    them goes through the wrappers)."""
    parent.unet.forward = timers.wrap("denoiser", parent.unet.forward)
    parent.vae.decode = timers.wrap("decode", parent.vae.decode)


def interleave(arms: list[Arm], repeats: int, timers: Timers) -> None:
    """Round 0 warms up; then `repeats` rounds of every arm, the order rotated each round (no arm always runs after
    the same one)."""
    for repeat in range(repeats + 1):
        shift = repeat % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            arm.run(repeat, timers, keep=repeat > 0)


def profile_steered(call: Callable[[int], Any], top: int) -> None:
    """One steered run under cProfile: the `top` functions by own time, then by cumulative time."""
    profiler = cProfile.Profile()
    profiler.runcall(call, 0)
    stats = pstats.Stats(profiler, stream=sys.stdout)
    print("\ncProfile of one steered run (cProfile slows Python-level code; read it for ranking, not seconds):")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"diffsteer|pipelines|steering", top)


def default_config(args: argparse.Namespace, parent: StableDiffusionPipeline, timers: Timers) -> None:
    steering = StableDiffusionSteeringPipeline.from_pipe(parent)
    steering.set_progress_bar_config(disable=True)
    reward = timers.wrap("reward", redness)
    call = {"prompt": PROMPT, "num_inference_steps": args.steps, "height": 64, "width": 64, "output_type": "pt"}
    print(
        f"Stable Diffusion, tiny components, 64x64, {args.steps} DDIM steps, reward every {args.interval} steps, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    for n in args.particles:
        method = diffsteer.FK(n, lmbda=50.0, interval=args.interval, ess_threshold=None)  # resample every time
        plain = Arm(
            "parent",
            lambda seed, n=n: parent(num_images_per_prompt=n, generator=torch.Generator().manual_seed(seed), **call),
        )
        fk = Arm(
            "FK",
            lambda seed, method=method: steering(
                generator=torch.Generator().manual_seed(seed), reward=reward, method=method, **call
            ),
        )
        interleave([plain, fk], args.repeats, timers)
        print(
            f"  N={n:3d}: parent {plain.median:6.2f} s ({plain.spread()}), FK {fk.median:6.2f} s ({fk.spread()}), "
            f"ratio {fk.median / plain.median:.3f}"
        )
        for arm in (plain, fk):
            print(f"         {arm.name:6s} {arm.breakdown()}; {arm.ledger}")
        if args.profile:
            profile_steered(fk.call, args.profile)


def identical_work(args: argparse.Namespace, parent: StableDiffusionPipeline, timers: Timers) -> None:
    n, steps = 8, 50
    steering = StableDiffusionSteeringPipeline.from_pipe(parent)
    steering.set_progress_bar_config(disable=True)
    reward = timers.wrap("reward", redness)
    call = {
        "num_inference_steps": steps,
        "guidance_scale": 7.5,
        "eta": 1.0,
        "height": 32,
        "width": 32,
        "output_type": "pt",
    }
    method = diffsteer.FK(n, lmbda=args.lmbda, interval=1, ess_threshold=None)
    arms = [
        Arm(
            "plain",
            lambda seed: parent(
                PROMPT, num_images_per_prompt=n, generator=torch.Generator().manual_seed(seed), **call
            ),
        )
    ]
    if args.reference:
        reference_class = load_reference(args.reference, reward)
        reference = reference_class(**parent.components, requires_safety_checker=False)
        reference.set_progress_bar_config(disable=True)

        def run_reference(seed: int) -> Any:
            torch.manual_seed(seed)  # the reference's resampling draws from the global generator
            with quiet():
                return reference(
                    [PROMPT] * n,
                    generator=torch.Generator().manual_seed(seed),
                    fkd_args=fk_args(n, steps, args.lmbda, interval=1),
                    **call,
                )

        arms.append(Arm("reference", run_reference))
    arms.append(
        Arm(
            "diffsteer",
            lambda seed: steering(
                PROMPT, generator=torch.Generator().manual_seed(seed), reward=reward, method=method, **call
            ),
        )
    )
    print(
        f"Identical work: tiny SD components, 32x32, CFG 7.5, DDIM eta=1, {steps} steps, {n} particles, redness "
        f"potential (diff, lambda {args.lmbda}) and resampling at every step; {args.threads} threads, "
        f"median of {args.repeats} interleaved rounds"
    )
    interleave(arms, args.repeats, timers)
    plain = arms[0]
    print("  wall time:")
    for arm in arms:
        print(f"  {arm.name:9s} {arm.median:6.3f} s ({arm.spread()}), ratio to plain {arm.median / plain.median:.3f}")
    print("  CPU time of the process (steadier on a shared machine):")
    for arm in arms:
        print(
            f"  {arm.name:9s} {arm.cpu_median:6.3f} s ({arm.cpu_spread()}), "
            f"ratio to plain {arm.cpu_median / plain.cpu_median:.3f}"
        )
    print("  where the wall time goes (medians, s):")
    for arm in arms:
        print(f"  {arm.name:9s} {arm.breakdown()}")
        print(f"  {'':9s} {arm.ledger}")
    steered = arms[-1]
    extra = statistics.median(
        (s - sum(sp.values())) - (p - sum(pp.values()))
        for s, sp, p, pp in zip(steered.totals, steered.parts, plain.totals, plain.parts, strict=True)
    )
    print(
        f"  diffsteer's rest minus plain's rest, round by round (median): {extra:.3f} s, "
        f"{100 * extra / plain.median:.1f}% of plain"
    )
    # The arms do the same UNet calls and VAE rows (see the ledgers), so their UNet and VAE times differ only by
    # noise. Pricing every arm's calls and rows at the pooled median leaves the differences the arms own.
    per_call = statistics.median(parts["denoiser"] / arm.calls["denoiser"] for arm in arms for parts in arm.parts)
    per_row = statistics.median(parts["decode"] / arm.rows["decode"] for arm in arms for parts in arm.parts)
    estimates = {
        arm.name: arm.calls["denoiser"] * per_call
        + arm.rows["decode"] * per_row
        + statistics.median(parts["reward"] for parts in arm.parts)
        + arm.rest()
        for arm in arms
    }
    print(
        f"  noise-normalised (every arm's UNet calls at {1000 * per_call:.1f} ms and VAE rows at {1000 * per_row:.2f} "
        "ms, the medians pooled over all runs; reward and rest as measured):"
    )
    for name, estimate in estimates.items():
        print(f"  {name:9s} {estimate:6.3f} s, ratio to plain {estimate / estimates['plain']:.3f}")
    if args.reference:
        reference = arms[1]
        ratio = (steered.median / plain.median) / (reference.median / plain.median)
        cpu_ratio = (steered.cpu_median / plain.cpu_median) / (reference.cpu_median / plain.cpu_median)
        normalised = estimates["diffsteer"] / estimates["reference"]
        print(
            f"  diffsteer ratio / reference ratio: {ratio:.3f} wall, {cpu_ratio:.3f} CPU, {normalised:.3f} "
            "noise-normalised (goal: at most 0.95)"
        )
    if args.profile:
        profile_steered(steered.call, args.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identical-work", action="store_true", help="issue 12's configuration (see above)")
    parser.add_argument("--reference", help="with --identical-work: the FK-steering reference checkout to time too")
    parser.add_argument("--lmbda", type=float, default=10.0, help="with --identical-work: FK's lambda")
    parser.add_argument("--particles", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions of one profiled FK run")
    args = parser.parse_args()
    if args.reference and not args.identical_work:
        parser.error("--reference runs with --identical-work")
    torch.set_num_threads(args.threads)
    parent = StableDiffusionPipeline(**sd_components(), requires_safety_checker=False)
    parent.set_progress_bar_config(disable=True)
    timers = Timers()
    instrument(parent, timers)
    (identical_work if args.identical_work else default_config)(args, parent, timers)


if __name__ == "__main__":
    main()
