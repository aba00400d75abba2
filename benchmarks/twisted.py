"""Twisted SMC against FK at equal particles, on the Gaussian-mixture world, where the tilted target is exact.

Both sample p(x) exp(lambda r(x)) (FK with the diff potential at every step, so the two differ only in the proposal:
FK moves particles with the model's transition, twisted SMC with the transition shifted by std^2 lambda grad r at
x0-hat). For each reward, tilt and particle count it runs `--replicates` independent replicates (100 DDPM steps,
the exact denoiser of `four_modes()`) and prints the root-mean-square error, over replicates, of the mode weights
(total variation against the closed form), of the weighted mean (Euclidean distance) and of log Z, log Z's bias,
and the mean of each run's smallest ESS. The errors include
the 100-step sampler's own discretisation error (about 0.01 in total variation), which no particle count removes.

Rewards: linear `r = a.x` (a = (1, 0.5), lambda 0.6 and 3), whose tilt moves mass between modes that x0-hat
separates late; and `r = -|x - c|^2` with c = (2, 3.2) above the lightest mode (lambda 1), a narrow target in a
region of low prior density.

    python benchmarks/twisted.py [--particles 64 1024] [--replicates 32] [--steps 100]
"""

import argparse
import math
import time

import torch
from diffusers import DDPMScheduler

import diffsteer
from diffsteer.worlds.gmm import GaussianMixture, exact_denoiser, four_modes, linear_reward


DIRECTION = torch.tensor([1.0, 0.5], dtype=torch.float64)
CENTRE = torch.tensor([2.0, 3.2], dtype=torch.float64)


def quadratic_tilt(mixture: GaussianMixture, lmbda: float) -> tuple[GaussianMixture, float]:
    """p(x) exp(-lmbda |x - c|^2) for an isotropic mixture, and its log Z = log E_p[exp(-lmbda |x - c|^2)]."""
    variances = mixture.covariances[:, 0, 0]
    precision = 1 / variances + 2 * lmbda
    means = (mixture.means / variances[:, None] + 2 * lmbda * CENTRE) / precision[:, None]
    # The integral of N(x; mu, s^2 I) exp(-lmbda |x - c|^2) over x is
    # (1 + 2 lmbda s^2)^(-d/2) exp(-lmbda |mu - c|^2 / (1 + 2 lmbda s^2)).
    spread = 1 + 2 * lmbda * variances
    log_factors = -0.5 * mixture.dim * torch.log(spread) - lmbda * ((mixture.means - CENTRE) ** 2).sum(1) / spread
    log_joint = torch.log(mixture.weights) + log_factors
    log_z = torch.logsumexp(log_joint, 0)
    eye = torch.eye(mixture.dim, dtype=torch.float64)
    tilted = GaussianMixture(torch.exp(log_joint - log_z), means, (1 / precision)[:, None, None] * eye)
    return tilted, float(log_z)


def quadratic_reward(x: torch.Tensor) -> torch.Tensor:
    return -((x.double() - CENTRE) ** 2).sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--replicates", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    mixture = four_modes()
    cases = [
        ("linear, lambda 0.6", linear_reward(DIRECTION), 0.6, mixture.tilt(DIRECTION, 0.6)),
        ("linear, lambda 3", linear_reward(DIRECTION), 3.0, mixture.tilt(DIRECTION, 3.0)),
        ("-|x - c|^2, lambda 1", quadratic_reward, 1.0, quadratic_tilt(mixture, 1.0)),
    ]
    print(
        "| reward | N | method | mode weights (TV, RMS) | mean (RMS) | log Z (RMS) | log Z (bias) | smallest ESS / N "
        "| s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for label, reward, lmbda, (tilted, log_z) in cases:
        for particles in args.particles:
            methods = {
                "FK": lambda n=particles, lmbda=lmbda: diffsteer.FK(n, lmbda=lmbda),
                "twisted (dps)": lambda n=particles, lmbda=lmbda: diffsteer.Twisted(n, lmbda=lmbda),
                "twisted (x0-fixed)": lambda n=particles, lmbda=lmbda: diffsteer.Twisted(
                    n, lmbda=lmbda, variant="x0-fixed"
                ),
            }
            for name, make in methods.items():
                started = time.perf_counter()
                mode_errors, mean_errors, log_z_errors, ess = [], [], [], []
                target_mean = (tilted.weights[:, None] * tilted.means).sum(0)
                for seed in range(args.replicates):
                    scheduler = DDPMScheduler(clip_sample=False)
                    result = diffsteer.sample(
                        exact_denoiser(mixture, scheduler),
                        scheduler,
                        shape=(2,),
                        method=make(),
                        reward=reward,
                        num_inference_steps=args.steps,
                        generator=torch.Generator().manual_seed(seed),
                    )
                    weights = tilted.mode_weights(result.samples, result.log_weights)
                    mode_errors.append(0.5 * float((weights - tilted.weights).abs().sum()))
                    normalised = torch.softmax(result.log_weights.double(), 0)
                    estimate = (normalised[:, None] * result.samples.double()).sum(0)
                    mean_errors.append(float((estimate - target_mean).norm()))
                    log_z_errors.append(result.log_normalizer - log_z)
                    ess.append(min(record.ess for record in result.trace) / particles)
                rms = math.sqrt(sum(e * e for e in mode_errors) / len(mode_errors))
                rms_mean = math.sqrt(sum(e * e for e in mean_errors) / len(mean_errors))
                rms_log_z = math.sqrt(sum(e * e for e in log_z_errors) / len(log_z_errors))
                bias_log_z = sum(log_z_errors) / len(log_z_errors)
                print(
                    f"| {label} | {particles} | {name} | {rms:.4f} | {rms_mean:.4f} | {rms_log_z:.3f} | "
                    f"{bias_log_z:+.3f} | {sum(ess) / len(ess):.2f} | {time.perf_counter() - started:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
