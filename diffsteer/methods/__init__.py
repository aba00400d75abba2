"""Steering methods: what the sampling loop does at its potential, resampling and selection points."""

from diffsteer.methods.fk import FK, SELECT_MODES, BestOfN


__all__ = ["FK", "SELECT_MODES", "BestOfN"]
