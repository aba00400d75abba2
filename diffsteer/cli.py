"""The `diffsteer` command line.

Exit codes: 0 on success, 2 for bad input (one line on stderr naming the argument and the fix; also a write that
failed, or memory that ran out), 130 when interrupted (Ctrl-C).
"""

import argparse
import contextlib
import inspect
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import torch


EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error of the command (argparse adds a usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"diffsteer: error: {message} (see {self.prog} --help)\n")


def _gmm(args: argparse.Namespace) -> None:
    """FK steering on the Gaussian-mixture world, compared with its closed-form target and with best-of-N."""
    from diffusers import DDPMScheduler

    import diffsteer
    from diffsteer.generate import check_lmbda, check_seed, plural
    from diffsteer.worlds.gmm import exact_denoiser, four_modes, linear_reward

    check_lmbda(args.lmbda)
    check_seed(args.seed)
    mixture = four_modes()
    direction = torch.tensor([1.0, 0.5])
    tilted, log_z = mixture.tilt(direction, args.lmbda)
    scheduler = DDPMScheduler(clip_sample=False)
    common = dict(
        shape=(2,),
        reward=linear_reward(direction),
        num_inference_steps=args.steps,
        generator=torch.Generator().manual_seed(args.seed),
    )
    method = diffsteer.FK(
        args.particles, potential=args.potential, lmbda=args.lmbda, resampling=args.resampling, interval=args.interval
    )
    fk = diffsteer.sample(exact_denoiser(mixture, scheduler), scheduler, method=method, **common)
    common["generator"] = torch.Generator().manual_seed(args.seed)
    bon = diffsteer.sample(
        exact_denoiser(mixture, scheduler), scheduler, method=diffsteer.BestOfN(args.particles), **common
    )

    def row(values: torch.Tensor) -> str:
        return "  ".join(f"{float(v):.3f}" for v in values)

    fk_modes = tilted.mode_weights(fk.samples, fk.log_weights)
    plain_modes = mixture.mode_weights(bon.samples)
    bon_mode = int(mixture.responsibilities(bon.selected).argmax())
    print(
        "Gaussian-mixture world: 4 modes in 2-D, reward r(x) = a.x with a = (1, 0.5), "
        f"target p(x) exp({args.lmbda} r(x))."
    )
    print(f"{method}")
    print(f"mode weights      prior        {row(mixture.weights)}")
    print(f"                  plain        {row(plain_modes)}   ({plural(args.particles, 'plain sample')})")
    print(f"                  target       {row(tilted.weights)}   (closed form)")
    print(f"                  FK           {row(fk_modes)}   (weighted particles)")
    print(
        f"best-of-{args.particles} picks mode {bon_mode} (reward {float(bon.rewards.max()):.3f}); "
        f"FK's best particle has reward {float(fk.rewards.max()):.3f}"
    )
    print(f"log Z = log E[exp(lambda r)]: FK estimate {fk.log_normalizer:.4f}, closed form {log_z:.4f}")
    resampled = sum(record.resampled for record in fk.trace)
    print(f"FK resampled at {resampled} of {len(fk.trace)} steps; final ESS {fk.ess:.1f} of {args.particles}")
    for name, result in (("FK", fk), ("best-of-N", bon)):
        cost = result.cost
        print(
            f"cost {name:9s}: {cost.model_rows} model rows in {cost.model_calls} calls, {cost.reward_rows} reward "
            f"rows in {cost.reward_calls} calls, {cost.wall_time_s:.2f} s"
        )
    for change in fk.changes:
        print(f"note: {change}")


def _generate(args: argparse.Namespace) -> None:
    """Generate an image for PROMPT, spending up to --budget plain samples' worth of denoising on FK steering or
    best-of-N against --reward; writes the image, every particle and summary.json to --out."""
    from diffsteer import generate as gen
    from diffsteer.output_folder import check_out, write_outputs
    from diffsteer.rewards import get_spec
    from diffsteer.rewards import load as load_reward

    # Every argument is checked before anything loads, so a typo costs no model load and no denoising.
    plan = gen.plan_budget(args.method, args.budget, args.particles, args.steps, args.max_particles)
    gen.check_guidance_scale(args.guidance_scale)
    gen.check_lmbda(args.lmbda, args.method)
    method_settings = gen.method_options(args.method_option, args.lmbda)
    gen.build_method(plan, method_settings)  # a budget too small, or a bad setting, fails before any load
    gen.check_seed(args.seed)
    gen.check_model(args.model)
    device = gen.resolve_device(args.device)
    options = gen.reward_options(args.reward_option)
    get_spec(args.reward)
    check_out(args.out)
    # The reward loads first: an option it does not take is refused before the (larger) model loads.
    reward = load_reward(args.reward, **options).to(device)
    pipeline = gen.load_pipeline(args.model, device)
    gen.check_prompt(pipeline, args.prompt)
    calls = 2 * plan.steps - 1 if getattr(pipeline.scheduler, "order", 1) == 2 else plan.steps
    method = gen.build_method(plan, method_settings, num_model_calls=calls)
    print(gen.describe_method(method, plan, calls), file=sys.stderr)
    output = gen.generate(
        pipeline, args.prompt, reward, method, steps=plan.steps, guidance_scale=args.guidance_scale, seed=args.seed
    )
    summary = gen.summarize(
        output,
        prompt=args.prompt,
        model=str(args.model),
        reward_name=args.reward,
        reward_options=options,
        plan=plan,
        method=method,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        judge=gen.is_shapes_model(args.model),
        num_model_calls=calls,
    )
    summary = write_outputs(args.out, output, summary)
    verdict = summary.get("evaluator")
    judged = ""
    if isinstance(verdict, dict):
        judged = f"; evaluator: {'correct' if verdict['selected']['correct'] else 'incorrect'}"
    folder = Path(args.out)
    print(
        f"wrote {folder / 'image.png'} (reward {summary['rewards']['selected']:.3f}{judged}), "
        f"{gen.plural(len(summary['files']['particles']), 'particle')} and {folder / 'summary.json'}"
    )


def _rewards(args: argparse.Namespace) -> None:
    """List the registered rewards: name, whether gradients reach the images, whether the default weights need a
    download, the options `--reward-option` passes, what each scores and where its weights come from."""
    from diffsteer.rewards import available

    rows = [("name", "differentiable", "needs download", "options")]
    details = []
    for spec in available():
        options = [name for name in inspect.signature(spec.factory).parameters if name != "self"]
        rows.append(
            (
                spec.name,
                "yes" if spec.differentiable else "no",
                "yes" if spec.needs_download else "no",
                ", ".join(options) or "none",
            )
        )
        details.append((spec.summary, spec.source))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3])
        if index:
            summary, source = details[index - 1]
            print(f"    {summary}")
            print(f"    weights: {source}")


def build_parser() -> argparse.ArgumentParser:
    from diffsteer.generate import MAX_PARTICLES, METHODS, SHAPES_MODEL, method_option, reward_option

    parser = _Parser(
        prog="diffsteer",
        description="Inference-time steering of diffusion models (FK steering, best-of-N).",
        epilog="Exit codes: 0 done, 2 bad input (one line on stderr), 130 interrupted.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gmm = commands.add_parser(
        "gmm",
        help="run FK steering on the exact Gaussian-mixture world and compare it with the closed-form target",
        description=_gmm.__doc__,
    )
    gmm.add_argument("--particles", type=int, default=2000, help="number of particles N (default 2000)")
    gmm.add_argument("--lmbda", type=float, default=0.6, help="tilt strength lambda, finite (default 0.6)")
    gmm.add_argument("--potential", default="diff", help="diff, max, sum or immediate (default diff)")
    gmm.add_argument("--resampling", default="systematic", help="multinomial, stratified, systematic or residual")
    gmm.add_argument("--interval", type=int, default=1, help="evaluate the reward every INTERVAL steps (default 1)")
    gmm.add_argument("--steps", type=int, default=100, help="DDPM steps (default 100)")
    gmm.add_argument("--seed", type=int, default=0, help="random seed, 0 .. 2**64 - 1 (default 0)")
    gmm.set_defaults(run=_gmm)

    generate = commands.add_parser(
        "generate",
        help="generate an image for a prompt under a compute budget (FK steering or best-of-N)",
        description=_generate.__doc__,
        epilog="The run writes into a temporary folder beside --out and then swaps it in, so --out holds one whole "
        "run: never files of two runs, and an interrupted or failed run leaves an earlier --out as it was. "
        "Exit codes: 0 done, 2 bad input (one line on stderr), 130 interrupted.",
    )
    generate.add_argument("prompt", help="what to draw, e.g. 'a red circle left of a blue square'")
    generate.add_argument(
        "--model",
        default=SHAPES_MODEL,
        help=f"'{SHAPES_MODEL}' (the embedded shapes model, default), a local diffusers folder or a hub id",
    )
    generate.add_argument(
        "--reward", default="shapes-detect", help="a name `diffsteer rewards` lists (default shapes-detect)"
    )
    generate.add_argument(
        "--reward-option",
        action="append",
        type=reward_option,
        default=[],
        metavar="KEY=JSON",
        help="an option of the reward, repeatable; the value is JSON, e.g. partial=true for shapes-eval, or local "
        "weights: --reward image-reward --reward-option pretrained='\"/models/ImageReward.pt\"' "
        "(`diffsteer rewards` lists each reward's options)",
    )
    generate.add_argument(
        "--method",
        choices=METHODS,
        default="fk",
        help="fk (FK steering, default), bon (best-of-N), zero-order (zero-order search), paths (search over "
        "paths), svdd (per-step selection of children), rbf (rollover budget forcing)",
    )
    generate.add_argument(
        "--method-option",
        action="append",
        type=method_option,
        default=[],
        metavar="KEY=JSON",
        help="a setting of the method, repeatable; the value is JSON, e.g. num_neighbors=4 for zero-order, "
        "selection='\"sample\"' for svdd, potential='\"max\"' for fk (the README lists each method's settings)",
    )
    generate.add_argument(
        "--budget",
        type=float,
        default=None,
        help="denoiser cost allowed, in plain samples (default: --particles, else 4); the method turns it into "
        "its counts (particles, rounds, children, tries)",
    )
    generate.add_argument(
        "--particles", type=int, default=None, help="particles N of fk and bon (default: floor of --budget)"
    )
    generate.add_argument(
        "--max-particles",
        type=int,
        default=MAX_PARTICLES,
        help=f"the most particles a run may take (default {MAX_PARTICLES}): all are denoised in one batch and kept "
        "as images, so memory grows with them; raise it on a machine that holds more",
    )
    generate.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    generate.add_argument(
        "--guidance-scale",
        type=float,
        default=3.0,
        help="classifier-free guidance, finite and >= 0 (default 3.0); values <= 1 turn it off, as in diffusers "
        "(Flux takes the value as its distilled guidance)",
    )
    generate.add_argument(
        "--lmbda",
        type=float,
        default=None,
        help="tilt strength lambda of fk and svdd's sampled selection, finite (default: FK's 1.0, SVDD's 10)",
    )
    generate.add_argument("--seed", type=int, default=0, help="random seed, 0 .. 2**64 - 1 (default 0)")
    generate.add_argument(
        "--out",
        default="diffsteer-output",
        help="output folder (default ./diffsteer-output); replaced whole by each run, so it must be new, empty or "
        "an earlier diffsteer output",
    )
    generate.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    generate.set_defaults(run=_generate)

    rewards = commands.add_parser("rewards", help="list the rewards --reward takes", description=_rewards.__doc__)
    rewards.set_defaults(run=_rewards)
    return parser


@contextlib.contextmanager
def _quiet_third_parties() -> Iterator[None]:
    """Mute warnings and log lines of diffusers, transformers, huggingface_hub and the rest during a command: they
    would come before (and bury) the command's own one-line error. diffsteer's own warnings still show, and the
    caller's settings come back afterwards."""
    import diffusers.utils.logging
    import huggingface_hub.utils.logging
    import transformers.utils.logging

    libraries = (diffusers.utils.logging, transformers.utils.logging, huggingface_hub.utils.logging)
    levels = [library.get_verbosity() for library in libraries]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("default", module=r"diffsteer(\.|$)")
        for library in libraries:
            library.set_verbosity_error()
        try:
            yield
        finally:
            for library, level in zip(libraries, levels, strict=True):
                library.set_verbosity(level)


def _is_out_of_memory(error: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; torch's CPU allocator raises a plain RuntimeError that says so.
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def _fail(message: str) -> int:
    print(f"diffsteer: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    """Run the command in `argv` (default: `sys.argv[1:]`); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help (0) or an argparse error (2, already printed on one line)
        return exit.code if isinstance(exit.code, int) else EXIT_BAD_INPUT
    try:
        with _quiet_third_parties():
            args.run(args)
    except KeyboardInterrupt:  # Ctrl-C: whatever was being written has been removed on the way out
        print("\ndiffsteer: interrupted" if sys.stderr.isatty() else "diffsteer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, OSError) as error:  # bad input and missing files or weights: one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return _fail(message)
    except (MemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise
        return _fail("out of memory; lower --budget or --particles (or use a device with more memory).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
