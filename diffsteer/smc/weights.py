"""Importance weights, kept in log space from start to finish.

Unnormalised log-weights are carried across steps (a step that does not resample keeps its weights) and reset to
their log-mean after resampling, so that `log_mean_exp(log_weights)` stays the running estimate of the
log-normaliser log E[prod G].
"""

import math

import torch


def normalize(log_weights: torch.Tensor) -> torch.Tensor:
    """Normalised log-weights: `log_weights - logsumexp(log_weights)`, so that their exponentials sum to one.

    Raises:
        ValueError: if every weight is zero (all log-weights are `-inf`) or a log-weight is NaN or `+inf`.
    """
    check_log_weights(log_weights)
    return log_weights - torch.logsumexp(log_weights, dim=0)


def log_mean_exp(log_weights: torch.Tensor) -> torch.Tensor:
    """log(mean(exp(log_weights))), computed stably."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def ess(log_weights: torch.Tensor) -> float:
    """Effective sample size (sum w)^2 / sum w^2 of unnormalised log-weights; between 1 and N."""
    check_log_weights(log_weights)
    return float(torch.exp(2 * torch.logsumexp(log_weights, dim=0) - torch.logsumexp(2 * log_weights, dim=0)))


def check_log_weights(log_weights: torch.Tensor) -> None:
    """Raise a `ValueError` for log-weights no resampling scheme can use.

    `-inf` is a valid log-weight (a particle with zero weight); NaN and `+inf` are not, and neither is a population
    in which every weight is zero.
    """
    if log_weights.ndim != 1 or log_weights.numel() == 0:
        raise ValueError(f"log_weights must be a non-empty 1-D tensor, got shape {tuple(log_weights.shape)}.")
    bad = torch.isnan(log_weights) | (log_weights == math.inf)
    if bad.any():
        raise ValueError(
            f"log_weights contain NaN or +inf at particles {bad.nonzero().flatten().tolist()}; log-weights must be "
            "finite or -inf (zero weight)."
        )
    if torch.isneginf(log_weights).all():
        raise ValueError(
            "Every particle has zero weight (all log-weights are -inf), so there is nothing to resample. This happens "
            "when the reward is -inf for every particle; check the reward, or lower `lmbda`."
        )
