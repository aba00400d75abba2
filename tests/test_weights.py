import math

import pytest
import torch

from diffsteer.smc import ess, log_mean_exp, normalize


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
