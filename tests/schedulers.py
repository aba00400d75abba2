"""Scheduler fixtures shared by the tests: one instance of every registered class, in its default configuration."""

import diffusers

import diffsteer.processes
from diffsteer.worlds.gmm import GaussianMixture


# clip_sample=False: the default clips x0-hat to [-1, 1], which is a different estimator.
DEFAULT_CONFIGS = {
    "DDPMScheduler": {"clip_sample": False},
    "DDIMScheduler": {"clip_sample": False},
    "EulerDiscreteScheduler": {},
    "EulerAncestralDiscreteScheduler": {},
    "LCMScheduler": {"clip_sample": False},
    "TCDScheduler": {"clip_sample": False},
    "FlowMatchEulerDiscreteScheduler": {},
    "FlowMatchEulerSDEScheduler": {},
    "DPMSolverMultistepScheduler": {},
    "DPMSolverSinglestepScheduler": {},
    "UniPCMultistepScheduler": {},
    "DEISMultistepScheduler": {},
    "SASolverScheduler": {},
    "PNDMScheduler": {},
    "HeunDiscreteScheduler": {},
    "KDPM2DiscreteScheduler": {},
    "KDPM2AncestralDiscreteScheduler": {},
    "LMSDiscreteScheduler": {},
}

# Whether the default configuration (with no step kwargs) draws noise in `step`.
DETERMINISTIC_BY_DEFAULT = {
    "DDPMScheduler": False,
    "DDIMScheduler": True,
    "EulerDiscreteScheduler": True,
    "EulerAncestralDiscreteScheduler": False,
    "LCMScheduler": False,
    "TCDScheduler": False,
    "FlowMatchEulerDiscreteScheduler": True,
    "FlowMatchEulerSDEScheduler": False,
    "DPMSolverMultistepScheduler": True,
    "DPMSolverSinglestepScheduler": True,
    "UniPCMultistepScheduler": True,
    "DEISMultistepScheduler": True,
    "SASolverScheduler": False,
    "PNDMScheduler": True,
    "HeunDiscreteScheduler": True,
    "KDPM2DiscreteScheduler": True,
    "KDPM2AncestralDiscreteScheduler": False,
    "LMSDiscreteScheduler": True,
}

# Schedulers that keep per-particle history between steps, in a deterministic configuration.
STATEFUL_DETERMINISTIC = {
    "DPMSolverMultistepScheduler": {},
    "DPMSolverSinglestepScheduler": {},
    "UniPCMultistepScheduler": {},
    "DEISMultistepScheduler": {},
    "SASolverScheduler": {"tau_func": lambda t: 0},
    "PNDMScheduler": {},
    "HeunDiscreteScheduler": {},
    "KDPM2DiscreteScheduler": {},
    "LMSDiscreteScheduler": {},
}

MIXTURE_3D = GaussianMixture.isotropic([0.5, 0.5], [[-1.0, 0.0, 1.0], [1.0, 0.5, -1.0]], 0.6)


def make(name: str, **overrides):
    config = {**DEFAULT_CONFIGS.get(name, {}), **overrides}
    return (getattr(diffusers, name, None) or getattr(diffsteer.processes, name))(**config)
