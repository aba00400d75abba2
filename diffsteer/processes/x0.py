"""x0-hat (the Tweedie estimate of the clean sample) for every scheduler.

Several schedulers (the DPM-Solver family, UniPC, DEIS, PNDM, flow matching) do not return
`pred_original_sample`, and the ones that do only return it after `step`, which has already drawn noise and moved
the scheduler's history. So x0-hat is computed here, before the transition, from what the model saw:

- VP schedulers: the model input (after `scale_model_input`) is sqrt(a) x0 + sqrt(1 - a) eps with a = alpha_bar(t)
  at the model's timestep t, whatever space the scheduler keeps its own samples in (Euler-type schedulers keep
  x0 + sigma eps and divide by sqrt(sigma^2 + 1) before the model call). x0 then follows from the prediction type.
- Flow schedulers: x_t = (1 - sigma) x0 + sigma eps with sigma = t / num_train_timesteps and velocity eps - x0.
"""

import math

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin


def alpha_bar(scheduler: SchedulerMixin, timestep: torch.Tensor | float) -> float:
    """alpha_bar at a (possibly fractional) training timestep.

    Sigma-space schedulers (Euler, Heun, KDPM2, LMS, Karras sigmas) map their sigmas to fractional timesteps by
    interpolating log sigma linearly between integer timesteps; this inverts that map exactly, and returns
    `alphas_cumprod[t]` itself at integer t.
    """
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
    t = float(timestep)
    if t < 0 or t > alphas_cumprod.numel() - 1:
        raise ValueError(f"timestep {t} is outside the scheduler's training range [0, {alphas_cumprod.numel() - 1}].")
    low = math.floor(t)
    if t == low:
        return float(alphas_cumprod[low])
    log_sigmas = 0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod)
    fraction = t - low
    log_sigma = (1 - fraction) * log_sigmas[low] + fraction * log_sigmas[low + 1]
    return float(1.0 / (1.0 + torch.exp(2 * log_sigma)))


def vp_x0(
    model_input: torch.Tensor, model_output: torch.Tensor, alpha_bar_t: float, prediction_type: str
) -> torch.Tensor:
    """x0-hat from a VP model input (sqrt(a) x0 + sqrt(1 - a) eps) and the model's output."""
    scale_x0, scale_noise = math.sqrt(alpha_bar_t), math.sqrt(1.0 - alpha_bar_t)
    if prediction_type == "epsilon":
        return (model_input - scale_noise * model_output) / scale_x0
    if prediction_type == "v_prediction":
        return scale_x0 * model_input - scale_noise * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(
        f"prediction_type {prediction_type!r} is not supported; expected 'epsilon', 'v_prediction' or 'sample'."
    )


def flow_x0(sample: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0-hat of rectified flow: x_t - sigma v with x_t = (1 - sigma) x0 + sigma eps and v = eps - x0."""
    return sample - sigma * velocity


def flow_sigma(scheduler: SchedulerMixin, timestep: torch.Tensor | float) -> float:
    """The flow-matching noise level sigma of a timestep (timesteps are sigma * num_train_timesteps)."""
    return float(timestep) / scheduler.config.num_train_timesteps
