"""Processes: a model plus a schedule, made steppable one particle per batch row.

`Process` (the protocol every driver uses), `Step`, `Model` and `Generators` come from `diffsteer.processes.base`,
which needs only torch; the diffusers-backed names (`SchedulerProcess`, the scheduler registry, the flow SDE) are
imported on first use, so `import diffsteer.processes` does not load diffusers.
"""

import importlib
from typing import TYPE_CHECKING, Any

from diffsteer.processes.base import Generators, Model, Process, Step


_LAZY = {
    "FlowMatchEulerSDEScheduler": "diffsteer.processes.flow_sde",
    "GaussianKernel": "diffsteer.processes.kernels",
    "STOCHASTIC_MODES": "diffsteer.processes.scheduler_process",
    "SchedulerProcess": "diffsteer.processes.scheduler_process",
    "SCHEDULER_REGISTRY": "diffsteer.processes.schedulers",
    "SchedulerSpec": "diffsteer.processes.schedulers",
    "SchedulerState": "diffsteer.processes.schedulers",
    "register_scheduler": "diffsteer.processes.schedulers",
    "scheduler_spec": "diffsteer.processes.schedulers",
    "unregistered_particle_state": "diffsteer.processes.schedulers",
    "alpha_bar": "diffsteer.processes.x0",
    "flow_sigma": "diffsteer.processes.x0",
    "flow_x0": "diffsteer.processes.x0",
    "vp_x0": "diffsteer.processes.x0",
}

__all__ = [
    "SCHEDULER_REGISTRY",
    "STOCHASTIC_MODES",
    "FlowMatchEulerSDEScheduler",
    "GaussianKernel",
    "Generators",
    "Model",
    "Process",
    "SchedulerProcess",
    "SchedulerSpec",
    "SchedulerState",
    "Step",
    "alpha_bar",
    "flow_sigma",
    "flow_x0",
    "register_scheduler",
    "scheduler_spec",
    "unregistered_particle_state",
    "vp_x0",
]

if TYPE_CHECKING:
    from diffsteer.processes.flow_sde import FlowMatchEulerSDEScheduler
    from diffsteer.processes.scheduler_process import STOCHASTIC_MODES, SchedulerProcess
    from diffsteer.processes.schedulers import (
        SCHEDULER_REGISTRY,
        SchedulerSpec,
        SchedulerState,
        register_scheduler,
        scheduler_spec,
        unregistered_particle_state,
    )
    from diffsteer.processes.x0 import alpha_bar, flow_sigma, flow_x0, vp_x0


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffsteer.processes' has no attribute {name!r}")
