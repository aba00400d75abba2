"""The Gaussian transition kernel of a stochastic scheduler step, without its side effects.

A stochastic step of DDPM, DDIM with eta > 0, Euler ancestral, the flow SDE or SDE-DPM-Solver++ moves x_t to
x' = mean + std * z with z ~ N(0, I): given the model output (and, for a multistep solver, its history), the step is
Gaussian. A method that shifts the step (reward guidance as the proposal of twisted SMC) needs that Gaussian to
weigh its particles by log p(x' | x_t) - log q(x' | x_t).

Every kernel here is read off the scheduler's own `step`, run on a throwaway copy of the scheduler loaded with the
particles' state (so the live scheduler's step index and history, and the caller's generators, are untouched):

- where `step` takes `variance_noise` (DDIM, DPM-Solver multistep, the flow SDE), the mean is the step with zero
  noise and the std the step with unit noise minus the mean: diffusers' own arithmetic, whatever the config
  (thresholding, clipping, solver order, final sigmas);
- DDPM and Euler ancestral draw their noise inside `step`; their mean and std are written out from the scheduler's
  own coefficients and the x0-hat its `step` returns (so clipping and thresholding are diffusers' too).

`tests/test_kernels.py` checks every kernel against `step` with the same noise drawn from the same seed.
"""

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class GaussianKernel:
    """x' ~ N(mean, std^2) elementwise, one row per particle.

    Attributes:
        mean: shape (N, *shape).
        std: broadcastable to `mean` (a scalar for every registered scheduler); 0 where the step draws no noise.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def take(self, indices: torch.Tensor) -> "GaussianKernel":
        """The kernel of the particles at `indices` (after resampling)."""
        std = torch.as_tensor(self.std)
        if std.ndim > 0 and std.shape[0] == self.mean.shape[0]:
            std = std[indices.to(std.device)]
        return GaussianKernel(self.mean[indices.to(self.mean.device)], std)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; mean, std^2) summed over each row, in float64, shape (N,).

        Raises:
            ValueError: if the std is 0 somewhere (a deterministic step has no density).
        """
        std = self._positive_std()
        z = (x.double() - self.mean.double()) / std
        log_density = -0.5 * z.square() - torch.log(std) - 0.5 * math.log(2 * math.pi)
        return log_density.expand_as(z).flatten(1).sum(1)

    def log_ratio(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """log N(x; mean, std^2) - log N(x; mean + shift, std^2) per row, in float64, shape (N,): the weight a
        particle moved by `shift` (drawn from the shifted kernel) needs for the unshifted kernel's target.

        Written as the difference of the two quadratic forms so that it stays accurate when the shift is small
        (the two log-densities are large and nearly equal).
        """
        std = self._positive_std()
        offset = (x.double() - self.mean.double()) / std
        shift = shift.double() / std
        # -|o|^2 / 2 + |o - s|^2 / 2 = s.(s / 2 - o)
        return (shift * (0.5 * shift - offset)).flatten(1).sum(1)

    def _positive_std(self) -> torch.Tensor:
        std = torch.as_tensor(self.std, dtype=torch.float64, device=self.mean.device)
        if bool((std <= 0).any()):
            raise ValueError(
                "This step draws no noise (std 0), so it has no density: a proposal ratio is only defined on "
                "stochastic steps; leave the last, noiseless step unshifted."
            )
        return std


# (probe scheduler loaded with the particles' state, model_output, timestep, sample, step kwargs) -> kernel
KernelFn = Callable[[SchedulerMixin, torch.Tensor, Any, torch.Tensor, dict[str, Any]], GaussianKernel]


def probe(scheduler: SchedulerMixin) -> SchedulerMixin:
    """A throwaway copy of `scheduler` in the same state: stepping it leaves the original as it was (the lists a
    multistep solver updates in place are copied too)."""
    copied = copy.copy(scheduler)
    copied.__dict__.update({name: list(v) for name, v in vars(scheduler).items() if isinstance(v, list)})
    return copied


def _throwaway(sample: torch.Tensor) -> torch.Generator:
    """A generator for the noise a probe step draws and the kernel discards (never torch's global one, whose state
    would then depend on whether a kernel was read)."""
    return torch.Generator(device=sample.device).manual_seed(0)


def _from_variance_noise(
    scheduler: SchedulerMixin, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, kwargs: dict[str, Any]
) -> GaussianKernel:
    kwargs = {k: v for k, v in kwargs.items() if k not in ("generator", "variance_noise")}
    zeros = torch.zeros_like(model_output)
    mean = probe(scheduler).step(model_output, timestep, sample, variance_noise=zeros, **kwargs).prev_sample
    ones = probe(scheduler).step(model_output, timestep, sample, variance_noise=torch.ones_like(zeros), **kwargs)
    # The std is one number per step: read it off the unit-noise step (mean of the elementwise differences, which
    # differ only by rounding).
    std = (ones.prev_sample.double() - mean.double()).mean()
    return GaussianKernel(mean, std.clamp(min=0.0))


def _ddpm(
    scheduler: DDPMScheduler, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, kwargs: dict[str, Any]
) -> GaussianKernel:
    if scheduler.variance_type not in ("fixed_small", "fixed_small_log", "fixed_large"):
        raise ValueError(
            f"DDPMScheduler with variance_type={scheduler.variance_type!r} has no kernel in diffsteer (a learned "
            "variance depends on the model's extra channels); use variance_type='fixed_small', 'fixed_small_log' or "
            "'fixed_large'."
        )
    t = int(timestep)
    prev_t = int(scheduler.previous_timestep(t))
    x0_hat = probe(scheduler).step(model_output, timestep, sample, generator=_throwaway(sample)).pred_original_sample
    alpha_prod_t = scheduler.alphas_cumprod[t]
    alpha_prod_t_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.one
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    x0_coefficient = alpha_prod_t_prev**0.5 * (1 - current_alpha_t) / beta_prod_t
    sample_coefficient = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
    mean = x0_coefficient * x0_hat + sample_coefficient * sample
    if t == 0:
        return GaussianKernel(mean, torch.zeros((), dtype=torch.float64))
    variance = scheduler._get_variance(t)
    # `_get_variance` returns the std itself for the "fixed_small_log" type (DDPM's step multiplies it by the noise).
    std = variance if scheduler.variance_type == "fixed_small_log" else variance**0.5
    return GaussianKernel(mean, torch.as_tensor(std, dtype=torch.float64))


def _euler_ancestral(
    scheduler: EulerAncestralDiscreteScheduler,
    model_output: torch.Tensor,
    timestep: Any,
    sample: torch.Tensor,
    kwargs: dict[str, Any],
) -> GaussianKernel:
    stepped = probe(scheduler)
    x0_hat = stepped.step(model_output, timestep, sample, generator=_throwaway(sample)).pred_original_sample
    index = stepped.step_index - 1  # the step index the step ran at (it set it if it was unset)
    sigma_from, sigma_to = scheduler.sigmas[index], scheduler.sigmas[index + 1]
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    x = sample.to(torch.float32)
    mean = x + (x - x0_hat) / sigma_from * (sigma_down - sigma_from)
    return GaussianKernel(mean.to(model_output.dtype), torch.as_tensor(float(sigma_up), dtype=torch.float64))


def _dpmsolver(
    scheduler: DPMSolverMultistepScheduler,
    model_output: torch.Tensor,
    timestep: Any,
    sample: torch.Tensor,
    kwargs: dict[str, Any],
) -> GaussianKernel:
    if not scheduler.config.algorithm_type.startswith("sde-"):
        raise ValueError(
            f"DPMSolverMultistepScheduler with algorithm_type={scheduler.config.algorithm_type!r} is deterministic: "
            "its step has no Gaussian kernel. Use algorithm_type='sde-dpmsolver++'."
        )
    return _from_variance_noise(scheduler, model_output, timestep, sample, kwargs)


ddpm_kernel: KernelFn = _ddpm
ddim_kernel: KernelFn = _from_variance_noise
euler_ancestral_kernel: KernelFn = _euler_ancestral
flow_sde_kernel: KernelFn = _from_variance_noise
dpmsolver_kernel: KernelFn = _dpmsolver


def kernel_fn(scheduler: SchedulerMixin) -> KernelFn | None:
    """The kernel the scheduler registry records for `scheduler`'s class (or its nearest registered base), or None."""
    from diffsteer.processes.schedulers import scheduler_spec

    return scheduler_spec(scheduler).kernel
