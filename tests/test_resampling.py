import math

import pytest
import torch

from diffsteer.smc import RESAMPLING_SCHEMES, get_resampling_scheme, inverse_cdf, register_resampling_scheme, resample


SCHEMES = ["multinomial", "stratified", "systematic", "residual"]
WEIGHTS = torch.tensor([0.3, 0.0, 0.05, 0.2, 0.1, 0.0, 0.3, 0.05], dtype=torch.float64)


def test_registry_has_the_four_schemes():
    assert set(SCHEMES) <= set(RESAMPLING_SCHEMES)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num_samples", [8, 5, 13])
def test_expected_offspring_is_num_samples_times_weight(scheme, num_samples):
    """E[#copies of i] = M W_i. For all four schemes Var[#copies of i] <= M W_i (multinomial: M W (1 - W);
    stratified and residual: sums of Bernoulli/multinomial terms whose means add to at most M W_i; systematic:
    f (1 - f) with f = frac(M W_i) <= M W_i), so the mean over R repetitions is within 5 sqrt(M W_i / R)."""
    repetitions = 5_000
    generator = torch.Generator().manual_seed(1234)
    counts = torch.zeros_like(WEIGHTS)
    log_weights = WEIGHTS.log()
    for _ in range(repetitions):
        indices = resample(log_weights, num_samples, scheme, generator)
        assert indices.shape == (num_samples,)
        counts += torch.bincount(indices, minlength=WEIGHTS.numel())
    mean_counts = counts / repetitions
    expected = num_samples * WEIGHTS
    tolerance = 5 * torch.sqrt(expected / repetitions)
    assert torch.all((mean_counts - expected).abs() <= tolerance), (mean_counts, expected)
    assert counts[WEIGHTS == 0].sum() == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_weighted_mean_is_preserved_in_expectation(scheme):
    """The plain mean after resampling estimates the weighted mean before it. Each repetition's mean has variance
    at most sum_i W_i f_i^2 / M (the multinomial bound, which the other schemes do not exceed), so the average of
    R repetitions is within 5 sqrt(that / R)."""
    generator = torch.Generator().manual_seed(7)
    num = 500
    values = torch.randn(num, generator=generator, dtype=torch.float64)
    log_weights = 2.0 * torch.randn(num, generator=generator, dtype=torch.float64)
    weights = torch.softmax(log_weights, 0)
    target = (weights * values).sum()
    repetitions = 2_000
    means = torch.stack([values[resample(log_weights, num, scheme, generator)].mean() for _ in range(repetitions)])
    bound = torch.sqrt((weights * values**2).sum() / num / repetitions)
    assert (means.mean() - target).abs() <= 5 * bound


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_weight_particles_are_never_picked_even_at_the_end_of_a_float32_cdf(scheme):
    generator = torch.Generator().manual_seed(0)
    log_weights = torch.randn(1000, generator=generator).float()
    log_weights[-5:] = -math.inf
    log_weights[::7] = -math.inf
    for _ in range(200):
        indices = get_resampling_scheme(scheme)(log_weights, 1000, generator)
        assert not torch.isneginf(log_weights[indices]).any()


def test_inverse_cdf_clamps_queries_at_the_top():
    log_weights = torch.tensor([0.0, 0.0, -math.inf], dtype=torch.float32)
    uniforms = torch.tensor([0.0, 0.4999999, 0.5, 1.0 - 1e-16, 1.0], dtype=torch.float64)
    assert inverse_cdf(log_weights, uniforms).tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_schemes_draw_only_from_the_generator_passed_in(scheme):
    log_weights = torch.randn(50, generator=torch.Generator().manual_seed(3))
    global_state = torch.get_rng_state()
    first = resample(log_weights, 50, scheme, torch.Generator().manual_seed(11))
    second = resample(log_weights, 50, scheme, torch.Generator().manual_seed(11))
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), global_state)


def test_residual_is_deterministic_when_counts_are_integral():
    weights = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    indices = resample(weights.log(), 4, "residual", torch.Generator().manual_seed(0))
    assert sorted(indices.tolist()) == [0, 0, 1, 2]


def test_unknown_scheme_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown resampling scheme 'sytematic'.*systematic"):
        resample(torch.zeros(3), 3, "sytematic")


def test_bad_num_samples_and_duplicate_registration():
    with pytest.raises(ValueError, match="num_samples"):
        resample(torch.zeros(3), 0, "systematic")
    with pytest.raises(ValueError, match="already registered"):
        register_resampling_scheme("systematic")(lambda log_weights, num, generator: None)
