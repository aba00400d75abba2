"""Flow models: the stochastic sampler FK switches to keeps the flow ODE's distribution."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import diffsteer
from diffsteer.processes import FlowMatchEulerSDEScheduler, SchedulerProcess
from diffsteer.processes.flow_sde import diffusion_coefficient
from diffsteer.worlds.gmm import exact_denoiser, four_modes, linear_reward


MIXTURE = four_modes()
SAMPLES = 20_000


def plain_samples(scheduler, steps: int = 100, **step_kwargs) -> torch.Tensor:
    process = SchedulerProcess(
        exact_denoiser(MIXTURE, scheduler),
        scheduler,
        shape=(2,),
        num_inference_steps=steps,
        stochastic="off",
        step_kwargs=step_kwargs,
    )
    generator = torch.Generator().manual_seed(0)
    particles = process.init(SAMPLES, generator)
    for step in process.steps():
        process.predict(particles, step)
        process.transition(particles, step, generator)
    return particles.latents.double()


def mode_weights_and_spread(samples: torch.Tensor) -> tuple[torch.Tensor, float]:
    responsibilities = MIXTURE.responsibilities(samples)
    first_mode = samples[responsibilities.argmax(1) == 0]
    return responsibilities.mean(0), float(first_mode.std(0).mean())


@pytest.mark.parametrize("schedule", ["square", "linear", "constant"])
def test_sde_keeps_the_mixture(schedule):
    """Mode weights within 5 binomial standard errors plus 0.01 (the 100-step discretisation budget; the ODE
    itself is within 0.006) of the mixture's; the first mode's std within 5 standard errors (0.5 / sqrt(2 n) each)
    plus 0.01 of 0.5."""
    samples = plain_samples(FlowMatchEulerSDEScheduler(), diffusion_scale=1.0, diffusion_schedule=schedule)
    weights, spread = mode_weights_and_spread(samples)
    standard_error = torch.sqrt(MIXTURE.weights * (1 - MIXTURE.weights) / SAMPLES)
    assert torch.all((weights - MIXTURE.weights).abs() <= 5 * standard_error + 0.01), weights
    assert abs(spread - 0.5) <= 5 * 0.5 / math.sqrt(2 * SAMPLES * 0.4) + 0.01, spread


def test_default_sde_keeps_the_mixture_and_diffusers_stochastic_sampling_does_not():
    sde_weights, sde_spread = mode_weights_and_spread(plain_samples(FlowMatchEulerSDEScheduler()))
    standard_error = torch.sqrt(MIXTURE.weights * (1 - MIXTURE.weights) / SAMPLES)
    assert torch.all((sde_weights - MIXTURE.weights).abs() <= 5 * standard_error + 0.01)
    assert abs(sde_spread - 0.5) < 0.02
    # diffusers' re-noising sampler shrinks the modes (measured std 0.34) and moves their weights.
    renoise_weights, renoise_spread = mode_weights_and_spread(
        plain_samples(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True))
    )
    assert renoise_spread < 0.4
    assert (renoise_weights - MIXTURE.weights).abs().max() > 0.05


def test_zero_diffusion_is_the_euler_ode():
    ode = plain_samples(FlowMatchEulerDiscreteScheduler(), steps=10)
    sde = plain_samples(FlowMatchEulerSDEScheduler(), steps=10, diffusion_scale=0.0)
    torch.testing.assert_close(sde, ode)


def test_fk_on_a_flow_model_switches_to_the_sde_and_reaches_the_tilt():
    """FK with the (deterministic) flow scheduler: `auto` switches to the SDE and the weighted particles reach the
    closed-form tilted mode weights (8 replicates of 1,000 particles; tolerance t_{7, 0.9995} SE + 0.015)."""
    direction, lmbda = torch.tensor([1.0, 0.5]), 0.6
    tilted, _ = MIXTURE.tilt(direction, lmbda)
    estimates = []
    for seed in range(8):
        scheduler = FlowMatchEulerDiscreteScheduler()
        result = diffsteer.sample(
            exact_denoiser(MIXTURE, scheduler),
            scheduler,
            shape=(2,),
            method=diffsteer.FK(1000, lmbda=lmbda),
            reward=linear_reward(direction),
            num_inference_steps=100,
            generator=torch.Generator().manual_seed(seed),
        )
        assert "replaced by FlowMatchEulerSDEScheduler" in result.changes[0]
        estimates.append(tilted.mode_weights(result.samples, result.log_weights))
    estimates = torch.stack(estimates)
    standard_error = estimates.std(0) / math.sqrt(len(estimates))
    assert torch.all((estimates.mean(0) - tilted.weights).abs() <= 5.41 * standard_error + 0.015)


def test_diffusion_schedules_and_errors():
    assert diffusion_coefficient(0.5, 3.0, "square") == 0.75
    assert diffusion_coefficient(0.5, 3.0, "linear") == 1.5
    assert diffusion_coefficient(0.5, 3.0, "constant") == 3.0
    with pytest.raises(ValueError, match="diffusion_schedule must be one of"):
        diffusion_coefficient(0.5, 1.0, "cubic")
