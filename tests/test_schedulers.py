"""Every registered scheduler: x0-hat, stochasticity, per-particle state and exact resampling."""

import math
from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler

import diffsteer
from diffsteer.processes import (
    SCHEDULER_REGISTRY,
    SchedulerProcess,
    Step,
    register_scheduler,
    scheduler_spec,
    unregistered_particle_state,
)
from diffsteer.processes.x0 import alpha_bar

from .schedulers import DEFAULT_CONFIGS, DETERMINISTIC_BY_DEFAULT, MIXTURE_3D, STATEFUL_DETERMINISTIC, make


ALL = sorted(DEFAULT_CONFIGS)
SHAPE = (3,)


def test_fixture_covers_the_whole_registry():
    assert {cls.__name__ for cls in SCHEDULER_REGISTRY} == set(ALL)


def wiggly_reward(x: torch.Tensor) -> torch.Tensor:
    return 0.7 * torch.sin(5 * x).flatten(1).sum(1)


def scheduler_x0(
    process: SchedulerProcess, model_output: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor
) -> torch.Tensor | None:
    """x0 as the scheduler itself computes it before stepping, where it does (data-prediction solvers)."""
    config = process.scheduler.config
    if config.get("algorithm_type") in ("dpmsolver++", "data_prediction") or config.get("predict_x0", False):
        if process.scheduler.step_index is None:
            process.scheduler._init_step_index(timestep)
        return process.scheduler.convert_model_output(model_output, sample=sample)
    return None


@pytest.mark.parametrize("name", ALL)
def test_x0_hat_is_the_exact_posterior_mean_and_matches_the_scheduler(name):
    """With the exact mixture denoiser, x0-hat must be E[x0 | x_t]; where the scheduler computes x0 itself
    (`pred_original_sample`, `convert_model_output` of data-prediction solvers, x - sigma v for flow matching),
    the two must agree."""
    scheduler = make(name)
    model = diffsteer.worlds.gmm.exact_denoiser(MIXTURE_3D, scheduler)
    process = SchedulerProcess(model, scheduler, shape=SHAPE, num_inference_steps=8, stochastic="off")
    particles = process.init(5, torch.Generator().manual_seed(0))
    flow = scheduler_spec(scheduler).space == "flow"
    compared_with_scheduler = 0
    for step in process.steps():
        sample = particles.latents
        process.predict(particles, step)
        if flow:
            sigma = float(process.scheduler.sigmas[process.scheduler.step_index or 0])
            exact = MIXTURE_3D.posterior_mean(sample, 1 - sigma, sigma)
        else:
            a = alpha_bar(process.scheduler, step.timestep)
            scaled = process.scheduler.scale_model_input(sample, step.timestep)
            exact = MIXTURE_3D.posterior_mean(scaled, math.sqrt(a), math.sqrt(1 - a))
        torch.testing.assert_close(particles.x0_hat.double(), exact, atol=2e-5, rtol=1e-4)

        reference = scheduler_x0(process, particles.model_output, sample, step.timestep)
        kwargs = {"generator": torch.Generator().manual_seed(1)} if "generator" in process._step_parameters else {}
        output = process.scheduler.step(particles.model_output, step.timestep, sample, **kwargs)
        if flow:
            reference = sample - sigma * particles.model_output
        elif reference is None:
            reference = getattr(output, "pred_original_sample", None)
        if reference is not None:
            torch.testing.assert_close(particles.x0_hat, reference.to(particles.x0_hat.dtype), atol=2e-4, rtol=1e-3)
            compared_with_scheduler += 1
        particles.latents = output.prev_sample
    # PNDM and DEIS never form x0; LCM and TCD return boundary-conditioned estimates instead.
    if name not in ("PNDMScheduler", "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler"):
        assert compared_with_scheduler > 0


def final_samples(name: str, stochastic: str, seed: int, **overrides) -> diffsteer.SamplingResult:
    """FK with lmbda=0 (flat weights, so no resampling) from fixed initial noise: differs by seed iff the
    transition draws noise."""
    scheduler = make(name, **overrides)
    model = diffsteer.worlds.gmm.exact_denoiser(MIXTURE_3D, scheduler)
    latents = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    return diffsteer.sample(
        model,
        scheduler,
        shape=SHAPE,
        method=diffsteer.FK(4, lmbda=0.0),
        reward=wiggly_reward,
        num_inference_steps=6,
        latents=latents,
        generator=torch.Generator().manual_seed(seed),
        stochastic=stochastic,
    )


def test_a_step_no_potential_reads_skips_x0_hat():
    scheduler = make("DDIMScheduler")
    model = diffsteer.worlds.gmm.exact_denoiser(MIXTURE_3D, scheduler)
    process = SchedulerProcess(model, scheduler, shape=SHAPE, num_inference_steps=4, stochastic="off")
    particles = process.init(3, torch.Generator().manual_seed(0))
    step = next(iter(process.steps()))
    process.predict(particles, step)
    model_output, x0_hat = particles.model_output, particles.x0_hat
    process.predict(particles, step, with_x0_hat=False)
    assert particles.x0_hat is None and torch.equal(particles.model_output, model_output)
    assert x0_hat is not None


@pytest.mark.parametrize("name", ALL)
def test_deterministic_transitions_are_detected_and_made_stochastic(name):
    deterministic = DETERMINISTIC_BY_DEFAULT[name]
    off = [final_samples(name, "off", seed) for seed in (1, 2)]
    assert torch.equal(off[0].samples, off[1].samples) == deterministic
    assert off[0].changes == []

    auto = [final_samples(name, "auto", seed) for seed in (1, 2)]
    assert not torch.equal(auto[0].samples, auto[1].samples)
    assert bool(auto[0].changes) == deterministic

    if deterministic:
        with pytest.raises(ValueError, match=r"deterministic transition.*stochastic='auto'"):
            final_samples(name, "require", 1)
    else:
        assert final_samples(name, "require", 1).changes == []


def test_auto_reports_the_switch_and_leaves_the_callers_scheduler_alone():
    scheduler = make("PNDMScheduler")
    model = diffsteer.worlds.gmm.exact_denoiser(MIXTURE_3D, scheduler)
    result = diffsteer.sample(
        model, scheduler, shape=SHAPE, method=diffsteer.FK(4), reward=wiggly_reward, num_inference_steps=5
    )
    # PNDM has no stochastic mode: it becomes DDIM, which is deterministic at eta=0, so eta becomes 1.
    assert "replaced by DDIMScheduler" in result.changes[0]
    assert "eta was set to 1.0" in result.changes[1]
    assert type(scheduler).__name__ == "PNDMScheduler" and scheduler.num_inference_steps is None
    assert scheduler.counter == 0 and scheduler.ets == []


@pytest.mark.parametrize("name", ALL)
def test_registry_lists_every_per_particle_attribute(name):
    """Guard: after every step, no sample-shaped attribute is missing from the registry; and every registered
    attribute does hold per-particle state at some step (so the names are not stale)."""
    num_particles = 32  # differs from every schedule length at 10 steps
    scheduler = make(name, **STATEFUL_DETERMINISTIC.get(name, {}))
    model = diffsteer.worlds.gmm.exact_denoiser(MIXTURE_3D, scheduler)
    process = SchedulerProcess(model, scheduler, shape=SHAPE, num_inference_steps=10, stochastic="off")
    particles = process.init(num_particles, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    seen = set()
    for step in process.steps():
        process.predict(particles, step)
        process.transition(particles, step, generator)
        assert unregistered_particle_state(process.scheduler, num_particles) == []
        for attribute in process.spec.per_particle:
            value = getattr(process.scheduler, attribute, None)
            values = value if isinstance(value, list | tuple) else [value]
            if any(isinstance(v, torch.Tensor) and v.shape[0] == num_particles for v in values):
                seen.add(attribute)
    assert seen == set(process.spec.per_particle)


class RememberingDDIM(DDIMScheduler):
    """A scheduler that keeps a per-particle tensor the registry does not know about."""

    def step(self, model_output, timestep, sample, *args, **kwargs):
        self.memory = sample.clone()
        return super().step(model_output, timestep, sample, *args, **kwargs)


def test_unknown_per_particle_state_stops_resampling():
    scheduler = RememberingDDIM(clip_sample=False)
    assert scheduler_spec(scheduler) is SCHEDULER_REGISTRY[DDIMScheduler]  # inherited through the MRO
    model = diffsteer.worlds.gmm.exact_denoiser(MIXTURE_3D, scheduler)
    with pytest.raises(RuntimeError, match=r"per-particle attributes \['memory'\]"):
        diffsteer.sample(
            model,
            scheduler,
            shape=SHAPE,
            method=diffsteer.FK(8, lmbda=5.0, ess_threshold=None),
            reward=wiggly_reward,
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(0),
        )


def test_unregistered_scheduler_class_is_refused():
    class Custom(DDIMScheduler):
        pass

    register_scheduler(Custom, SCHEDULER_REGISTRY[DDIMScheduler])
    try:
        assert scheduler_spec(Custom()) is SCHEDULER_REGISTRY[DDIMScheduler]
    finally:
        del SCHEDULER_REGISTRY[Custom]

    class NotAScheduler:
        pass

    with pytest.raises(ValueError, match="not in diffsteer's scheduler registry"):
        scheduler_spec(NotAScheduler())


def resampled_against_ancestors(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FK with a deterministic scheduler and multinomial resampling at every step, and the plain run from the
    initial noise of each particle's ancestor. Returns (steered, plain, origins)."""
    num_particles = 32
    scheduler = make(name, **STATEFUL_DETERMINISTIC[name])
    model = diffsteer.worlds.gmm.exact_denoiser(MIXTURE_3D, scheduler)
    x_T = torch.randn(num_particles, *SHAPE, generator=torch.Generator().manual_seed(0))
    x_T = x_T * getattr(scheduler, "init_noise_sigma", 1.0)
    common = dict(shape=SHAPE, reward=wiggly_reward, num_inference_steps=10, stochastic="off")
    steered = diffsteer.sample(
        model,
        scheduler,
        method=diffsteer.FK(num_particles, lmbda=1.0, resampling="multinomial", ess_threshold=None),
        latents=x_T,
        generator=torch.Generator().manual_seed(1),
        **common,
    )
    origins = steered.origins()
    plain = diffsteer.sample(model, scheduler, method=diffsteer.BestOfN(num_particles), latents=x_T[origins], **common)
    return steered.samples, plain.samples, origins


@pytest.mark.parametrize("name", sorted(STATEFUL_DETERMINISTIC))
def test_resampling_copies_whole_trajectories_bit_for_bit(name):
    steered, plain, origins = resampled_against_ancestors(name)
    assert 1 < len(set(origins.tolist())) < len(origins)  # copies occurred, and more than one lineage survived
    assert torch.equal(steered, plain)


def every_call_a_boundary(self):
    for index, timestep in enumerate(self.scheduler.timesteps):
        yield Step(index, timestep, index, True, index / len(self.scheduler.timesteps))


@pytest.mark.parametrize("name", sorted(STATEFUL_DETERMINISTIC))
def test_a_forgotten_attribute_is_caught_twice(name, monkeypatch):
    """Negative control. Forget the scheduler's per-particle state in the registry (and, for the order-2
    schedulers, whose state exists only mid-step, allow resampling mid-step): the runtime guard refuses to
    resample; with the guard switched off too, the bit-for-bit comparison fails."""
    cls = type(make(name))
    spec = SCHEDULER_REGISTRY[cls]
    monkeypatch.setitem(SCHEDULER_REGISTRY, cls, replace(spec, per_particle=()))
    if hasattr(cls, "state_in_first_order"):
        monkeypatch.setattr(SchedulerProcess, "steps", every_call_a_boundary)
    with pytest.raises(RuntimeError, match="per-particle attributes"):
        resampled_against_ancestors(name)
    monkeypatch.setattr(SchedulerProcess, "check_particle_state", lambda self, n: None)
    steered, plain, _ = resampled_against_ancestors(name)
    assert not torch.equal(steered, plain)


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler"])
def test_order2_resampling_only_at_full_steps(name):
    scheduler = make(name)
    model = diffsteer.worlds.gmm.exact_denoiser(MIXTURE_3D, scheduler)
    result = diffsteer.sample(
        model,
        scheduler,
        shape=SHAPE,
        method=diffsteer.FK(16, lmbda=1.0, resampling="multinomial", ess_threshold=None),
        reward=wiggly_reward,
        num_inference_steps=5,
        generator=torch.Generator().manual_seed(1),
        stochastic="off",
    )
    assert len(result.trace) == 9  # 2 * 5 - 1 model calls
    assert [record.resampled for record in result.trace] == [True, False] * 4 + [True]


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_x0_hat_of_solvers_in_flow_mode(name):
    """VP solvers run with flow sigmas (as for SANA or Flux) get the flow x0-hat, from the scheduler's own sigma
    (its timesteps are rounded): the exact posterior mean, and the solver's own data prediction."""
    scheduler = make(name, use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=2.0)
    model = diffsteer.worlds.gmm.exact_denoiser(MIXTURE_3D, scheduler)
    process = SchedulerProcess(model, scheduler, shape=SHAPE, num_inference_steps=6, stochastic="off")
    assert process.is_flow
    particles = process.init(5, torch.Generator().manual_seed(0))
    for step in process.steps():
        sample = particles.latents
        process.predict(particles, step)
        if process.scheduler.step_index is None:
            process.scheduler._init_step_index(step.timestep)
        own = process.scheduler.convert_model_output(particles.model_output, sample=sample)
        torch.testing.assert_close(particles.x0_hat, own, atol=2e-5, rtol=1e-4)
        sigma = float(step.timestep) / 1000  # what the model was told
        exact = MIXTURE_3D.posterior_mean(sample, 1 - sigma, sigma)
        torch.testing.assert_close(particles.x0_hat.double(), exact, atol=2e-2, rtol=0)
        process.transition(particles, step)


def old_ddim_fixed_by_a_pipeline() -> DDIMScheduler:
    """A `DDIMScheduler()` whose config a pipeline's `__init__` then fixed (as StableDiffusionPipeline does to old
    configs): `steps_offset` and `clip_sample` were left to their defaults, so `from_config` would drop the fix."""
    from diffusers.configuration_utils import FrozenDict

    scheduler = DDIMScheduler()
    assert {"steps_offset", "clip_sample"} <= set(scheduler.config._use_default_values)
    scheduler._internal_dict = FrozenDict({**scheduler.config, "steps_offset": 1, "clip_sample": False})
    return scheduler


@pytest.mark.parametrize("stochastic", ["off", "auto"])
def test_the_process_steps_through_the_schedulers_effective_timesteps(stochastic):
    """The process's copy keeps the effective config (also through the PNDM -> DDIM switch under "auto")."""
    scheduler = old_ddim_fixed_by_a_pipeline()
    scheduler.set_timesteps(5)
    process = SchedulerProcess(lambda x, t: x, scheduler, shape=SHAPE, num_inference_steps=5, stochastic=stochastic)
    assert process.scheduler.timesteps.tolist() == scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]
    assert process.scheduler.config.clip_sample is False
    from diffusers import PNDMScheduler

    pndm = PNDMScheduler()
    pndm._internal_dict = type(pndm.config)({**pndm.config, "steps_offset": 1})
    switched = SchedulerProcess(lambda x, t: x, pndm, shape=SHAPE, num_inference_steps=5, stochastic="auto")
    assert type(switched.scheduler).__name__ == "DDIMScheduler" and switched.scheduler.config.steps_offset == 1


def test_custom_schedules_set_the_step_count_and_numpy_integers_are_step_counts():
    import numpy as np
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler()
    custom = SchedulerProcess(
        lambda x, t: x,
        scheduler,
        shape=SHAPE,
        num_inference_steps=None,
        timesteps_kwargs={"timesteps": [900, 500]},
        stochastic="off",
    )
    assert custom.num_inference_steps == 2 and custom.scheduler.timesteps.tolist() == [900, 500]
    numpy_steps = SchedulerProcess(lambda x, t: x, scheduler, shape=SHAPE, num_inference_steps=np.int64(3))
    assert numpy_steps.num_inference_steps == 3
    with pytest.raises(TypeError, match="num_inference_steps must be a positive integer"):
        SchedulerProcess(lambda x, t: x, scheduler, shape=SHAPE, num_inference_steps=True)


def test_a_switch_to_a_scheduler_without_custom_schedules_says_so():
    from diffusers import EulerDiscreteScheduler

    with pytest.raises(ValueError, match=r"replaced by EulerAncestralDiscreteScheduler.*takes no custom timesteps"):
        SchedulerProcess(
            lambda x, t: x,
            EulerDiscreteScheduler(),
            shape=SHAPE,
            num_inference_steps=None,
            timesteps_kwargs={"timesteps": [900, 500]},
        )
