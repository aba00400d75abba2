"""The Gaussian-mixture world's closed forms, checked against brute-force integration and sampling."""

import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from diffsteer.processes import alpha_bar
from diffsteer.worlds.gmm import GaussianMixture, exact_denoiser, linear_reward


MIXTURE = GaussianMixture(
    torch.tensor([0.5, 0.3, 0.2]),
    torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -2.0]]),
    torch.tensor([[[0.5, 0.1], [0.1, 0.3]], [[0.2, 0.0], [0.0, 0.6]], [[0.4, -0.2], [-0.2, 0.4]]]),
)


def grid(step: float = 0.02, half_width: float = 8.0) -> tuple[torch.Tensor, float]:
    axis = torch.arange(-half_width, half_width, step, dtype=torch.float64)
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1), step**2


def test_tilt_matches_brute_force_integration():
    direction, lmbda = torch.tensor([0.8, -0.4]), 0.9
    tilted, log_normalizer = MIXTURE.tilt(direction, lmbda)
    points, cell = grid()
    unnormalised = MIXTURE.log_prob(points) + lmbda * points @ direction.double()
    assert log_normalizer == pytest.approx(float(torch.logsumexp(unnormalised, 0) + math.log(cell)), abs=1e-6)
    # The tilted mixture is the normalised tilted density, point by point.
    assert torch.allclose(tilted.log_prob(points[::997]), unnormalised[::997] - log_normalizer, atol=1e-9)
    # Its mode weights are the tilted mass of each component.
    log_mass = MIXTURE.component_log_probs(points) + (lmbda * points @ direction.double())[:, None]
    mass = torch.softmax(log_mass.flatten(), 0).reshape(log_mass.shape)
    assert torch.allclose(tilted.weights, mass.sum(0), atol=1e-6)


def test_posterior_mean_matches_brute_force_integration():
    scale, noise_std = 0.6, 0.8
    x_t = torch.tensor([[0.3, -0.5], [2.0, 1.0]], dtype=torch.float64)
    points, _ = grid(0.01, 6.0)
    for row in x_t:
        log_joint = MIXTURE.log_prob(points) - ((row - scale * points) ** 2).sum(1) / (2 * noise_std**2)
        weights = torch.softmax(log_joint, 0)
        expected = (weights[:, None] * points).sum(0)
        assert torch.allclose(MIXTURE.posterior_mean(row[None], scale, noise_std)[0], expected, atol=1e-6)


def test_exact_samples_have_the_mixture_moments():
    """Mean and covariance of 200k exact samples, within 5 standard errors of the closed forms."""
    n = 200_000
    samples = MIXTURE.sample(n, torch.Generator().manual_seed(0))
    mean = (MIXTURE.weights[:, None] * MIXTURE.means).sum(0)
    outer = MIXTURE.means[:, :, None] * MIXTURE.means[:, None, :]
    second = (MIXTURE.weights[:, None, None] * (MIXTURE.covariances + outer)).sum(0)
    covariance = second - mean[:, None] * mean[None, :]
    assert torch.all((samples.mean(0) - mean).abs() <= 5 * torch.sqrt(torch.diagonal(covariance) / n))
    assert torch.allclose(torch.cov(samples.T), covariance, atol=0.03)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_exact_denoiser_outputs_the_posterior_in_each_parameterisation(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    model = exact_denoiser(MIXTURE, scheduler)
    x_t = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    timestep = torch.tensor(400)
    a = alpha_bar(scheduler, timestep)
    x0 = MIXTURE.posterior_mean(x_t, math.sqrt(a), math.sqrt(1 - a))
    eps = (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
    expected = {"epsilon": eps, "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * x0, "sample": x0}
    assert torch.allclose(model(x_t, timestep), expected[prediction_type], atol=1e-10)


def test_exact_velocity_for_flow_matching():
    scheduler = FlowMatchEulerDiscreteScheduler()
    model = exact_denoiser(MIXTURE, scheduler)
    x_t = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = 0.3
    x0 = MIXTURE.posterior_mean(x_t, 1 - sigma, sigma)
    assert torch.allclose(model(x_t, torch.tensor(sigma * 1000)), (x_t - (1 - sigma) * x0) / sigma - x0)


def test_alpha_bar_inverts_log_sigma_interpolation():
    scheduler = DDPMScheduler()
    assert alpha_bar(scheduler, 10) == pytest.approx(float(scheduler.alphas_cumprod[10]), rel=1e-12)
    half = alpha_bar(scheduler, 10.5)
    sigmas = ((1 - scheduler.alphas_cumprod.double()) / scheduler.alphas_cumprod.double()).sqrt()
    expected_sigma = math.exp(0.5 * (math.log(sigmas[10]) + math.log(sigmas[11])))
    assert half == pytest.approx(1 / (1 + expected_sigma**2), rel=1e-12)
    with pytest.raises(ValueError, match="outside"):
        alpha_bar(scheduler, 1000.5)


def test_linear_reward_and_validation():
    reward = linear_reward([1.0, -2.0])
    assert reward(torch.tensor([[1.0, 1.0], [0.0, 0.5]])).tolist() == [-1.0, -1.0]
    with pytest.raises(ValueError, match="sum to one"):
        GaussianMixture.isotropic([0.5, 0.6], [[0.0], [1.0]], 1.0)
    with pytest.raises(ValueError, match="Expected weights"):
        GaussianMixture(torch.ones(1), torch.zeros(2, 1), torch.ones(2, 1, 1))


def test_mode_weights_estimator_on_exact_and_reweighted_samples():
    """On exact samples of the tilted mixture, and on prior samples reweighted by exp(lambda r), the estimate is
    within 5 binomial standard errors of the tilted weights (the reweighted one with the Kish ESS)."""
    direction, lmbda = torch.tensor([0.8, -0.4]), 0.9
    tilted, _ = MIXTURE.tilt(direction, lmbda)
    n = 100_000
    generator = torch.Generator().manual_seed(3)
    exact = tilted.mode_weights(tilted.sample(n, generator))
    prior_samples = MIXTURE.sample(n, generator)
    log_weights = lmbda * prior_samples @ direction.double()
    reweighted = tilted.mode_weights(prior_samples, log_weights)
    kish = float(torch.softmax(log_weights, 0).pow(2).sum().reciprocal())
    binomial = tilted.weights * (1 - tilted.weights)
    assert torch.all((exact - tilted.weights).abs() <= 5 * torch.sqrt(binomial / n))
    assert torch.all((reweighted - tilted.weights).abs() <= 5 * torch.sqrt(binomial / kish))
