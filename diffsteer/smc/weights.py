"""Importance weights, kept in log space from start to finish.

Unnormalised log-weights are carried across steps (a step that does not resample keeps its weights) and reset to
their log-mean after resampling, so that `log_mean_exp(log_weights)` stays the running estimate of the
log-normaliser log E[prod G].

Tilts can be large (|lambda r| of 1e16 has a float64 spacing of 2, so log N would vanish in rounding), so a sampler
keeps its log-weights centred with `centre` and carries what it removed in a running log-normaliser: the weights
relative to the largest one keep full precision, and log Z = offset + log_mean_exp(centred).
"""

import math

import torch


def normalize(log_weights: torch.Tensor) -> torch.Tensor:
    """Normalised log-weights: `log_weights - logsumexp(log_weights)`, so that their exponentials sum to one.

    The log-weights are centred (largest 0) first: at a level such as 1e16 or 1e300 the spacing of float64 swallows
    log N, so `x - logsumexp(x)` would leave equal weights at 0 each, summing to N.

    Raises:
        ValueError: if every weight is zero (all log-weights are `-inf`) or a log-weight is NaN or `+inf`.
    """
    check_log_weights(log_weights)
    centred = log_weights - log_weights.max()  # finite: the check found a finite weight and no NaN or +inf
    return centred - torch.logsumexp(centred, dim=0)


def log_mean_exp(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log(mean(exp(log_weights))) along `dim`, computed stably."""
    return torch.logsumexp(log_weights, dim=dim) - math.log(log_weights.shape[dim])


def ess(log_weights: torch.Tensor) -> float:
    """Effective sample size (sum w)^2 / sum w^2 of unnormalised log-weights; between 1 and N."""
    check_log_weights(log_weights)
    return float(ess_rows(log_weights))


def ess_rows(log_weights: torch.Tensor) -> torch.Tensor:
    """The effective sample size of each row (last dimension) of unnormalised log-weights, as a tensor.

    No checks and no host sync: a row no scheme can use (all -inf, or with NaN or +inf) comes out NaN, so one read of
    the result tells whether every row is valid.
    """
    # (sum w)^2 / sum w^2 with w relative to the row's largest weight: no overflow, exact for equal weights (N, not
    # N - 1e-14 as exp(2 logsumexp - logsumexp) gives), and less than half the kernels of two logsumexps.
    weights = torch.exp(log_weights - log_weights.amax(dim=-1, keepdim=True))
    total = weights.sum(dim=-1)
    return total * total / (weights * weights).sum(dim=-1)


def centre(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each row (last dimension) of log-weights so that its largest entry is 0.

    Returns:
        `(centred, shift)` with `log_weights == centred + shift[..., None]` (up to rounding of the subtraction). A row
        without a finite maximum (all -inf, or holding NaN or +inf) is left as it is (shift 0), so that the checks
        that follow still see what went wrong.
    """
    shift = log_weights.amax(dim=-1)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return log_weights - shift.unsqueeze(-1), shift


def check_log_weights(log_weights: torch.Tensor) -> None:
    """Raise a `ValueError` for log-weights no resampling scheme can use (a `TypeError` for a non-tensor).

    `-inf` is a valid log-weight (a particle with zero weight); NaN and `+inf` are not, and neither is a population
    in which every weight is zero.
    """
    if not isinstance(log_weights, torch.Tensor):
        raise TypeError(f"log_weights must be a 1-D torch.Tensor, got {type(log_weights).__name__}.")
    if log_weights.ndim != 1 or log_weights.numel() == 0:
        raise ValueError(f"log_weights must be a non-empty 1-D tensor, got shape {tuple(log_weights.shape)}.")
    # One reduction and one host sync when all is well: the log-sum is finite unless a weight is NaN or +inf, or all
    # are -inf; only then is it worth finding out which.
    if math.isfinite(float(torch.logsumexp(log_weights.detach(), dim=0))):
        return
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
