"""The particle core: log-space weights, resampling schemes, potentials and the particle container.

This subpackage is pure torch: it imports neither diffusers nor transformers.
"""

from diffsteer.smc.particles import Particles, Reindexable, reindex_value
from diffsteer.smc.potentials import POTENTIAL_KINDS, Potential, PotentialState
from diffsteer.smc.resampling import (
    RESAMPLING_SCHEMES,
    get_resampling_scheme,
    inverse_cdf,
    multinomial,
    register_resampling_scheme,
    resample,
    residual,
    stratified,
    systematic,
)
from diffsteer.smc.weights import centre, check_log_weights, ess, ess_rows, log_mean_exp, normalize


__all__ = [
    "POTENTIAL_KINDS",
    "RESAMPLING_SCHEMES",
    "Particles",
    "Potential",
    "PotentialState",
    "Reindexable",
    "centre",
    "check_log_weights",
    "ess",
    "ess_rows",
    "get_resampling_scheme",
    "inverse_cdf",
    "log_mean_exp",
    "multinomial",
    "normalize",
    "register_resampling_scheme",
    "reindex_value",
    "resample",
    "residual",
    "stratified",
    "systematic",
]
