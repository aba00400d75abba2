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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as error:
        print(f"diffsteer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
