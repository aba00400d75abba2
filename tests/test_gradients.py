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
from diffsteer.worlds.gmm import GaussianMixture, exact_denoiser, four_modes


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
def test_dps_gradients_match_central_differences_of_the_exact_denoiser(name):
    process = _process(SCHEDULERS[name]())
    probe = _process(SCHEDULERS[name]())
    particles = process.init(6, torch.Generator().manual_seed(0))
    probe_particles = probe.init(6, torch.Generator().manual_seed(0))
    steps, probe_steps = list(process.steps()), list(probe.steps())
    # Four steps on both, so that the solver state (Euler ancestral reads sigmas by its step index) agrees at step 4.
    for step, probe_step in zip(steps[:4], probe_steps[:4], strict=True):
        for p, ps, s in ((process, particles, step), (probe, probe_particles, probe_step)):
            p.predict(ps, s, with_x0_hat=False)
            p.transition(ps, s, torch.Generator().manual_seed(s.index))
    latents = particles.latents.clone()
    scores, grads = process.predict_with_gradient(
        particles, steps[4], lambda x0, rows: reward(x0), through_model=True, chunk_size=4
    )

    def objective(x: torch.Tensor) -> torch.Tensor:
        moved = probe.init(6, latents=x)
        moved.scheduler_state = probe_particles.scheduler_state
        probe.predict(moved, probe_steps[4])
        return reward(moved.x0_hat)

    assert torch.allclose(scores, objective(latents), rtol=1e-10, atol=1e-10)
    assert torch.allclose(grads, _central_difference(objective, latents), rtol=1e-5, atol=1e-6)
    # predict's outputs are set on the particles as predict sets them.
    reference = probe.init(6, latents=latents)
    reference.scheduler_state = probe_particles.scheduler_state
    probe.predict(reference, probe_steps[4])
    assert torch.allclose(particles.model_output, reference.model_output, rtol=1e-12, atol=1e-12)
    assert torch.allclose(particles.x0_hat, reference.x0_hat, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_holding_x0_fixed_is_exact_for_unit_gaussian_data(name):
    # For data N(0, I), x0-hat is linear in x_t with the Jacobian x0_jacobian_scale: both variants then agree.
    unit = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], std=1.0)
    gradients = []
    for through_model in (True, False):
        scheduler = SCHEDULERS[name]()
        process = SchedulerProcess(
            exact_denoiser(unit, scheduler), scheduler, shape=(2,), num_inference_steps=10, dtype=torch.float64
        )
        particles = process.init(5, torch.Generator().manual_seed(3))
        for step in process.steps():
            if step.index in (1, 6):
                gradients.append(
                    process.predict_with_gradient(
                        particles, step, lambda x0, rows: reward(x0), through_model=through_model
                    )[1]
                )
            else:
                process.predict(particles, step, with_x0_hat=False)
            process.transition(particles, step, torch.Generator().manual_seed(step.index))
    for dps, fixed in zip(gradients[:2], gradients[2:], strict=True):
        # 1e-6: the mixture's flow denoiser reads sigma off the float32 timestep (t / 1000), the process off the
        # scheduler's sigmas, which differ in the eighth digit.
        assert torch.allclose(dps, fixed, rtol=1e-6, atol=1e-9)
        assert not torch.allclose(dps, torch.zeros_like(dps))


def test_holding_x0_fixed_on_the_mixture_is_the_x0_gradient_times_sqrt_alpha_bar():
    scheduler = DDPMScheduler(clip_sample=False)
    process = _process(scheduler)
    particles = process.init(5, torch.Generator().manual_seed(1))
    step = next(iter(process.steps()))
    _, grads = process.predict_with_gradient(particles, step, lambda x0, rows: reward(x0), through_model=False)
    a = float(process.scheduler.alphas_cumprod[int(step.timestep)])
    assert torch.allclose(grads, -2 * (particles.x0_hat - TARGET) * math.sqrt(a), rtol=1e-10)


def test_the_ledger_prices_backward_rows_at_the_documented_constant():
    ledger = CostLedger(model_rows=40, plain_model_rows=10, backward_rows=10, budget=6.0)
    assert ledger.cost == pytest.approx((40 + BACKWARD_COST * 10) / 10)
    assert ledger.within_budget == (ledger.cost <= 6.0)
    assert ledger.as_dict()["backward_rows"] == 10
