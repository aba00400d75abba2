"""Resampling schemes behind one signature and a name registry.

Every scheme is a pure function `scheme(log_weights, num_samples, generator) -> indices`: it takes unnormalised
log-weights of shape (N,) and returns `num_samples` ancestor indices in [0, N), drawing uniforms only from the
generator passed in. The expected number of copies of particle i is `num_samples * W_i` for every scheme; they differ
in variance (multinomial > residual, stratified > systematic, usually).
"""

import math
from collections.abc import Callable

import torch

from diffsteer.smc.checks import check_callable, check_int, check_type
from diffsteer.smc.weights import check_log_weights


ResamplingScheme = Callable[[torch.Tensor, int, "torch.Generator | None"], torch.Tensor]

RESAMPLING_SCHEMES: dict[str, ResamplingScheme] = {}


def register_resampling_scheme(name: str) -> Callable[[ResamplingScheme], ResamplingScheme]:
    """Decorator that adds a scheme to the registry under `name`."""

    check_type("name", name, str, "a string")

    def decorator(scheme: ResamplingScheme) -> ResamplingScheme:
        check_callable("scheme", scheme, "a function scheme(log_weights, num_samples, generator) -> indices")
        if name in RESAMPLING_SCHEMES:
            raise ValueError(f"A resampling scheme named {name!r} is already registered.")
        RESAMPLING_SCHEMES[name] = scheme
        return scheme

    return decorator


def get_resampling_scheme(name: str) -> ResamplingScheme:
    """The registered scheme called `name`.

    Raises:
        TypeError: if `name` is not a string.
        ValueError: naming the registered schemes, if `name` is not one of them.
    """
    check_type("name", name, str, "the name of a resampling scheme, such as 'systematic'")
    try:
        return RESAMPLING_SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"Unknown resampling scheme {name!r}; choose one of {sorted(RESAMPLING_SCHEMES)} "
            "or register your own with `diffsteer.smc.register_resampling_scheme`."
        ) from None


def resample(
    log_weights: torch.Tensor, num_samples: int, scheme: str = "systematic", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Ancestor indices drawn with the scheme called `scheme`."""
    check_type("scheme", scheme, str, "the name of a resampling scheme, such as 'systematic'")
    return get_resampling_scheme(scheme)(log_weights, num_samples, generator)


def inverse_cdf(log_weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Indices i with CDF(i-1) <= u * total < CDF(i), for uniforms u in [0, 1].

    The CDF is accumulated in float64 and never normalised; queries are scaled by its last value and clamped just
    below it. Rounding can therefore never land a query past the end of the CDF, and a particle of zero weight
    (whose CDF entry equals its predecessor's) can never be returned.
    """
    if not isinstance(log_weights, torch.Tensor) or log_weights.ndim != 1 or log_weights.numel() == 0:
        check_log_weights(log_weights)  # raises, saying what is wrong with them
    log_weights = log_weights.detach().to(torch.float64)
    weights = torch.exp(log_weights - log_weights.max())
    cdf = torch.cumsum(weights, dim=0)
    total = cdf[-1]
    # The total is finite and positive exactly when the weights are usable: a NaN or +inf log-weight, or all -inf,
    # makes the shifted exponentials NaN. One read of it is the whole check when all is well.
    if not 0.0 < float(total) < math.inf:
        check_log_weights(log_weights)
    queries = uniforms.to(device=cdf.device, dtype=torch.float64) * total
    queries = torch.minimum(queries, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, queries, right=True).clamp_(max=cdf.numel() - 1)


def _uniforms(num: int, generator: torch.Generator | None) -> torch.Tensor:
    check_type("generator", generator, torch.Generator | None, "a torch.Generator or None")
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(num, generator=generator, device=device, dtype=torch.float64).cpu()


def _check_num_samples(num_samples: int) -> int:
    return check_int("num_samples", num_samples, minimum=1)


@register_resampling_scheme("multinomial")
def multinomial(log_weights: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent draws from the categorical distribution of the weights."""
    num_samples = _check_num_samples(num_samples)
    return inverse_cdf(log_weights, _uniforms(num_samples, generator)).to(log_weights.device)


@register_resampling_scheme("stratified")
def stratified(log_weights: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One independent uniform in each of the strata [k/M, (k+1)/M)."""
    num_samples = _check_num_samples(num_samples)
    strata = torch.arange(num_samples, dtype=torch.float64)
    uniforms = (strata + _uniforms(num_samples, generator)) / num_samples
    return inverse_cdf(log_weights, uniforms).to(log_weights.device)


@register_resampling_scheme("systematic")
def systematic(log_weights: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniform shared by all strata: (k + U) / M."""
    num_samples = _check_num_samples(num_samples)
    strata = torch.arange(num_samples, dtype=torch.float64)
    uniforms = (strata + _uniforms(1, generator)) / num_samples
    return inverse_cdf(log_weights, uniforms).to(log_weights.device)


@register_resampling_scheme("residual")
def residual(log_weights: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """floor(M W_i) deterministic copies of each particle, the remaining draws multinomial on the residuals."""
    num_samples = _check_num_samples(num_samples)
    check_log_weights(log_weights)
    probabilities = torch.softmax(log_weights.detach().to(torch.float64), dim=0).cpu()
    expected = num_samples * probabilities
    copies = torch.floor(expected).long()
    # Particle i fills the slots [ends[i-1], ends[i]); the same indices as repeat_interleave(arange(N), copies),
    # without its parallel kernel, which takes milliseconds on a few particles when the CPU cores are busy.
    ends = torch.cumsum(copies, dim=0)
    deterministic = torch.searchsorted(ends, torch.arange(int(ends[-1])), right=True)
    remaining = num_samples - deterministic.numel()
    if remaining == 0:
        return deterministic.to(log_weights.device)
    # Residuals are zero exactly where the weight is zero, so log(0) = -inf keeps those particles out.
    residual_log_weights = torch.log((expected - copies).clamp_(min=0.0))
    random = inverse_cdf(residual_log_weights, _uniforms(remaining, generator))
    return torch.cat([deterministic, random]).to(log_weights.device)
