"""A stochastic sampler for flow-matching models: the posterior step of the linear interpolant.

Flow sampling (`FlowMatchEulerDiscreteScheduler`) is deterministic, so FK's resampled copies would never separate.
This scheduler adds noise along the reverse SDE

    dx = [u_t(x) - g_t^2 / 2 * score_t(x)] dt + g_t dw,

which has the flow ODE's marginals for every diffusion coefficient g_t >= 0 (Kim et al. 2025, "Inference-time scaling
for flow models via stochastic generation and rollover budget forcing"). For the linear path x_t = (1 - t) x0 + t eps
(t = sigma, velocity u = eps - x0), x0-hat = x - t u and eps-hat = x + (1 - t) u. Each step from t to s < t solves
the SDE exactly with x0-hat held fixed over the step (an exponential integrator):

    x_s = (1 - s) x0-hat + s (rho eps-hat + sqrt(1 - rho^2) z),    rho = exp(-1/2 int_s^t g_r^2 / r^2 dr),

that is the Euler step (1 - s) x0-hat + s eps-hat with a share 1 - rho^2 of the noise estimate replaced by fresh
noise z. With DDPM's coefficient, g^2 = 2 t / (1 - t), it is DDPM's ancestral step on this path.

What it keeps exactly: the Euler step's x0-hat term and the noise budget (rho^2 + (1 - rho^2) = 1). So a step lands
on the exact marginal whenever p(x0 | x_t) is a point mass, whatever the step size; the sampler converges to the
SDE as steps grow; `diffusion_scale=0` is the Euler step itself; the step to sigma = 0 is the Euler step to x0-hat
(no noise); and the step from sigma = 1, where x_t says nothing about x0, costs nothing whatever rho is.

What it costs: x0-hat in place of a draw from p(x0 | x_t) leaves out k^2 Var[x0 | x_t] of variance, with
k = (1 - s) - s rho (1 - t) / t, which is least at rho = 1. So no step built from x0-hat alone (this one, DDIM's
eta, DDPM's) beats the Euler ODE at the same step count: fresh noise costs accuracy in proportion to the step size
and to the share refreshed, on top of the Euler ODE's own few-step error (it narrows the modes and over-weights the
heavy one). Measured on the Gaussian-mixture world (`benchmarks/flow_sde.py`: 16 x 25,000 samples, standard errors
under 0.001; exact: mode spread 0.500, smallest mode weight 0.100), as spread / smallest mode weight:

    steps                          4                10               25               100
    Euler ODE                      0.4853 / 0.0663  0.4922 / 0.0914  0.4960 / 0.0970  0.4991 / 0.0994
    this step (g = sigma^2)        0.4838 / 0.0654  0.4916 / 0.0908  0.4957 / 0.0961  0.4996 / 0.0993
    Euler-Maruyama, g = 3 sigma^2  0.6009 / 0.1534  0.5321 / 0.1061  0.5119 / 0.1012  0.5025 / 0.1000

Paired with the ODE (same initial noise), this step's cost is at most 0.0015 on any mode weight and 0.0014 on the
weights' total-variation error at every step count, and within 1.5 standard errors (about 0.001) of zero on the
spread. The Euler-Maruyama step this class took before over-shot at few steps; diffusers' `stochastic_sampling=True`
is rho = 0 (all the noise refreshed at every step), which shrinks the spread to 0.34 even at 100 steps.
"""

import math

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


DIFFUSION_SCHEDULES = ("square", "linear", "constant")
# g = sigma^2. On the Gaussian-mixture world (`benchmarks/flow_sde.py`) its cost next to the Euler ODE is at most
# 0.0015 on a mode weight; copies resampled at sigma = 0.5 separate by 0.06 to 0.12 (10 to 100 steps), against the
# 0.53 to 0.67 of exact posterior draws. Scales 1.5, 2 and 3 separate them about 1.5, 1.9 and 2.7 times as far at
# about 1.8, 2.6 and 5 times the cost in total-variation error (at 4 and 10 steps).
DEFAULT_DIFFUSION_SCALE = 1.0
# What switching a flow model to this step costs, appended to the note in `changes` (figures from the table above).
FLOW_SDE_COST = (
    " No stochastic step built from the model's x0-hat beats the Euler ODE at a given step count, and few steps cost"
    " most: on the Gaussian-mixture world at 4 steps this step gives mode spread 0.484 and smallest mode weight"
    " 0.065 against the ODE's 0.485 and 0.066 (exact 0.500 and 0.100); at 100 steps both are within 0.001 of exact."
)


def _check_schedule(schedule: str) -> None:
    if schedule not in DIFFUSION_SCHEDULES:
        raise ValueError(f"diffusion_schedule must be one of {list(DIFFUSION_SCHEDULES)}, got {schedule!r}.")


def diffusion_coefficient(sigma: float, scale: float, schedule: str) -> float:
    """g(sigma): `scale * sigma^2` (`"square"`), `scale * sigma` (`"linear"`) or `scale` (`"constant"`)."""
    _check_schedule(schedule)
    if schedule == "square":
        return scale * sigma**2
    if schedule == "linear":
        return scale * sigma
    return scale


def noise_refresh(sigma: float, sigma_next: float, scale: float, schedule: str) -> float:
    """int_{sigma_next}^{sigma} g(r)^2 / r^2 dr in closed form; the step keeps rho = exp(-refresh / 2) of eps-hat.

    Args:
        sigma: the step's current noise level t.
        sigma_next: the next noise level s, 0 < s <= t.
        scale: the diffusion coefficient's scale (0 gives 0: the Euler step).
        schedule: `"square"`, `"linear"` or `"constant"`, as in `diffusion_coefficient`.

    Raises:
        ValueError: for an unknown schedule.
    """
    _check_schedule(schedule)
    if schedule == "square":
        return scale**2 * (sigma**3 - sigma_next**3) / 3
    if schedule == "linear":
        return scale**2 * (sigma - sigma_next)
    return scale**2 * (1 / sigma_next - 1 / sigma)


class FlowMatchEulerSDEScheduler(FlowMatchEulerDiscreteScheduler):
    """`FlowMatchEulerDiscreteScheduler` with a stochastic posterior step that keeps the Euler step's x0-hat term.

    Same config and timesteps as the parent, so `FlowMatchEulerSDEScheduler.from_config(pipe.scheduler.config)`
    swaps it in. The noise level is set per call of `step` (like DDIM's `eta`): `diffusion_scale` (defaults to 1,
    0 gives the deterministic Euler step) and `diffusion_schedule` (`"square"` by default: g = sigma^2, whose noise
    is largest near sigma = 1, where it costs least). Each step solves the reverse SDE exactly with x0-hat held fixed
    (see the module docstring): it is exact when p(x0 | x_t) is a point mass, never better than the Euler ODE at a
    given step count, and at the default within 0.0015 of it on every mode weight of the Gaussian-mixture world (at
    4 steps: mode spread 0.484 against the ODE's 0.485, smallest mode weight 0.065 against 0.066; exact 0.500 and
    0.100). `"constant"` puts its noise at small sigma, where a step that leaves out Var[x0 | x_t] pays most: spread
    0.46 at 100 steps with `diffusion_scale=1`.
    """

    # `step`'s default, read by the scheduler registry when it makes `diffusion_scale=0` stochastic.
    default_diffusion_scale = DEFAULT_DIFFUSION_SCALE

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        diffusion_scale: float = DEFAULT_DIFFUSION_SCALE,
        diffusion_schedule: str = "square",
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        """One posterior step of the reverse SDE from `sample` at the current sigma to the next one.

        Args:
            model_output (`torch.Tensor`): the velocity u = eps - x0 predicted at `sample`.
            timestep (`float` or `torch.Tensor`): the current timestep.
            sample (`torch.Tensor`): x_t.
            generator (`torch.Generator` or a list of them, *optional*): source of the step's noise.
            diffusion_scale (`float`, defaults to 1.0): scale of the diffusion coefficient; 0 is the Euler ODE.
            diffusion_schedule (`str`, defaults to `"square"`): `"square"`, `"linear"` or `"constant"`.
            return_dict (`bool`, defaults to `True`): return a `FlowMatchEulerDiscreteSchedulerOutput`.
            variance_noise (`torch.Tensor`, *optional*): the step's noise z itself, in place of a draw from
                `generator` (as DDIM's and DPM-Solver's `step` take it).

        Raises:
            ValueError: for an unknown `diffusion_schedule`, or both `generator` and `variance_noise`.
        """
        _check_schedule(diffusion_schedule)
        if variance_noise is not None and generator is not None:
            raise ValueError("Pass generator or variance_noise to FlowMatchEulerSDEScheduler.step, not both.")
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = float(self.sigmas[self.step_index])
        sigma_next = float(self.sigmas[self.step_index + 1])
        x = sample.to(torch.float32)
        velocity = model_output.to(torch.float32)
        # The Euler step, (1 - s) x0-hat + s eps-hat; the posterior step adds s ((rho - 1) eps-hat +
        # sqrt(1 - rho^2) z), written so that rho = 1 gives the Euler step bit for bit.
        prev_sample = x - (sigma - sigma_next) * velocity
        refresh = 0.0
        if sigma_next > 0 and diffusion_scale != 0:
            refresh = noise_refresh(sigma, sigma_next, diffusion_scale, diffusion_schedule)
        if refresh > 0:
            eps_hat = x + (1 - sigma) * velocity
            if variance_noise is None:
                noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            else:
                noise = variance_noise.to(device=x.device, dtype=x.dtype)
            # expm1 keeps 1 - rho and 1 - rho^2 accurate when little is refreshed (many steps).
            kept_minus_one = math.expm1(-refresh / 2)
            fresh = math.sqrt(-math.expm1(-refresh))
            prev_sample = prev_sample + sigma_next * (kept_minus_one * eps_hat + fresh * noise)
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)
