import math
import sys

import pytest
import torch

from diffsteer.outputs import CostLedger, SamplingResult
from diffsteer.smc import (
    RESAMPLING_SCHEMES,
    centre,
    check_log_weights,
    ess,
    ess_rows,
    get_resampling_scheme,
    log_mean_exp,
    normalize,
)


def test_normalize_sums_to_one_in_log_space():
    log_weights = torch.tensor([1000.0, 1001.0, -math.inf, 999.0], dtype=torch.float64)
    normalised = normalize(log_weights)
    assert torch.logsumexp(normalised, 0).item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isneginf(normalised[2])
    expected = torch.softmax(log_weights, 0)
    assert torch.allclose(normalised.exp(), expected)


def test_ess_limits_and_closed_form():
    assert ess(torch.zeros(10, dtype=torch.float64)) == pytest.approx(10.0)
    assert ess(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1.0)
    weights = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert ess(weights.log() + 123.0) == pytest.approx(1.0 / (weights**2).sum().item())


def test_log_mean_exp_is_stable():
    log_weights = torch.tensor([1e4, 1e4], dtype=torch.float64)
    assert log_mean_exp(log_weights).item() == pytest.approx(1e4)


@pytest.mark.parametrize(
    "log_weights, message",
    [
        (torch.tensor([0.0, math.nan]), "NaN or \\+inf"),
        (torch.tensor([0.0, math.inf]), "NaN or \\+inf"),
        (torch.tensor([-math.inf, -math.inf]), "zero weight"),
        (torch.zeros(2, 2), "1-D"),
    ],
)
def test_bad_weights_raise(log_weights, message):
    with pytest.raises(ValueError, match=message):
        normalize(log_weights)
    with pytest.raises(ValueError, match=message):
        ess(log_weights)


EQUAL_SIZES = [1, 2, 3, 7, 64, 100, 1000, 4096]
MAX = sys.float_info.max
INF = math.inf


def sampling_result(log_weights: torch.Tensor) -> SamplingResult:
    """A `SamplingResult` carrying `log_weights` (already normalised) and placeholders for everything else."""
    num = log_weights.shape[0]
    return SamplingResult(
        samples=torch.zeros(num, 1),
        log_weights=log_weights,
        rewards=torch.zeros(num),
        log_normalizer=None,
        selected=torch.zeros(1, 1),
        selected_indices=torch.zeros(1, dtype=torch.long),
        trace=[],
        cost=CostLedger(),
        changes=[],
    )


def closed_form_ess(weights: torch.Tensor) -> torch.Tensor:
    """(sum w)^2 / sum w^2 of each row of plain float64 weights."""
    return weights.sum(-1) ** 2 / (weights**2).sum(-1)


@pytest.mark.parametrize("num", EQUAL_SIZES)
def test_ess_of_equal_weights_is_exactly_n(num):
    """Equal weights at any level give ESS N exactly, not N - 1e-14: `ess_threshold=1.0` must not resample them (FK
    with lambda 0 is then plain sampling). Checked for `ess`, `ess_rows` (one row and several) and
    `SamplingResult.ess` (on the normalised log-weights a run returns)."""
    levels = {torch.float64: [0.0, -3.7, 1e6, -1e300, 1e300], torch.float32: [0.0, -3.7, 1e6]}
    for dtype, values in levels.items():
        for level in values:
            log_weights = torch.full((num,), level, dtype=dtype)
            assert ess(log_weights) == num, (dtype, level)
            assert ess_rows(log_weights).item() == num, (dtype, level)
            assert ess_rows(log_weights.expand(3, num)).tolist() == [num] * 3, (dtype, level)
            assert sampling_result(normalize(log_weights)).ess == num, (dtype, level)
            assert sampling_result(torch.full((num,), -math.log(num), dtype=dtype)).ess == num, (dtype, level)


def test_ess_matches_the_closed_form_on_random_and_zero_weights():
    """Every ESS equals (sum w)^2 / sum w^2 in float64, with -inf entries (zero weights) and whatever the level of
    the log-weights (the float64 rounding of lw + 700 moves w by a few 1e-14)."""
    generator = torch.Generator().manual_seed(0)
    log_weights = 3.0 * torch.randn(200, 37, generator=generator, dtype=torch.float64)
    log_weights[torch.rand(200, 37, generator=generator) < 0.3] = -INF
    log_weights[:, 5] = torch.randn(200, generator=generator, dtype=torch.float64)  # at least one finite per row
    log_weights[0, :] = -INF
    log_weights[0, 3] = 2.5  # a single non-zero weight: ESS 1
    expected = closed_form_ess(log_weights.exp())
    assert expected[0].item() == 1.0
    for shift, tolerance in ((0.0, 1e-13), (700.0, 1e-11), (-700.0, 1e-11)):
        shifted = log_weights + shift
        assert torch.allclose(ess_rows(shifted), expected, rtol=tolerance, atol=0), shift
        for row, value in zip(shifted[:20], expected[:20], strict=True):
            assert ess(row) == pytest.approx(value.item(), rel=tolerance)
            assert sampling_result(normalize(row)).ess == pytest.approx(value.item(), rel=tolerance)
    assert ess_rows(log_weights[:1]).item() == 1.0
    assert torch.all((ess_rows(log_weights) >= 1.0) & (ess_rows(log_weights) <= 37.0))


def test_fk_with_zero_lambda_and_threshold_one_is_plain_sampling():
    """lambda 0 leaves every weight equal, so ESS is exactly N at every potential step and `ess_threshold=1.0` never
    resamples: the particles are those of plain sampling (best-of-N) with the same seed."""
    from diffusers import DDPMScheduler

    import diffsteer
    from diffsteer.worlds.gmm import GaussianMixture, exact_denoiser, linear_reward

    mixture = GaussianMixture.isotropic([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.4)

    def run(method):
        scheduler = DDPMScheduler(clip_sample=False)
        return diffsteer.sample(
            exact_denoiser(mixture, scheduler),
            scheduler,
            shape=(2,),
            method=method,
            reward=linear_reward([1.0, 0.0]),
            num_inference_steps=6,
            generator=torch.Generator().manual_seed(0),
        )

    steered = run(diffsteer.FK(64, lmbda=0.0, ess_threshold=1.0))
    plain = run(diffsteer.BestOfN(64))
    assert [record.ess for record in steered.trace if record.rewarded] == [64.0] * 6
    assert not any(record.resampled for record in steered.trace)
    assert steered.ess == 64.0 and steered.cost.resampling_steps == 0
    assert torch.equal(steered.samples, plain.samples)


# Rows of six log-weights that every function of the weights core must handle without NaN: zero weights, a single
# non-zero weight (first, middle, last), huge values (+-1e300, +-the largest float) mixed with finite ones, equal
# weights at a huge level, and tilts at 1e16 where the float64 spacing is 2.
SWEEP_ROWS = [
    [0.3, -INF, 1.2, -INF, -0.5, 0.0],
    [-INF, -INF, 4.0, -INF, -INF, -INF],
    [-2.0, -INF, -INF, -INF, -INF, -INF],
    [-INF, -INF, -INF, -INF, -INF, 1e300],
    [1e300, -1e300, 0.0, -INF, 1e300, 5.0],
    [-1e300, -1e300, -INF, -1e300, -INF, -1e300],
    [MAX, -MAX, -INF, 0.0, MAX, -INF],
    [1e16, 1e16, 1e16 + 2.0, -INF, 1e16, 0.0],
]


def reference(row: list[float]) -> tuple[float, list[float], float, float]:
    """The largest log-weight, the probabilities, the ESS and log(mean(w)) of a row, in Python floats."""
    largest = max(row)
    weights = [math.exp(value - largest) for value in row]  # -MAX - MAX overflows to -inf, whose exp is 0
    total = math.fsum(weights)
    return (
        largest,
        [weight / total for weight in weights],
        total**2 / math.fsum(weight * weight for weight in weights),
        largest + math.log(total / len(row)),
    )


@pytest.mark.parametrize("row", SWEEP_ROWS, ids=range(len(SWEEP_ROWS)))
def test_weights_core_gives_no_nan_and_the_closed_form_on_zero_single_and_huge_weights(row):
    """centre, normalize, log_mean_exp, ess and SamplingResult.ess against the closed form in Python floats. On the
    huge rows normalize used to leave the log N of the normaliser in the rounding of the level (1e300 - log 2 is
    1e300), so that equal weights came out as exp(0) = 1 each instead of 1 / N."""
    log_weights = torch.tensor(row, dtype=torch.float64)
    largest, probabilities, expected_ess, expected_log_mean = reference(row)
    check_log_weights(log_weights)  # a valid row: no error

    centred, shift = centre(log_weights)
    assert shift.item() == largest and centred.max().item() == 0.0
    assert not torch.isnan(centred).any()
    assert torch.equal(torch.isneginf(centred), torch.isneginf(log_weights) | (log_weights - largest == -INF))

    normalised = normalize(log_weights)
    assert not torch.isnan(normalised).any() and torch.isneginf(normalised[torch.isneginf(log_weights)]).all()
    assert normalised.exp().tolist() == pytest.approx(probabilities, abs=1e-15)
    assert torch.logsumexp(normalised, 0).item() == pytest.approx(0.0, abs=1e-15)

    assert log_mean_exp(log_weights).item() == pytest.approx(expected_log_mean, rel=1e-15, abs=1e-15)
    assert ess(log_weights) == pytest.approx(expected_ess, rel=1e-15)
    assert sampling_result(normalised).ess == pytest.approx(expected_ess, rel=1e-15)


def test_weights_core_rows_at_once_and_all_zero_rows():
    """The row-wise functions on all sweep rows at once equal their one-row results; a row of zero weights has
    log-mean -inf (log 0) and stays -inf when centred (shift 0), and only its ESS (0/0) is NaN, as documented."""
    log_weights = torch.tensor([*SWEEP_ROWS, [-INF] * 6], dtype=torch.float64)
    centred, shift = centre(log_weights)
    log_means = log_mean_exp(log_weights, dim=-1)
    sizes = ess_rows(log_weights)
    for index in range(len(SWEEP_ROWS)):
        one_centred, one_shift = centre(log_weights[index])
        assert torch.equal(centred[index], one_centred) and shift[index] == one_shift
        assert log_means[index] == log_mean_exp(log_weights[index]) and sizes[index] == ess_rows(log_weights[index])
    assert torch.isneginf(centred[-1]).all() and shift[-1].item() == 0.0 and torch.isneginf(log_means[-1])
    assert not torch.isnan(centred).any() and not torch.isnan(log_means).any()
    assert not torch.isnan(sizes[:-1]).any() and torch.isnan(sizes[-1])


@pytest.mark.parametrize("scheme", sorted(RESAMPLING_SCHEMES))
def test_no_scheme_draws_a_zero_weight_particle_on_the_sweep_rows(scheme):
    """Many draws with a fixed generator, at several numbers of samples: every index lands on a particle whose weight
    is not zero in float64 (for the huge rows, the ones at the top), and a single non-zero weight is always drawn."""
    generator = torch.Generator().manual_seed(0)
    for row in SWEEP_ROWS:
        _, probabilities, _, _ = reference(row)
        allowed = torch.tensor([probability > 0 for probability in probabilities])
        for dtype in (torch.float64, torch.float32):
            log_weights = torch.tensor(row, dtype=torch.float64).to(dtype)
            if (log_weights == INF).any() or torch.isneginf(log_weights).all():
                continue  # the float32 copy of a huge row: +inf, or zero weights throughout
            for num_samples in (1, 19):
                for _ in range(60 if dtype == torch.float64 else 20):
                    indices = get_resampling_scheme(scheme)(log_weights, num_samples, generator)
                    assert indices.shape == (num_samples,) and indices.dtype == torch.long
                    if dtype == torch.float64:
                        assert allowed[indices].all(), (row, indices)
                    assert not torch.isneginf(log_weights[indices]).any(), (row, dtype, indices)
