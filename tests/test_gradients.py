"""The differentiable path: chunked reward gradients, through x0-hat with the model held fixed or through the model
(checked against central differences of the exact Gaussian-mixture denoiser), and refusal of rewards without one."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler

from diffsteer.gradients import BACKWARD_COST, NotDifferentiableError, chunked_gradient
from diffsteer.outputs import CostLedger
from diffsteer.processes import FlowMatchEulerSDEScheduler, SchedulerProcess
from diffsteer.worlds.gmm import exact_denoiser, four_modes


TARGET = torch.tensor([2.0, 3.2], dtype=torch.float64)


def reward(x: torch.Tensor) -> torch.Tensor:
    return -(x.double() - TARGET).square().sum(1)


def test_chunked_gradients_are_the_closed_form_whatever_the_chunk():
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = -2 * (x - TARGET)
    for chunk_size in (None, 1, 3, 7, 100):
        scores, grads = chunked_gradient(lambda rows_x, rows: reward(rows_x), x, chunk_size=chunk_size)
        assert torch.allclose(scores, reward(x)) and torch.allclose(grads, expected, rtol=1e-12, atol=1e-12)
        assert not grads.requires_grad and not scores.requires_grad


def test_the_objective_sees_its_rows():
    x = torch.zeros(5, 2, dtype=torch.float64)
    weights = torch.arange(5.0, dtype=torch.float64)
    _, grads = chunked_gradient(lambda rows_x, rows: weights[rows] * rows_x.sum(1), x, chunk_size=2)
    assert torch.equal(grads[:, 0], weights) and torch.equal(grads[:, 1], weights)


@pytest.mark.parametrize(
    "objective",
    [
        lambda x, rows: x.detach().sum(1),  # detached
        lambda x, rows: np.asarray(x.detach()).sum(1),  # computed in numpy
        lambda x, rows: torch.zeros(x.shape[0], requires_grad=True),  # does not depend on its input
    ],
    ids=["detached", "numpy", "constant"],
)
def test_a_reward_without_a_gradient_is_refused(objective):
    with pytest.raises(NotDifferentiableError, match="gives no gradient"):
        chunked_gradient(objective, torch.zeros(3, 2), what="reward 'x'")


def test_a_score_per_row_is_required():
    with pytest.raises(ValueError, match=r"one score per row, shape \(3,\)"):
        chunked_gradient(lambda x, rows: x.sum(), torch.zeros(3, 2))


def _process(scheduler):
    return SchedulerProcess(
        exact_denoiser(four_modes(), scheduler), scheduler, shape=(2,), num_inference_steps=10, dtype=torch.float64
    )


def _central_difference(function, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    grads = torch.zeros_like(x)
    for j in range(x.shape[1]):
        step = torch.zeros_like(x)
        step[:, j] = h
        grads[:, j] = (function(x + step) - function(x - step)) / (2 * h)
    return grads


SCHEDULERS = {
    "ddpm epsilon": lambda: DDPMScheduler(clip_sample=False),
    "ddpm v": lambda: DDPMScheduler(clip_sample=False, prediction_type="v_prediction"),
    "euler ancestral": lambda: EulerAncestralDiscreteScheduler(),
    "flow sde": lambda: FlowMatchEulerSDEScheduler(),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("through_model", [True, False])
def test_gradients_match_central_differences_of_the_exact_denoiser(name, through_model):
    scheduler = SCHEDULERS[name]()
    process = _process(scheduler)
    particles = process.init(6, torch.Generator().manual_seed(0))
    steps = list(process.steps())
    for step in steps[:4]:
        process.predict(particles, step, with_x0_hat=False)
        process.transition(particles, step, torch.Generator().manual_seed(step.index))
    step = steps[4]
    latents = particles.latents.clone()
    scores, grads = process.predict_with_gradient(
        particles, step, lambda x0, rows: reward(x0), through_model=through_model, chunk_size=4
    )
    probe = _process(SCHEDULERS[name]())
    probe_particles = probe.init(6, latents=latents)
    probe_steps = list(probe.steps())

    def objective(x: torch.Tensor) -> torch.Tensor:
        # x0-hat of x as `predict` computes it, at the same step (the probe is advanced to it, noise irrelevant).
        moved = probe.init(6, latents=x)
        moved.scheduler_state = probe_particles.scheduler_state
        if through_model:
            probe.predict(moved, probe_steps[4])
            return reward(moved.x0_hat)
        moved.model_output = fixed
        return reward(probe._x0(x, fixed, probe_steps[4]))

    # Advance the probe's solver state to step 4 so that its step index (Euler ancestral reads sigmas by it) agrees.
    for probe_step in probe_steps[:4]:
        probe.predict(probe_particles, probe_step, with_x0_hat=False)
        probe.transition(probe_particles, probe_step, torch.Generator().manual_seed(0))
    probe_particles.latents = latents
    fixed = particles.model_output
    expected = _central_difference(objective, latents)
    assert torch.allclose(scores, objective(latents), rtol=1e-10, atol=1e-10)
    assert torch.allclose(grads, expected, rtol=1e-5, atol=1e-6), (grads, expected)
    # predict's outputs are set as predict sets them.
    reference = probe.init(6, latents=latents)
    reference.scheduler_state = probe_particles.scheduler_state
    probe.predict(reference, probe_steps[4])
    assert torch.allclose(particles.model_output, reference.model_output, rtol=1e-12, atol=1e-12)
    assert torch.allclose(particles.x0_hat, reference.x0_hat, rtol=1e-12, atol=1e-12)


def test_holding_the_model_fixed_scales_the_x0_gradient_by_the_formula():
    # epsilon held fixed: x0-hat = (x - sqrt(1 - a) eps) / sqrt(a), so d r / d x = r'(x0-hat) / sqrt(a).
    scheduler = DDPMScheduler(clip_sample=False)
    process = _process(scheduler)
    particles = process.init(5, torch.Generator().manual_seed(1))
    step = next(iter(process.steps()))
    _, grads = process.predict_with_gradient(particles, step, lambda x0, rows: reward(x0), through_model=False)
    a = float(process.scheduler.alphas_cumprod[int(step.timestep)])
    assert torch.allclose(grads, -2 * (particles.x0_hat - TARGET) / math.sqrt(a), rtol=1e-10)


def test_the_ledger_prices_backward_rows_at_the_documented_constant():
    ledger = CostLedger(model_rows=40, plain_model_rows=10, backward_rows=10, budget=6.0)
    assert ledger.cost == pytest.approx((40 + BACKWARD_COST * 10) / 10)
    assert ledger.within_budget == (ledger.cost <= 6.0)
    assert ledger.as_dict()["backward_rows"] == 10
