"""The `diffsteer` command line."""

import argparse
import sys

import torch


def _gmm(args: argparse.Namespace) -> None:
    """FK steering on the Gaussian-mixture world, compared with its closed-form target and with best-of-N."""
    from diffusers import DDPMScheduler

    import diffsteer
    from diffsteer.worlds.gmm import exact_denoiser, four_modes, linear_reward

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
    print(f"                  plain        {row(plain_modes)}   ({args.particles} plain samples)")
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
    from pathlib import Path

    from diffsteer import generate as gen
    from diffsteer.rewards import get_spec
    from diffsteer.rewards import load as load_reward

    plan = gen.plan_budget(args.method, args.budget, args.particles, args.steps)
    get_spec(args.reward)  # an unknown reward fails before the model loads
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = gen.load_pipeline(args.model, device)
    gen.check_prompt(pipeline, args.prompt)
    reward = load_reward(args.reward).to(device)
    method = gen.make_method(plan, **({} if args.lmbda is None else {"lmbda": args.lmbda}))
    print(plan.describe(), file=sys.stderr)
    output = gen.generate(
        pipeline, args.prompt, reward, method, steps=plan.steps, guidance_scale=args.guidance_scale, seed=args.seed
    )
    summary = gen.summarize(
        output,
        prompt=args.prompt,
        model=str(args.model),
        reward_name=args.reward,
        plan=plan,
        method=method,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        judge=gen.is_shapes_model(args.model),
    )
    out = Path(args.out)
    gen.write_outputs(out, output, summary)
    verdict = summary.get("evaluator")
    judged = ""
    if isinstance(verdict, dict):
        judged = f"; evaluator: {'correct' if verdict['selected']['correct'] else 'incorrect'}"
    print(
        f"wrote {out / 'image.png'} (reward {summary['rewards']['selected']:.3f}{judged}), "
        f"{len(summary['files']['particles'])} particles and {out / 'summary.json'}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffsteer", description="Inference-time steering of diffusion models (FK steering, best-of-N)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gmm = commands.add_parser(
        "gmm",
        help="run FK steering on the exact Gaussian-mixture world and compare it with the closed-form target",
        description=_gmm.__doc__,
    )
    gmm.add_argument("--particles", type=int, default=2000, help="number of particles N (default 2000)")
    gmm.add_argument("--lmbda", type=float, default=0.6, help="tilt strength lambda (default 0.6)")
    gmm.add_argument("--potential", default="diff", help="diff, max, sum or immediate (default diff)")
    gmm.add_argument("--resampling", default="systematic", help="multinomial, stratified, systematic or residual")
    gmm.add_argument("--interval", type=int, default=1, help="evaluate the reward every INTERVAL steps (default 1)")
    gmm.add_argument("--steps", type=int, default=100, help="DDPM steps (default 100)")
    gmm.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gmm.set_defaults(run=_gmm)

    from diffsteer.generate import METHODS, SHAPES_MODEL

    generate = commands.add_parser(
        "generate",
        help="generate an image for a prompt under a compute budget (FK steering or best-of-N)",
        description=_generate.__doc__,
    )
    generate.add_argument("prompt", help="what to draw, e.g. 'a red circle left of a blue square'")
    generate.add_argument(
        "--model",
        default=SHAPES_MODEL,
        help=f"'{SHAPES_MODEL}' (the embedded shapes model, default), a local diffusers folder or a hub id",
    )
    generate.add_argument(
        "--reward", default="shapes-clip", help="a name from diffsteer.rewards.available() (default shapes-clip)"
    )
    generate.add_argument(
        "--method", choices=METHODS, default="fk", help="fk (FK steering, default) or bon (best-of-N)"
    )
    generate.add_argument(
        "--budget",
        type=float,
        default=None,
        help="denoiser cost allowed, in plain samples (default: --particles, else 4); the method turns it into "
        "particles",
    )
    generate.add_argument("--particles", type=int, default=None, help="particles N (default: floor of --budget)")
    generate.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    generate.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (default 3.0)")
    generate.add_argument("--lmbda", type=float, default=None, help="FK tilt strength lambda (default: the method's)")
    generate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    generate.add_argument("--out", default="diffsteer-output", help="output folder (default ./diffsteer-output)")
    generate.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    generate.set_defaults(run=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as error:  # bad input and missing files or weights: one line, no traceback
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"diffsteer: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
