"""The Gaussian kernel of every stochastic scheduler step: the step itself with the same noise, read without side
effects, and its log-densities against a direct evaluation."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffsteer.processes import FlowMatchEulerSDEScheduler
from diffsteer.processes.kernels import GaussianKernel, kernel_fn

from .schedulers import DEFAULT_CONFIGS, DETERMINISTIC_BY_DEFAULT
from .schedulers import make as make_scheduler


SHAPE = (3, 2, 4, 4)
VP = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}

CASES = {
    "ddpm": (lambda: DDPMScheduler(**VP), {}),
    "ddpm v, small log, clipped": (
        lambda: DDPMScheduler(**VP, prediction_type="v_prediction", variance_type="fixed_small_log", clip_sample=True),
        {},
    ),
    "ddpm large": (lambda: DDPMScheduler(**VP, variance_type="fixed_large", clip_sample=False), {}),
    "ddim eta 1": (lambda: DDIMScheduler(**VP), {"eta": 1.0}),
    "ddim eta 0.5 v, thresholded": (
        lambda: DDIMScheduler(**VP, prediction_type="v_prediction", thresholding=True),
        {"eta": 0.5},
    ),
    "euler ancestral": (lambda: EulerAncestralDiscreteScheduler(**VP), {}),
    "euler ancestral v": (lambda: EulerAncestralDiscreteScheduler(**VP, prediction_type="v_prediction"), {}),
    "flow sde": (lambda: FlowMatchEulerSDEScheduler(shift=3.0), {}),
    "flow sde linear": (lambda: FlowMatchEulerSDEScheduler(), {"diffusion_schedule": "linear", "diffusion_scale": 2}),
    "sde-dpmsolver++ order 2": (lambda: DPMSolverMultistepScheduler(**VP, algorithm_type="sde-dpmsolver++"), {}),
    "sde-dpmsolver++ order 1, zero final sigma": (
        lambda: DPMSolverMultistepScheduler(
            **VP, algorithm_type="sde-dpmsolver++", solver_order=1, final_sigmas_type="zero"
        ),
        {},
    ),
    "sde-dpmsolver++ order 3, karras": (
        lambda: DPMSolverMultistepScheduler(
            **VP, algorithm_type="sde-dpmsolver++", solver_order=3, use_karras_sigmas=True
        ),
        {},
    ),
}


def model(sample: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(sample) + 0.1


def _state(scheduler):
    return {
        name: [v.clone() if torch.is_tensor(v) else v for v in value] if isinstance(value, list) else value
        for name, value in vars(scheduler).items()
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_kernel_is_the_step_with_the_same_noise_and_touches_nothing(case):
    make, step_kwargs = CASES[case]
    scheduler = make()
    scheduler.set_timesteps(8)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sample = sample * getattr(scheduler, "init_noise_sigma", 1.0)
    kernel_of = kernel_fn(scheduler)
    noisy_steps = 0
    for k, t in enumerate(scheduler.timesteps):
        scale = getattr(scheduler, "scale_model_input", None)
        model_input = scale(sample, t) if scale is not None else sample
        output = model(model_input)
        before, rng = _state(scheduler), torch.get_rng_state()
        kernel = kernel_of(scheduler, output, t, sample, step_kwargs)
        after = _state(scheduler)
        assert after.keys() == before.keys() and torch.equal(torch.get_rng_state(), rng)
        for name, value in before.items():
            if isinstance(value, list):
                assert len(after[name]) == len(value)
                assert all(
                    torch.equal(a, b) if torch.is_tensor(a) else a is b
                    for a, b in zip(after[name], value, strict=True)
                ), name
            elif torch.is_tensor(value):
                assert torch.equal(after[name], value), name
            else:
                assert after[name] == value, name
        noise = randn_tensor(SHAPE, generator=torch.Generator().manual_seed(100 + k), dtype=torch.float32)
        stepped = scheduler.step(output, t, sample, generator=torch.Generator().manual_seed(100 + k), **step_kwargs)
        expected = kernel.mean.double() + kernel.std * noise.double()
        scale = 1 + stepped.prev_sample.abs().max().item()
        assert torch.allclose(stepped.prev_sample.double(), expected, atol=2e-6 * scale, rtol=0), (case, k)
        noisy_steps += bool(kernel.std > 0)
        sample = stepped.prev_sample
    # Every step draws noise but, for some schedulers, the last one.
    assert noisy_steps >= len(scheduler.timesteps) - 1


def test_a_deterministic_scheduler_has_no_kernel_and_a_noiseless_step_no_density():
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    assert kernel_fn(EulerDiscreteScheduler()) is None
    assert kernel_fn(FlowMatchEulerDiscreteScheduler()) is None  # its SDE subclass has one, the ODE has none
    dpm = DPMSolverMultistepScheduler()
    dpm.set_timesteps(4)
    with pytest.raises(ValueError, match="algorithm_type='sde-dpmsolver\\+\\+'"):
        kernel_fn(dpm)(dpm, torch.zeros(SHAPE), dpm.timesteps[0], torch.zeros(SHAPE), {})
    learned = DDPMScheduler(variance_type="learned_range")
    learned.set_timesteps(4)
    with pytest.raises(ValueError, match="variance_type='learned_range'"):
        kernel_fn(learned)(learned, torch.zeros(SHAPE), learned.timesteps[0], torch.zeros(SHAPE), {})
    with pytest.raises(ValueError, match="draws no noise"):
        GaussianKernel(torch.zeros(2, 3), torch.tensor(0.0)).log_prob(torch.zeros(2, 3))


def test_log_densities_equal_a_direct_evaluation():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 3, 5, generator=generator)
    std = torch.tensor(0.37, dtype=torch.float64)
    x = mean + std.float() * torch.randn(4, 3, 5, generator=generator)
    shift = 0.2 * torch.randn(4, 3, 5, generator=generator)
    kernel = GaussianKernel(mean, std)
    direct = torch.distributions.Normal(mean.double(), std).log_prob(x.double()).flatten(1).sum(1)
    assert torch.allclose(kernel.log_prob(x), direct, rtol=1e-12, atol=1e-10)
    shifted = torch.distributions.Normal(mean.double() + shift.double(), std).log_prob(x.double()).flatten(1).sum(1)
    assert torch.allclose(kernel.log_ratio(x, shift), direct - shifted, rtol=1e-10, atol=1e-10)
    # No shift, no correction; and the closed form for a particle drawn from the shifted kernel: E[log p/q] = -KL.
    assert torch.equal(kernel.log_ratio(x, torch.zeros_like(shift)), torch.zeros(4, dtype=torch.float64))
    kl = (shift.double() ** 2).flatten(1).sum(1) / (2 * std**2)
    draws = mean + shift + std.float() * torch.randn(20000, 4, 3, 5, generator=generator)
    ratios = torch.stack([kernel.log_ratio(d, shift) for d in draws])
    # Var[log p/q] = |shift|^2 / std^2 = 2 KL per row: 5 standard errors of 20,000 draws.
    tolerance = 5 * torch.sqrt(2 * kl / 20000)
    assert bool(((ratios.mean(0) + kl).abs() < tolerance).all())
    assert math.isclose(float(kernel.log_prob(mean)[0]), -15 * (math.log(0.37) + 0.5 * math.log(2 * math.pi)))


@pytest.mark.parametrize("case", ["ddpm", "sde-dpmsolver++ order 2", "flow sde"])
def test_the_process_reads_the_kernel_its_transition_draws_from(case):
    from diffsteer.processes import SchedulerProcess

    make, step_kwargs = CASES[case]
    process = SchedulerProcess(
        lambda sample, timestep: model(sample), make(), shape=SHAPE[1:], num_inference_steps=6, step_kwargs=step_kwargs
    )
    particles = process.init(SHAPE[0], torch.Generator().manual_seed(0))
    for step in process.steps():
        process.predict(particles, step, with_x0_hat=False)
        kernel = process.kernel(particles, step)
        generator = torch.Generator().manual_seed(step.index)
        noise = randn_tensor(SHAPE, generator=torch.Generator().manual_seed(step.index), dtype=torch.float32)
        process.transition(particles, step, generator)
        expected = kernel.mean.double() + kernel.std * noise.double()
        assert torch.allclose(particles.latents.double(), expected, atol=1e-5, rtol=0), step.index


def test_a_scheduler_without_a_kernel_is_refused_by_name():
    from diffusers import EulerDiscreteScheduler

    from diffsteer.processes import SchedulerProcess

    process = SchedulerProcess(
        lambda sample, timestep: model(sample),
        EulerDiscreteScheduler(),
        shape=SHAPE[1:],
        num_inference_steps=4,
        stochastic="off",
    )
    particles = process.init(2, torch.Generator().manual_seed(0))
    step = next(iter(process.steps()))
    process.predict(particles, step, with_x0_hat=False)
    with pytest.raises(ValueError, match=r"EulerDiscreteScheduler has no Gaussian transition kernel.*DDPMScheduler"):
        process.kernel(particles, step)


@pytest.mark.parametrize("name", sorted(DEFAULT_CONFIGS))
def test_every_scheduler_auto_can_reach_has_a_kernel_or_a_kernel_switch(name):
    """Under stochastic="auto", a method that needs a kernel gets a scheduler with one (every switch said in
    `changes`), except where no switch keeps the model's sampling (LCM and TCD serve distilled models), which is
    refused before any model call; with stochastic="require" a kernel-less scheduler is refused, not switched."""
    from diffsteer.processes import SchedulerProcess

    def build(stochastic):
        return SchedulerProcess(
            lambda sample, timestep: model(sample),
            make_scheduler(name),
            shape=SHAPE[1:],
            num_inference_steps=4,
            stochastic=stochastic,
            require_kernel=True,
        )

    if name in ("LCMScheduler", "TCDScheduler"):
        with pytest.raises(ValueError, match="no switch keeps this model's sampling"):
            build("auto")
        return
    process = build("auto")
    assert process.spec.kernel is not None and process.is_stochastic()
    native = kernel_fn(make_scheduler(name)) is not None and not DETERMINISTIC_BY_DEFAULT[name]
    assert (process.changes == []) == native, process.changes
    if kernel_fn(make_scheduler(name)) is None and not DETERMINISTIC_BY_DEFAULT[name]:
        with pytest.raises(ValueError, match="forbids switching it"):
            build("require")
