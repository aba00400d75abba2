"""The `Process` protocol and `SchedulerProcess` as an extension point: reuse, windows, the re-noising kernel,
`Particles.take`, and the step counts of order-2 schedules.

Every scheduler in the registry is covered where the property is about solver state (reuse, windows, take), since
that is where a live scheduler's history would leak between runs or particles.
"""

import math
import subprocess
import sys

import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, HeunDiscreteScheduler

import diffsteer
from diffsteer.processes import Process, SchedulerProcess
from diffsteer.smc.particles import cat_particles
from diffsteer.worlds import gmm

from .schedulers import DEFAULT_CONFIGS, DETERMINISTIC_BY_DEFAULT, MIXTURE_3D, make


ALL = sorted(DEFAULT_CONFIGS)
SHAPE = (3,)
STEPS = 6


def make_process(name: str, steps: int = STEPS, **kwargs) -> SchedulerProcess:
    scheduler = make(name)
    model = gmm.exact_denoiser(MIXTURE_3D, scheduler)
    return SchedulerProcess(model, scheduler, shape=SHAPE, num_inference_steps=steps, stochastic="auto", **kwargs)


def run_window(process, particles, start, stop, seed):
    generator = torch.Generator().manual_seed(seed)
    for step in process.steps(start, stop):
        process.predict(particles, step, with_x0_hat=False)
        process.transition(particles, step, generator)
    return particles


def test_the_protocol_imports_no_diffusers():
    code = "import sys, diffsteer.processes.base, diffsteer.processes; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_scheduler_process_is_a_process():
    assert isinstance(make_process("DDPMScheduler"), Process)


@pytest.mark.parametrize("name", ALL)
def test_a_reused_process_gives_what_fresh_processes_give(name):
    """Two runs in a row on one process equal two runs on fresh processes, bit for bit (schedulers that keep a step
    index, such as EulerAncestral, used to fail the second run)."""
    reused = make_process(name)

    def run(process, seed):
        particles = process.init(4, torch.Generator().manual_seed(seed))
        return run_window(process, particles, 0, process.num_inference_steps, seed + 100).latents

    first, second = run(reused, 0), run(reused, 1)
    assert torch.equal(first, run(make_process(name), 0))
    assert torch.equal(second, run(make_process(name), 1))


@pytest.mark.parametrize("name", ALL)
def test_a_window_run_from_given_particles_is_that_part_of_a_full_run(name):
    """Steps 0..k, then k..T from the particles the first window left (solver history included), equal one run of
    0..T, bit for bit, when the noise comes from the same generator."""
    process = make_process(name)
    steps = process.num_inference_steps
    full = run_window(process, process.init(4, torch.Generator().manual_seed(0)), 0, steps, 7).latents
    generator = torch.Generator().manual_seed(7)
    particles = process.init(4, torch.Generator().manual_seed(0))
    for start, stop in [(0, 2), (2, 5), (5, steps)]:
        for step in process.steps(start, stop):
            process.predict(particles, step, with_x0_hat=False)
            process.transition(particles, step, generator)
    assert torch.equal(particles.latents, full)


@pytest.mark.parametrize("name", [name for name in ALL if DETERMINISTIC_BY_DEFAULT[name]])
def test_take_moves_the_solver_history_with_the_rows(name):
    """Rows taken mid-run (copies, a subset, reordered) continue exactly as those rows of the whole population do:
    the per-particle history of multistep solvers moves with them. Deterministic transitions (stochastic='off'),
    so the continuation depends on the rows alone."""
    scheduler = make(name)
    model = gmm.exact_denoiser(MIXTURE_3D, scheduler)
    process = SchedulerProcess(model, scheduler, shape=SHAPE, num_inference_steps=STEPS, stochastic="off")
    assert not process.is_stochastic()
    particles = run_window(process, process.init(5, torch.Generator().manual_seed(0)), 0, 3, 1)
    rows = torch.tensor([4, 1, 1, 0])
    taken = particles.take(rows)
    assert taken.num_particles == 4 and torch.equal(taken.latents, particles.latents[rows])
    whole = run_window(process, particles, 3, STEPS, 2).latents
    assert torch.equal(run_window(process, taken, 3, STEPS, 2).latents, whole[rows])


def test_cat_joins_particle_sets_with_their_history():
    process = SchedulerProcess(
        gmm.exact_denoiser(MIXTURE_3D, make("DPMSolverMultistepScheduler")),
        make("DPMSolverMultistepScheduler"),
        shape=SHAPE,
        num_inference_steps=STEPS,
        stochastic="off",
    )
    particles = run_window(process, process.init(4, torch.Generator().manual_seed(0)), 0, 3, 1)
    joined = cat_particles([particles.take(torch.tensor([0, 1])), particles.take(torch.tensor([2, 3]))])
    assert joined.num_particles == 4
    whole = run_window(process, particles, 3, STEPS, 2).latents
    assert torch.equal(run_window(process, joined, 3, STEPS, 2).latents, whole)


def test_take_refuses_indices_that_are_not_integers():
    particles = make_process("DDPMScheduler").init(3, torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="integer"):
        particles.take(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="non-empty"):
        particles.take(torch.tensor([], dtype=torch.long))


@pytest.mark.parametrize(
    "scheduler_class, sample_space",
    [(DDPMScheduler, "vp"), (EulerDiscreteScheduler, "sigma"), (FlowMatchEulerDiscreteScheduler, "flow")],
)
def test_the_renoising_kernel_composes_with_the_forward_process(scheduler_class, sample_space):
    """x at full step `start`, drawn from the scheduler's own forward process q(x_start | x0) (`add_noise`,
    `scale_noise`), re-noised to `to`, has the mean and variance of q(x_to | x0). n = 40000 draws per coordinate:
    the tolerances are 5 standard errors (mean: sd / sqrt(n); variance: var sqrt(2 / n), Gaussian)."""
    kwargs = {"clip_sample": False} if scheduler_class is DDPMScheduler else {}
    scheduler = scheduler_class(**kwargs)
    process = SchedulerProcess(lambda x, t: torch.zeros_like(x), scheduler, shape=(1,), num_inference_steps=10)
    n, x0 = 40000, 0.7
    start, to = 7, 2
    live = process.scheduler

    def forward(full_step, noise):
        timestep = process._timesteps[process._boundaries[full_step]]
        clean = torch.full_like(noise, x0)
        if sample_space == "flow":
            return live.scale_noise(clean, timestep.reshape(1), noise)
        if sample_space == "sigma":
            live._step_index, live._begin_index = None, None
            return live.add_noise(clean, noise, timestep.reshape(1))
        return live.add_noise(clean, noise, timestep.reshape(1).long())

    generator = torch.Generator().manual_seed(0)
    x_start = forward(start, torch.randn(n, 1, generator=generator, dtype=torch.float64)).float()
    particles = process.init(n, latents=x_start, start=start)
    process.renoise(particles, start, to, torch.Generator().manual_seed(1))
    reference = forward(to, torch.randn(n, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    expected_mean = float(forward(to, torch.zeros(1, 1, dtype=torch.float64)))
    expected_var = float(forward(to, torch.ones(1, 1, dtype=torch.float64))) - expected_mean
    expected_var = expected_var**2
    renoised = particles.latents.double().flatten()
    assert abs(float(renoised.mean()) - expected_mean) < 5 * math.sqrt(expected_var / n)
    assert abs(float(renoised.var()) - expected_var) < 5 * expected_var * math.sqrt(2 / n)
    assert abs(float(reference.var()) - expected_var) < 5 * expected_var * math.sqrt(2 / n)  # the reference itself
    assert particles.model_output is None and particles.x0_hat is None


def test_renoise_refuses_a_less_noisy_target():
    process = make_process("DDPMScheduler")
    particles = process.init(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="to must be a noisier full step"):
        process.renoise(particles, 2, 4)


def test_windows_are_checked():
    process = make_process("DDPMScheduler")
    with pytest.raises(ValueError, match="stop must be greater than start"):
        list(process.steps(3, 3))
    with pytest.raises(ValueError, match=r"Full steps run 0 \.\. 5"):
        list(process.steps(6))
    with pytest.raises(ValueError, match="latents are needed to start at full step 2"):
        process.init(2, start=2)


def test_order_two_custom_schedules_count_full_steps_not_model_calls():
    """Heun with 5 custom timesteps makes 9 model calls for 5 full steps; progress, reward steps and budgets read
    the 5 (diffusers' `retrieve_timesteps` reports the 9)."""
    process = SchedulerProcess(
        lambda x, t: torch.zeros_like(x),
        HeunDiscreteScheduler(),
        shape=(1,),
        num_inference_steps=None,
        timesteps_kwargs={"timesteps": [999, 700, 400, 200, 50]},
        stochastic="off",
    )
    assert (process.num_inference_steps, process.num_model_calls) == (5, 9)
    steps = list(process.steps())
    assert [step.full_step for step in steps] == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert [step.at_boundary for step in steps] == [True, False] * 4 + [True]
    assert max(step.progress for step in steps) == pytest.approx(0.8)


def test_a_list_of_generators_stays_with_its_rows():
    """Row i draws from generator i, whatever resampling copied into it: FK with per-row generators gives the same
    samples as a run where every row's noise is drawn from its own seed."""
    process = make_process("DDPMScheduler")
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    particles = process.init(3, generators)
    steps = list(process.steps())
    process.predict(particles, steps[0], with_x0_hat=False)
    particles.reindex(torch.tensor([2, 2, 0]))
    process.transition(particles, steps[0], generators)
    # Rows 0 and 1 hold copies of one particle but draw from generators 0 and 1: they separate.
    assert not torch.equal(particles.latents[0], particles.latents[1])
    with pytest.raises(ValueError, match="one per particle row: 2 rows, 3 generators"):
        process.transition(particles.take(torch.tensor([0, 1])), steps[1], generators)


def test_diffsteer_sample_runs_every_method_on_one_process_api():
    """Every method's result comes through the same entry point with a ledger that says what it spent."""
    scheduler = make("DDPMScheduler")
    model = gmm.exact_denoiser(MIXTURE_3D, scheduler)
    for name in diffsteer.methods.METHOD_NAMES:
        budget = 5 if name == "noise-opt" else 3  # one gradient step through the sampler costs 4.2 plain samples
        method = diffsteer.make_method(
            name, budget=budget, num_inference_steps=4, **({"num_neighbors": 1} if name == "zero-order" else {})
        )
        result = diffsteer.sample(
            model,
            scheduler,
            shape=SHAPE,
            method=method,
            reward=lambda x: x[:, 0],
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(0),
        )
        assert result.cost.within_budget, name
        assert result.cost.plain_model_rows == 4 and result.cost.budget == budget
