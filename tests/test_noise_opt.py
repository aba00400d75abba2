"""Noise optimisation through the sampler: pure steps that replay exactly, checkpointed gradients equal to plain
ones, the reward rising over iterations, ReNO's norm regulariser, the budget, and the scheduler rules."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

import diffsteer
from diffsteer.methods.noise_opt import chi_norm_penalty, denoise_through
from diffsteer.processes import FlowMatchEulerSDEScheduler, SchedulerProcess
from diffsteer.worlds.gmm import exact_denoiser, four_modes


TARGET = torch.tensor([2.0, 3.2], dtype=torch.float64)


def reward(x: torch.Tensor) -> torch.Tensor:
    return -((x.double() - TARGET) ** 2).sum(1)


SCHEDULERS = {
    "ddpm": lambda: DDPMScheduler(clip_sample=False),
    "ddim": lambda: DDIMScheduler(clip_sample=False),
    "euler ancestral": lambda: EulerAncestralDiscreteScheduler(),
    "flow sde": lambda: FlowMatchEulerSDEScheduler(),
}


def _process(name: str, steps: int = 8) -> SchedulerProcess:
    scheduler = SCHEDULERS[name]()
    return SchedulerProcess(
        exact_denoiser(four_modes(), scheduler), scheduler, shape=(2,), num_inference_steps=steps, dtype=torch.float64
    )


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_pure_step_replays_the_transition_and_leaves_the_process_alone(name):
    process = _process(name)
    particles = process.init(5, torch.Generator().manual_seed(0))
    for step in process.steps():
        x = particles.latents.clone()
        before = vars(process.scheduler).copy()
        step_fn = process.pure_step(step, {}, noise_seed=100 + step.index)
        first, again = step_fn(x), step_fn(x)
        assert torch.equal(first, again)
        assert vars(process.scheduler).keys() == before.keys()
        assert all(vars(process.scheduler)[k] is v for k, v in before.items())
        process.predict(particles, step, with_x0_hat=False)
        process.transition(particles, step, torch.Generator().manual_seed(100 + step.index))
        assert torch.allclose(first, particles.latents, rtol=0, atol=1e-12), step.index


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_checkpointed_and_plain_gradients_agree(name):
    process = _process(name)
    steps = list(process.steps())
    seeds = list(range(len(steps)))
    z0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gradients = []
    for checkpointing in (False, True):
        z = z0.clone().requires_grad_(True)
        with torch.enable_grad():
            x = denoise_through(process, z, steps, seeds, {}, checkpointing)
            (reward(x).sum() - 0.01 * chi_norm_penalty(z).sum()).backward()
        gradients.append(z.grad)
    plain, checkpointed = gradients
    assert float(plain.norm()) > 0
    assert float((plain - checkpointed).norm() / plain.norm()) < 1e-6


def test_the_penalty_is_least_where_gaussian_noise_lies():
    # |z|^2 / 2 - (d - 1) log |z| has its minimum at |z| = sqrt(d - 1): the gradient vanishes there, points outward
    # inside and inward outside.
    d = 1024
    direction = torch.randn(1, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    direction = direction / direction.norm()
    for radius, sign in ((math.sqrt(d - 1), 0), (20.0, -1), (40.0, 1)):
        z = (radius * direction).requires_grad_(True)
        (grad,) = torch.autograd.grad(chi_norm_penalty(z).sum(), z)
        radial = float((grad * direction).sum())
        assert (abs(radial) < 1e-9) if sign == 0 else (math.copysign(1, radial) == sign)


def _run(method, scheduler_name="ddim", seed=0, groups=1, steps=10):
    scheduler = SCHEDULERS[scheduler_name]()
    return diffsteer.sample(
        exact_denoiser(four_modes(), scheduler),
        scheduler,
        shape=(2,),
        method=method,
        reward=reward,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("scheduler_name", ["ddim", "ddpm"])
def test_the_reward_rises_over_the_iterations(scheduler_name):
    # 32 independent problems: the best iterate against the first (the plain sample of the same initial noise).
    gains = []
    for seed in range(32):
        plain = _run(diffsteer.NoiseOpt(num_iterations=1), scheduler_name, seed)
        optimised = _run(diffsteer.NoiseOpt(num_iterations=4), scheduler_name, seed)
        gains.append(float(optimised.rewards.max() - plain.rewards.max()))
    gains = torch.tensor(gains)
    # The best iterate is kept and the first is the plain sample, so no gain is negative; every one of the 32 is
    # positive (by chance alone, 2^-32), and their mean is 3 standard errors above 0 (the gains are heavy-tailed).
    assert bool((gains > 0).all()), gains
    assert float(gains.mean()) > 3 * float(gains.std() / math.sqrt(len(gains)))


def test_the_budget_buys_iterations_and_counts_recomputed_and_backward_rows():
    from diffsteer.gradients import BACKWARD_COST

    method = diffsteer.make_method("noise-opt", budget=10, num_inference_steps=10)
    assert method.num_iterations == math.floor((10 + 1 + BACKWARD_COST) / (2 + BACKWARD_COST))
    result = _run(method)
    k = method.num_iterations
    assert result.cost.backward_rows == (k - 1) * 10
    assert result.cost.model_rows == k * 10 + (k - 1) * 10  # checkpointing recomputes each step once
    assert result.cost.within_budget and result.cost.cost == pytest.approx(k + (k - 1) * (1 + BACKWARD_COST))
    no_checkpoint = diffsteer.make_method("noise-opt", budget=10, num_inference_steps=10, checkpointing=False)
    assert no_checkpoint.num_iterations == math.floor((10 + BACKWARD_COST) / (1 + BACKWARD_COST))
    with pytest.raises(ValueError, match="too small for noise optimisation"):
        diffsteer.make_method("noise-opt", budget=4, num_inference_steps=10)


def test_same_seed_same_output_and_no_global_rng():
    state = torch.get_rng_state()
    first = _run(diffsteer.NoiseOpt(num_iterations=3), "ddpm", seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.samples, _run(diffsteer.NoiseOpt(num_iterations=3), "ddpm", seed=7).samples)


def test_a_scheduler_with_history_is_switched_under_auto_and_refused_otherwise():
    scheduler = DPMSolverMultistepScheduler()
    common = dict(shape=(2,), reward=reward, num_inference_steps=6, generator=torch.Generator().manual_seed(0))
    result = diffsteer.sample(
        exact_denoiser(four_modes(), scheduler), scheduler, method=diffsteer.NoiseOpt(num_iterations=2), **common
    )
    assert any("replaced by DDIMScheduler" in change for change in result.changes)
    with pytest.raises(ValueError, match="keeps history between steps"):
        diffsteer.sample(
            exact_denoiser(four_modes(), scheduler),
            scheduler,
            method=diffsteer.NoiseOpt(num_iterations=2),
            stochastic="off",
            **common,
        )


def test_a_reward_without_a_gradient_is_refused():
    from diffsteer.gradients import NotDifferentiableError

    scheduler = DDIMScheduler(clip_sample=False)
    with pytest.raises(NotDifferentiableError, match="gives no gradient"):
        diffsteer.sample(
            exact_denoiser(four_modes(), scheduler),
            scheduler,
            shape=(2,),
            method=diffsteer.NoiseOpt(num_iterations=2),
            reward=lambda x: reward(x).detach(),
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(0),
        )
