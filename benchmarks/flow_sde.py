"""Few-step accuracy of stochastic flow samplers on the Gaussian-mixture world (issue 13, item 5).

The mixture is `four_modes()` (four modes of std 0.5 at (+-2, +-2), weights 0.4, 0.3, 0.2, 0.1), the model its exact
velocity (`exact_denoiser`), the schedule `FlowMatchEulerDiscreteScheduler()`'s default (shift 1). The statistics
are those of `tests/test_flow_sde.py`: the mode weights are the mean responsibilities, the mode spread is the std
of the samples assigned to the first mode (largest responsibility), averaged over both coordinates; TV is the
total-variation distance of the mode weights from the mixture's, half their summed absolute errors. Each arm runs
`--replicates` seeds of `--samples` samples; seed r gives every arm the same initial noise, so the difference to
the ODE is paired. Standard errors are over the replicates. The `exact` row applies the same statistics to exact
draws from the mixture (its TV is the estimator's noise floor).

`separation` measures what FK needs from the noise: the particles are duplicated at the first step with sigma <= 0.5
and the two copies run on with independent noise; it is the RMS distance between the copies' final samples per
coordinate over sqrt(2), against sqrt(E Var[x0 | x_t]) at that sigma, which copies drawn from the exact posterior
would reach (0 for the ODE).

    python benchmarks/flow_sde.py                  # every arm at 4, 10, 25 and 100 steps (about 1 hour on 2 cores)
    python benchmarks/flow_sde.py --steps 4 10 --arms ode old-sde sde
"""

import argparse
import math
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from diffsteer.processes import FlowMatchEulerSDEScheduler
from diffsteer.processes.flow_sde import DEFAULT_DIFFUSION_SCALE
from diffsteer.worlds.gmm import exact_denoiser, four_modes


MIXTURE = four_modes()
BRANCH_SIGMA = 0.5


class EulerMaruyamaSDE(FlowMatchEulerSDEScheduler):
    """The step `FlowMatchEulerSDEScheduler` took before issue 13: Euler-Maruyama on the reverse SDE with
    g = scale sigma^2, x + [-u + g^2 / 2 score] dt + g sqrt(dt) z, and the plain Euler step to sigma = 0."""

    def step(self, model_output, timestep, sample, generator=None, diffusion_scale=3.0, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = float(self.sigmas[self.step_index]), float(self.sigmas[self.step_index + 1])
        dt = sigma - sigma_next
        x, velocity = sample.to(torch.float32), model_output.to(torch.float32)
        g = diffusion_scale * sigma**2
        if sigma_next == 0 or g == 0:
            prev_sample = x - dt * velocity
        else:
            score = -(x + (1 - sigma) * velocity) / sigma
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            prev_sample = x + (-velocity + 0.5 * g**2 * score) * dt + g * math.sqrt(dt) * noise
        self._step_index += 1
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample.to(model_output.dtype))


class DDPMFractionSDE(FlowMatchEulerSDEScheduler):
    """A candidate: the posterior step with its fresh noise a fraction `eta` of the DDPM posterior std of the linear
    interpolant (DDIM with `eta` on the flow path): c = eta s sqrt(1 - rho_DDPM^2), rho_DDPM = s (1 - t) / (t (1 - s)),
    x_s = (1 - s) x0-hat + sqrt(s^2 - c^2) eps-hat + c z."""

    def step(self, model_output, timestep, sample, generator=None, eta=1.0, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        t, s = float(self.sigmas[self.step_index]), float(self.sigmas[self.step_index + 1])
        x, velocity = sample.to(torch.float32), model_output.to(torch.float32)
        prev_sample = x - (t - s) * velocity
        if s > 0 and eta != 0:
            rho_ddpm = s * (1 - t) / (t * (1 - s))
            c = eta * s * math.sqrt(1 - rho_ddpm**2)
            eps_hat = x + (1 - t) * velocity
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            prev_sample = prev_sample + (math.sqrt(s**2 - c**2) - s) * eps_hat + c * noise
        self._step_index += 1
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample.to(model_output.dtype))


# name -> (scheduler class, step kwargs, description)
ARMS: dict[str, tuple[type, dict, str]] = {
    "ode": (FlowMatchEulerDiscreteScheduler, {}, "flow ODE, Euler (FlowMatchEulerDiscreteScheduler)"),
    "old-sde": (EulerMaruyamaSDE, {"diffusion_scale": 3.0}, "previous SDE step: Euler-Maruyama, g = 3 sigma^2"),
    "sde": (
        FlowMatchEulerSDEScheduler,
        {},
        f"FlowMatchEulerSDEScheduler default (posterior step, g = {DEFAULT_DIFFUSION_SCALE} sigma^2)",
    ),
    "post-sq-1.5": (FlowMatchEulerSDEScheduler, {"diffusion_scale": 1.5}, "posterior step, g = 1.5 sigma^2"),
    "post-sq-2": (FlowMatchEulerSDEScheduler, {"diffusion_scale": 2.0}, "posterior step, g = 2 sigma^2"),
    "post-sq-3": (FlowMatchEulerSDEScheduler, {"diffusion_scale": 3.0}, "posterior step, g = 3 sigma^2 (old SDE)"),
    "post-lin-1": (
        FlowMatchEulerSDEScheduler,
        {"diffusion_scale": 1.0, "diffusion_schedule": "linear"},
        "posterior step, g = sigma",
    ),
    "ddpm-0.5": (DDPMFractionSDE, {"eta": 0.5}, "posterior step, c = 0.5 DDPM posterior std"),
    "ddpm-1": (DDPMFractionSDE, {"eta": 1.0}, "posterior step, c = DDPM posterior std (ancestral DDPM)"),
}


def run(arm: str, steps: int, samples: int, seed: int, branch: bool = False) -> tuple[torch.Tensor, float]:
    """Final samples of one arm (float64), and the sigma at which they were duplicated (`branch`; nan if not)."""
    scheduler_class, step_kwargs, _ = ARMS[arm]
    scheduler = scheduler_class()
    scheduler.set_timesteps(steps)
    model = exact_denoiser(MIXTURE, scheduler)
    generator = torch.Generator().manual_seed(seed)
    x = randn_tensor((samples, MIXTURE.dim), generator=generator, dtype=torch.float32)
    branch_sigma = math.nan
    for index, timestep in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[index])
        if branch and math.isnan(branch_sigma) and sigma <= BRANCH_SIGMA:
            branch_sigma, x = sigma, torch.cat([x, x])
        x = scheduler.step(model(x, timestep), timestep, x, generator=generator, **step_kwargs).prev_sample
    return x.double(), branch_sigma


def statistics(samples: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mode weights (mean responsibilities) and the first mode's spread, as `tests/test_flow_sde.py` has them."""
    responsibilities = MIXTURE.responsibilities(samples)
    first_mode = samples[responsibilities.argmax(1) == 0]
    return responsibilities.mean(0), float(first_mode.std(0).mean())


def exact_separation(sigma: float, samples: int = 400_000) -> float:
    """sqrt(E Var[x0 | x_t]) per coordinate at `sigma`: the separation of copies drawn from the exact posterior."""
    generator = torch.Generator().manual_seed(12345)
    x0 = MIXTURE.sample(samples, generator)
    x_t = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    return float((x0 - MIXTURE.posterior_mean(x_t, 1 - sigma, sigma)).pow(2).mean().sqrt())


def mean_se(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


def total_variation(weights: torch.Tensor) -> torch.Tensor:
    """Total-variation distance of each replicate's mode weights from the mixture's, shape (replicates,)."""
    return 0.5 * (weights - MIXTURE.weights).abs().sum(-1)


def report(name: str, weights: torch.Tensor, spreads: torch.Tensor, extra: str = "") -> None:
    """One row: mean mode weights, the smallest mode's weight, the spread and the weights' total-variation error,
    each with its standard error over the replicates."""
    w, w_se = mean_se(weights)
    s, s_se = mean_se(spreads)
    tv, tv_se = mean_se(total_variation(weights))
    cells = " ".join(f"{v:.4f}" for v in w.tolist())
    print(
        f"  {name:11s} {cells} (se {float(w_se.max()):.4f})  smallest {float(w[-1]):.4f} ({float(w_se[-1]):.4f})  "
        f"spread {float(s):.4f} ({float(s_se):.4f})  TV {float(tv):.4f} ({float(tv_se):.4f}){extra}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 10, 25, 100])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--samples", type=int, default=25_000, help="samples per replicate")
    parser.add_argument("--replicates", type=int, default=16)
    parser.add_argument("--no-separation", action="store_true", help="skip the copy-separation runs")
    args = parser.parse_args(argv)
    for arm in args.arms:
        print(f"{arm:11s} {ARMS[arm][2]}")
    print(f"{args.replicates} replicates x {args.samples} samples; mode weights in order 0.4, 0.3, 0.2, 0.1")
    exact = [
        statistics(MIXTURE.sample(args.samples, torch.Generator().manual_seed(r))) for r in range(args.replicates)
    ]
    exact_weights, exact_spreads = torch.stack([w for w, _ in exact]), torch.tensor([s for _, s in exact])
    arms = ["ode", *(arm for arm in args.arms if arm != "ode")]  # the ODE first: the others are paired with it
    for steps in args.steps:
        print(f"\n{steps} steps (standard errors in brackets; d: paired difference to the ODE)")
        report("exact", exact_weights, exact_spreads)
        ode_weights = ode_spreads = None
        for arm in arms:
            start = time.perf_counter()
            runs = [statistics(run(arm, steps, args.samples, seed)[0]) for seed in range(args.replicates)]
            weights, spreads = torch.stack([w for w, _ in runs]), torch.tensor([s for _, s in runs])
            extra = ""
            if arm == "ode":
                ode_weights, ode_spreads = weights, spreads
            else:
                d_min, d_min_se = mean_se(weights[:, -1] - ode_weights[:, -1])
                d_spread, d_spread_se = mean_se(spreads - ode_spreads)
                d_tv, d_tv_se = mean_se(total_variation(weights) - total_variation(ode_weights))
                extra += f"  | d smallest {float(d_min):+.4f} ({float(d_min_se):.4f}) d spread {float(d_spread):+.4f} "
                extra += f"({float(d_spread_se):.4f}) d TV {float(d_tv):+.4f} ({float(d_tv_se):.4f})"
                if not args.no_separation:
                    final, sigma = run(arm, steps, args.samples, seed=1000, branch=True)
                    half = final.shape[0] // 2
                    separation = float((final[:half] - final[half:]).pow(2).mean().div(2).sqrt())
                    extra += f" | separation at sigma {sigma:.2f}: {separation:.3f} of {exact_separation(sigma):.3f}"
            report(arm, weights, spreads, extra + f"  [{time.perf_counter() - start:.0f} s]")


if __name__ == "__main__":
    main()
