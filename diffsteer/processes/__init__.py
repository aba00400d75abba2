"""Processes: a model plus a diffusers scheduler, made steppable one particle per batch row."""

from diffsteer.processes.flow_sde import FlowMatchEulerSDEScheduler
from diffsteer.processes.scheduler_process import STOCHASTIC_MODES, Model, SchedulerProcess, Step
from diffsteer.processes.schedulers import (
    SCHEDULER_REGISTRY,
    SchedulerSpec,
    SchedulerState,
    register_scheduler,
    scheduler_spec,
    unregistered_particle_state,
)
from diffsteer.processes.x0 import alpha_bar, flow_sigma, flow_x0, vp_x0


__all__ = [
    "SCHEDULER_REGISTRY",
    "STOCHASTIC_MODES",
    "FlowMatchEulerSDEScheduler",
    "Model",
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
