"""Overhead of FK steering over plain sampling, measured in one run.

Default mode: FK with N particles, the reward evaluated and the particles resampled at every step, against the plain
sampler of N samples (`BestOfN(N)`: the same model calls, one final reward) on a model whose forward pass dominates:
a residual MLP denoiser (width 1024, 4 blocks) on 64-dimensional samples. Runs alternate and repeat; the script
prints the median wall times, their ratio, and both ledgers.

`--null`: diffsteer's machinery measured directly. The denoiser returns zeros of the sample's shape and the reward
returns zeros, so what is left of a run is the sampling loop itself. `diffsteer.sample` with FK (potentials and
resampling at every step) and with BestOfN runs against the plain sampler, a hand-written diffusers-style loop over
the same scheduler with the same null model:

    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, generator=g, **step_kwargs).prev_sample

The machinery is the difference of paired (same-round) runs, reported in seconds per step and as a percentage of
one plain run *with the real denoiser* of the same configuration (measured in the same process), which is what
"machinery at most 2% of plain" refers to. `--config sd` (the default with `--null`) is the identical-work
configuration of `benchmarks/pipelines.py --identical-work`: tiny SD UNet with CFG 7.5 on 4x16x16 latents (32x32
images), 8 particles, DDIM with eta=1, 50 steps. It also measures the pipeline: `StableDiffusionSteeringPipeline`
with FK against its parent (`num_images_per_prompt=8`), both with the UNet's forward and the VAE's decode patched
to return zeros (and the null reward), against the real parent. `--config mlp` is the default mode's MLP, N=256,
DDPM.

    python benchmarks/overhead.py [--particles 256] [--steps 50] [--repeats 5] [--threads 2]
    python benchmarks/overhead.py --null [--config sd|mlp] [--null-repeats 21] [--repeats 3] [--reference PATH]
        [--search-budget 16] [--search-methods zero-order paths svdd rbf]

The search drivers' machinery (with `--null`, both configurations): zero-order search, search over paths, SVDD and
rollover budget forcing, each made by `make_method(name, budget=--search-budget)` (16 by default, above every
method's minimum at 50 steps), run by `diffsteer.sample` with the null model and reward. With a null reward no try
of rollover budget forcing improves, so it spends its whole quota: its rows are exactly B plain samples. Each run's
model calls are recorded once (rows per call) and replayed by the plain sampler: consecutive calls of the same rows
become plain loops of at most `--steps` steps, so the plain arm makes the same calls with the same rows. The
machinery is the paired difference, per particle model call (the ledger's `particle_calls`: a call on N rows counts
N), and as a share of plain sampling with the real denoiser at the same particle calls (priced at the real plain
run's time per particle call). FK and best-of-N are given per particle call too, for comparison.

With `--reference PATH` the public FK-steering reference (see benchmarks/reference_fk.py) runs the pipeline
comparison with the same nulls, so its machinery is measured the same way. Every figure is given in wall time and
in the process's CPU time; the CPU time is the steadier of the two on a shared machine.
"""

import os


# On a shared machine, OpenMP threads that spin while waiting for a descheduled sibling make a 2-thread run up to
# 20x slower at random; passive waiting keeps the medians usable (OMP_WAIT_POLICY=ACTIVE in the environment wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

import diffsteer
from diffsteer.pipelines import StableDiffusionSteeringPipeline


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "tiny"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from components import sd_components
from reference_fk import fk_args, load_reference, quiet


Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PROMPT = "a photo of a red cat"
REAL_PLAIN = "the plain sampler with the real denoiser"
SEARCH_METHODS = ("zero-order", "paths", "svdd", "rbf")  # the search drivers' methods measured with --null


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


def null_model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The null denoiser: zeros of the sample's shape."""
    return torch.zeros_like(sample)


def null_reward(x: torch.Tensor, prompts: Any = None) -> torch.Tensor:
    """The null reward: one zero per row."""
    return torch.zeros(x.shape[0])


def plain_sample(
    model: Model,
    scheduler: SchedulerMixin,
    shape: tuple[int, ...],
    num_samples: int,
    num_inference_steps: int,
    step_kwargs: dict[str, Any],
    seed: int,
) -> torch.Tensor:
    """The plain sampler: diffusers' denoising loop, written out, with no steering machinery at all."""
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(num_inference_steps)
    x = randn_tensor((num_samples, *shape), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_output = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(model_output, t, x, generator=generator, **step_kwargs).prev_sample
    return x


def interleave(arms: dict[str, Callable[[int], Any]], repeats: int, clocks: dict[str, dict[str, list[float]]]) -> None:
    """`repeats` rounds of every arm, the order rotated each round (one discarded warm-up round first).

    Each run's seconds go to `clocks["wall"][name]` (wall time) and `clocks["cpu"][name]` (the process's CPU time,
    which a loaded machine inflates much less: time spent descheduled is not counted).
    """
    names = list(arms)
    for clock in clocks.values():
        for name in names:
            clock.setdefault(name, [])
    for repeat in range(repeats + 1):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            arm = arms[name]
            wall, cpu = time.perf_counter(), time.process_time()
            arm(repeat)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if repeat:
                clocks["wall"][name].append(wall)
                clocks["cpu"][name].append(cpu)


def new_clocks() -> dict[str, dict[str, list[float]]]:
    return {"wall": {}, "cpu": {}}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} s ({min(values):.4f}-{max(values):.4f})"


def paired_extra(times: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of `name`'s time minus `baseline`'s in the same round."""
    return statistics.median(a - b for a, b in zip(times[name], times[baseline], strict=True))


def report_machinery(
    clocks: dict[str, dict[str, list[float]]],
    baseline: str,
    steps: int,
    denominators: dict[str, dict[str, float]],
    indent: str = "  ",
) -> None:
    """Each arm's times, then each non-baseline arm's machinery (paired difference to the baseline) per run, per step
    and as a share of each denominator, in wall time and in CPU time."""
    for name, values in clocks["wall"].items():
        print(f"{indent}{name:34s} wall {spread(values)}; cpu {spread(clocks['cpu'][name])}")
    for name in clocks["wall"]:
        if name == baseline:
            continue
        for clock, times in clocks.items():
            extra = paired_extra(times, name, baseline)
            shares = ", ".join(
                f"{100 * extra / seconds[clock]:.2f}% of {what}" for what, seconds in denominators.items()
            )
            print(
                f"{indent}machinery of {name} ({clock}): {extra:.4f} s per run, {1000 * extra / steps:.3f} ms per "
                f"step; {shares}"
            )


def medians(clocks: dict[str, dict[str, list[float]]], name: str) -> dict[str, float]:
    return {clock: statistics.median(times[name]) for clock, times in clocks.items()}


class SDDenoiser:
    """The tiny SD UNet with classifier-free guidance as a `model(sample, timestep)` callable (the real denoiser of
    the sd configuration; the prompt is encoded once)."""

    def __init__(self, pipe: StableDiffusionPipeline, num_samples: int, guidance_scale: float) -> None:
        self.pipe, self.guidance_scale = pipe, guidance_scale
        positive, negative = pipe.encode_prompt(PROMPT, "cpu", num_samples, True)
        self.embeds = torch.cat([negative, positive])

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        noise = self.pipe.unet(torch.cat([sample] * 2), timestep, encoder_hidden_states=self.embeds, return_dict=False)
        uncond, text = noise[0].chunk(2)
        return uncond + self.guidance_scale * (text - uncond)


@contextlib.contextmanager
def nulled(pipe: StableDiffusionPipeline) -> Iterator[None]:
    """The pipeline's UNet forward returns zeros of its input's shape and its VAE decode returns zero images."""
    factor = pipe.vae_scale_factor

    def unet_forward(sample: torch.Tensor, *args: Any, return_dict: bool = True, **kwargs: Any) -> tuple:
        return (torch.zeros_like(sample),)

    def vae_decode(z: torch.Tensor, return_dict: bool = True, generator: Any = None) -> tuple:
        return (torch.zeros(z.shape[0], 3, z.shape[2] * factor, z.shape[3] * factor, dtype=z.dtype),)

    pipe.unet.forward, pipe.vae.decode = unet_forward, vae_decode
    try:
        yield
    finally:
        del pipe.unet.forward, pipe.vae.decode  # back to the class's methods


def null_mode(args: argparse.Namespace) -> None:
    steps = args.steps
    lmbda = 10.0
    if args.config == "sd":
        n, shape, step_kwargs = 8, (4, 16, 16), {"eta": 1.0}
        parent = StableDiffusionPipeline(**sd_components(), requires_safety_checker=False)
        parent.set_progress_bar_config(disable=True)
        scheduler = parent.scheduler
        real_model: Model = SDDenoiser(parent, n, guidance_scale=7.5)
        description = f"tiny SD (CFG 7.5) on 4x16x16 latents, {n} particles, DDIM eta=1"
    else:
        n, shape, step_kwargs = args.particles, (64,), {}
        scheduler = DDPMScheduler()
        torch.manual_seed(0)
        real_model = MLPDenoiser().eval()
        description = f"residual MLP on 64-dim samples, {n} particles, DDPM"
    plain_scheduler = type(scheduler).from_config(scheduler.config)
    methods = {
        "FK, every step": diffsteer.FK(n, lmbda=lmbda, interval=1, ess_threshold=None),
        "BestOfN": diffsteer.BestOfN(n),
    }

    def plain(model: Model) -> Callable[[int], Any]:
        def run(seed: int) -> Any:
            with torch.no_grad():
                return plain_sample(model, plain_scheduler, shape, n, steps, step_kwargs, seed)

        return run

    def steered(method: Any) -> Callable[[int], Any]:
        def run(seed: int) -> Any:
            return diffsteer.sample(
                null_model,
                scheduler,
                shape=shape,
                method=method,
                reward=null_reward,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed),
                step_kwargs=step_kwargs,
            )

        return run

    print(
        f"Machinery with a null denoiser and a null reward: {description}, {steps} steps, {args.threads} threads; "
        f"null runs: median of {args.null_repeats} interleaved rounds, real runs: median of {args.repeats}"
    )
    real = new_clocks()
    interleave({"plain sampler, real denoiser": plain(real_model)}, args.repeats, real)
    print(
        f"  plain sampler, real denoiser       wall {spread(real['wall']['plain sampler, real denoiser'])}; "
        f"cpu {spread(real['cpu']['plain sampler, real denoiser'])}"
    )
    denominators = {REAL_PLAIN: medians(real, "plain sampler, real denoiser")}
    null_arms = {"plain sampler, null model": plain(null_model)}
    null_arms.update({f"diffsteer.sample {name}": steered(method) for name, method in methods.items()})
    times = new_clocks()
    interleave(null_arms, args.null_repeats, times)
    if args.config == "sd":
        pipeline_mode(args, parent, n, times, denominators)
    else:
        print("  sampling loop (diffsteer.sample vs the plain sampler, both with the null model):")
        report_machinery(times, "plain sampler, null model", steps, denominators, indent="    ")
    real_per_call = {clock: seconds / (n * steps) for clock, seconds in denominators[REAL_PLAIN].items()}
    search_mode(args, scheduler, shape, step_kwargs, n, times, real_per_call)


def recorded_calls(
    method: Any, scheduler: SchedulerMixin, shape: tuple[int, ...], steps: int, step_kwargs: dict[str, Any]
) -> tuple[list[int], Any]:
    """The rows of every model call of `method`'s run with the null model and reward, and the run's ledger."""
    rows: list[int] = []

    def recording(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        rows.append(sample.shape[0])
        return torch.zeros_like(sample)

    result = diffsteer.sample(
        recording,
        scheduler,
        shape=shape,
        method=method,
        reward=null_reward,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        step_kwargs=step_kwargs,
    )
    return rows, result.cost


def plain_loops(rows: list[int], steps: int) -> list[tuple[int, int]]:
    """(samples, steps) of plain loops that make the calls `rows` records: consecutive calls of the same rows, in
    loops of at most `steps` steps."""
    loops: list[tuple[int, int]] = []
    for count in rows:
        if loops and loops[-1][0] == count and loops[-1][1] < steps:
            loops[-1] = (count, loops[-1][1] + 1)
        else:
            loops.append((count, 1))
    return loops


def search_mode(
    args: argparse.Namespace,
    scheduler: SchedulerMixin,
    shape: tuple[int, ...],
    step_kwargs: dict[str, Any],
    n: int,
    loop_times: dict[str, dict[str, list[float]]],
    real_per_call: dict[str, float],
) -> None:
    """The search drivers' machinery per particle model call, each against the plain sampler making its calls."""
    steps, budget = args.steps, args.search_budget
    plain_scheduler = type(scheduler).from_config(scheduler.config)
    arms: dict[str, Callable[[int], Any]] = {}
    pairs: dict[str, tuple[str, int, int]] = {}  # steered arm -> (its plain arm, particle calls, model calls)
    print(
        f"  search drivers at budget {budget:g} (diffsteer.sample vs the plain sampler making the same calls, both "
        "with the null model and reward):"
    )
    for name in args.search_methods:
        method = diffsteer.make_method(name, budget=budget, num_inference_steps=steps)
        rows, ledger = recorded_calls(method, scheduler, shape, steps, step_kwargs)
        loops = plain_loops(rows, steps)
        print(
            f"    {name}: {method.settings()}; {ledger.model_calls} model calls, {ledger.model_rows} rows = "
            f"{ledger.cost:g} plain samples (budget {budget:g}), {ledger.particle_calls} particle calls, "
            f"{ledger.reward_calls} reward calls; plain arm: {len(loops)} loops"
        )

        def steered(seed: int, method: Any = method) -> Any:
            return diffsteer.sample(
                null_model,
                scheduler,
                shape=shape,
                method=method,
                reward=null_reward,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed),
                step_kwargs=step_kwargs,
            )

        def plain(seed: int, loops: list[tuple[int, int]] = loops) -> Any:
            with torch.no_grad():
                for samples, calls in loops:
                    plain_sample(null_model, plain_scheduler, shape, samples, calls, step_kwargs, seed)

        arms[f"{name}, same calls, plain sampler"] = plain
        arms[f"{name}, diffsteer.sample"] = steered
        pairs[f"{name}, diffsteer.sample"] = (
            f"{name}, same calls, plain sampler",
            ledger.particle_calls,
            ledger.model_calls,
        )
    times = new_clocks()
    interleave(arms, args.null_repeats, times)
    for name, values in times["wall"].items():
        print(f"    {name:42s} wall {spread(values)}; cpu {spread(times['cpu'][name])}")
    # FK and best-of-N of the sampling loop above, per particle call: N particles at each of T steps.
    for name in loop_times["wall"]:
        if name.startswith("diffsteer.sample"):
            pairs[name] = ("plain sampler, null model", n * steps, steps)
    for name, (baseline, particle_calls, model_calls) in pairs.items():
        source = times if name in times["wall"] else loop_times
        figures = []
        for clock in ("wall", "cpu"):
            extra = paired_extra(source[clock], name, baseline)
            share = 100 * extra / (real_per_call[clock] * particle_calls)
            figures.append(
                f"{clock} {extra:.4f} s per run, {1e6 * extra / particle_calls:.1f} us per particle call "
                f"({1e3 * extra / model_calls:.3f} ms per model call), {share:.2f}%"
            )
        print(
            f"    machinery of {name} ({particle_calls} particle calls in {model_calls} model calls): "
            + "; ".join(figures)
        )
    print(
        f"    (the % is of plain sampling with the real denoiser at the same particle calls: "
        f"{1e3 * real_per_call['wall']:.3f} ms wall, {1e3 * real_per_call['cpu']:.3f} ms cpu per particle call)"
    )


def pipeline_mode(
    args: argparse.Namespace,
    parent: StableDiffusionPipeline,
    n: int,
    loop_times: dict[str, dict[str, list[float]]],
    denominators: dict[str, dict[str, float]],
) -> None:
    steering = StableDiffusionSteeringPipeline.from_pipe(parent)
    steering.set_progress_bar_config(disable=True)
    call = {
        "num_inference_steps": args.steps,
        "guidance_scale": 7.5,
        "eta": 1.0,
        "height": 32,
        "width": 32,
        "output_type": "pt",
    }

    def parent_run(seed: int) -> Any:
        return parent(PROMPT, num_images_per_prompt=n, generator=torch.Generator().manual_seed(seed), **call)

    def steered_run(method: Any) -> Callable[[int], Any]:
        def run(seed: int) -> Any:
            return steering(
                PROMPT, generator=torch.Generator().manual_seed(seed), reward=null_reward, method=method, **call
            )

        return run

    real = new_clocks()
    interleave({"parent pipeline, real": parent_run}, args.repeats, real)
    print(
        f"  parent pipeline, real UNet and VAE wall {spread(real['wall']['parent pipeline, real'])}; "
        f"cpu {spread(real['cpu']['parent pipeline, real'])}"
    )
    denominators["the real parent pipeline"] = medians(real, "parent pipeline, real")
    print("  sampling loop (diffsteer.sample vs the plain sampler, both with the null model):")
    report_machinery(loop_times, "plain sampler, null model", args.steps, denominators, indent="    ")
    print("  pipeline (steering pipeline vs its parent, both with a null UNet, VAE and reward):")
    arms = {
        "parent, nulls": parent_run,
        "FK pipeline, every step": steered_run(diffsteer.FK(n, lmbda=10.0, interval=1, ess_threshold=None)),
        "BestOfN pipeline": steered_run(diffsteer.BestOfN(n)),
    }
    if args.reference:
        reference = load_reference(args.reference, null_reward)(**parent.components, requires_safety_checker=False)
        reference.set_progress_bar_config(disable=True)

        def reference_run(seed: int) -> Any:
            torch.manual_seed(seed)
            with quiet():
                return reference(
                    [PROMPT] * n,
                    generator=torch.Generator().manual_seed(seed),
                    fkd_args=fk_args(n, args.steps, 10.0, interval=1),
                    **call,
                )

        arms["reference FK, every step"] = reference_run
    times = new_clocks()
    with nulled(parent):
        interleave(arms, args.null_repeats, times)
    report_machinery(times, "parent, nulls", args.steps, denominators, indent="    ")


def default_mode(args: argparse.Namespace) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--null", action="store_true", help="measure the machinery with a null denoiser and reward")
    parser.add_argument("--config", choices=("sd", "mlp"), default="sd", help="with --null: the configuration")
    parser.add_argument("--particles", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the runs with a real denoiser")
    parser.add_argument("--null-repeats", type=int, default=21, help="with --null: rounds of the null runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--reference", help="with --null --config sd: the FK-steering reference checkout, run with the same nulls"
    )
    parser.add_argument(
        "--search-budget", type=float, default=16.0, help="with --null: the search drivers' budget, in plain samples"
    )
    parser.add_argument(
        "--search-methods", nargs="*", default=list(SEARCH_METHODS), choices=SEARCH_METHODS, help="with --null"
    )
    args = parser.parse_args()
    if args.reference and not (args.null and args.config == "sd"):
        parser.error("--reference runs with --null --config sd")
    torch.set_num_threads(args.threads)
    (null_mode if args.null else default_mode)(args)


if __name__ == "__main__":
    main()
