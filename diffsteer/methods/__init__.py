"""Steering methods: frozen settings objects whose hooks the drivers run (see `diffsteer.methods.base`)."""

from diffsteer.methods.base import Method
from diffsteer.methods.branching import RBF, SVDD
from diffsteer.methods.fk import FK, SELECT_MODES, BestOfN
from diffsteer.methods.guidance import Guidance, Twisted
from diffsteer.methods.noise_opt import NoiseOpt
from diffsteer.methods.registry import BUDGET_RULES, DEFAULT_SETTINGS, METHOD_CLASSES, METHOD_NAMES, make_method
from diffsteer.methods.search import Paths, ZeroOrder


__all__ = [
    "BUDGET_RULES",
    "DEFAULT_SETTINGS",
    "FK",
    "METHOD_CLASSES",
    "METHOD_NAMES",
    "RBF",
    "SELECT_MODES",
    "SVDD",
    "BestOfN",
    "Guidance",
    "Method",
    "NoiseOpt",
    "Paths",
    "Twisted",
    "ZeroOrder",
    "make_method",
]
