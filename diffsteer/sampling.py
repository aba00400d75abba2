"""The one sampling loop, for any model callable and diffusers scheduler (no pipeline needed)."""

import time
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffsteer.loop import Reward, RunContext
from diffsteer.methods.base import Method, check_method, run_method
from diffsteer.outputs import CostLedger, SamplingResult
from diffsteer.processes.base import Model
from diffsteer.processes.scheduler_process import STOCHASTIC_MODES, SchedulerProcess, method_scheduler_options
from diffsteer.smc.checks import check_callable, check_choice, check_int, check_type, describe


METHODS_ALLOWED = (
    "a steering method such as diffsteer.FK(...), diffsteer.BestOfN(...), diffsteer.ZeroOrder(), diffsteer.Paths(), "
    "diffsteer.SVDD(), diffsteer.RBF() or diffsteer.make_method(name, budget=..., num_inference_steps=...)"
)


def sample(
    model: Model,
    scheduler: SchedulerMixin,
    *,
    shape: tuple[int, ...],
    method: Method,
    reward: Reward,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    step_kwargs: dict[str, Any] | None = None,
    stochastic: str = "auto",
    num_outputs: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SamplingResult:
    """Sample with inference-time steering.

    Args:
        model (`Callable[[Tensor, Tensor], Tensor]`): `model(sample, timestep) -> model_output`, where the output is
            epsilon, v or the sample as `scheduler.config.prediction_type` says (velocity for flow matching).
        scheduler (`SchedulerMixin`): a diffusers scheduler; it is copied, never mutated.
        shape (`tuple[int, ...]`): shape of one sample.
        method: the steering method (`FK`, `BestOfN`, `ZeroOrder`, `Paths`, `SVDD`, `RBF`, or
            `diffsteer.make_method(name, budget=B, num_inference_steps=T)`).
        reward (`Callable[[Tensor], Tensor]`): scores a batch (N, *shape) of x0-hat (or final samples) with N
            rewards; higher is better. Rewards may be -inf (zero weight) but not NaN or +inf.
        num_inference_steps (`int`): solver steps.
        generator (`torch.Generator`, *optional*): the source of every random draw (initial noise, transition
            noise, resampling). Same generator seed, same output.
        latents (`Tensor`, *optional*): initial noise of shape (N, *shape), already scaled by `init_noise_sigma`.
        step_kwargs (`dict`, *optional*): extra arguments for `scheduler.step` (for example `{"eta": 1.0}`).
        stochastic (`str`, defaults to `"auto"`): for methods that need a stochastic transition (FK): `"auto"`
            switches a deterministic scheduler to its stochastic variant (listed in `result.changes`),
            `"require"` raises instead, `"off"` runs the scheduler as given.
        num_outputs (`int`, defaults to `1`): how many samples `select` returns in `result.selected`.
        device, dtype: where and in which precision samples live.

    Returns:
        [`~diffsteer.outputs.SamplingResult`]
    """
    check_method(method, METHODS_ALLOWED)
    check_callable("model", model, "a callable model(sample, timestep) -> model_output")
    check_type("scheduler", scheduler, SchedulerMixin, "a diffusers scheduler (a SchedulerMixin)")
    check_callable("reward", reward, "a callable that scores a batch of samples, reward(x) -> scores")
    shape = _check_shape(shape)
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
    check_type(
        "generator", generator, torch.Generator | list | None, "a torch.Generator (or one per particle) or None"
    )
    check_type("latents", latents, torch.Tensor | None, "a torch.Tensor of shape (num_particles, *shape) or None")
    check_type("step_kwargs", step_kwargs, dict | None, "a dict of scheduler.step arguments or None")
    check_choice("stochastic", stochastic, STOCHASTIC_MODES)
    check_type("device", device, torch.device | str, "a torch.device or a device name")
    check_type("dtype", dtype, torch.dtype, "a torch.dtype such as torch.float32")
    ledger = CostLedger()
    process = SchedulerProcess(
        _counting(model, ledger),
        scheduler,
        shape=shape,
        num_inference_steps=num_inference_steps,
        step_kwargs=step_kwargs,
        **method_scheduler_options(method, stochastic),
        device=device,
        dtype=dtype,
    )
    # no_grad, not inference_mode: tensors made under inference_mode cannot be changed in place or saved for backward
    # afterwards, which would break `result.samples += 1`, a model or reward that computes gradients inside
    # (torch.enable_grad), and any tensor the caller's model caches during the run; the speed it buys is small next
    # to a model call.
    with torch.no_grad():
        ctx = RunContext(
            process, reward, reward, ledger, generator=generator, latents=latents, num_outputs=num_outputs
        )
        run = run_method(method, ctx)
    selected_indices = run.selected_indices[0]
    return SamplingResult(
        samples=run.samples,
        log_weights=run.log_weights[0],
        rewards=run.rewards[0],
        log_normalizer=None if run.log_normalizers is None else float(run.log_normalizers[0]),
        selected=run.samples[selected_indices.to(run.samples.device)],
        selected_indices=selected_indices,
        trace=run.trace,
        cost=run.cost,
        changes=run.changes,
    )


def _counting(model: Model, ledger: CostLedger) -> Model:
    def counted(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        ledger.add_model(sample.shape[0])
        started = time.perf_counter()
        output = model(sample, timestep)
        ledger.model_time_s += time.perf_counter() - started
        return output

    return counted


def _check_shape(shape: Any) -> tuple[int, ...]:
    """`shape` as a tuple of positive ints (numpy integers accepted)."""
    if not isinstance(shape, tuple | list | torch.Size):
        raise TypeError(
            f"shape must be a tuple of positive integers (the shape of one sample), got {describe(shape)}."
        )
    return tuple(check_int(f"shape[{i}]", size, minimum=1) for i, size in enumerate(shape))
