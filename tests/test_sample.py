"""The public entry point `diffsteer.sample`: result contents, determinism, the ledger and input errors."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import diffsteer
from diffsteer.worlds.gmm import GaussianMixture, exact_denoiser, linear_reward


MIXTURE = GaussianMixture.isotropic([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.4)
REWARD = linear_reward([1.0, 0.0])


def run(method, reward=REWARD, seed: int = 0, **kwargs) -> diffsteer.SamplingResult:
    scheduler = kwargs.pop("scheduler", DDPMScheduler(clip_sample=False))
    return diffsteer.sample(
        exact_denoiser(MIXTURE, scheduler),
        scheduler,
        shape=(2,),
        method=method,
        reward=reward,
        num_inference_steps=kwargs.pop("num_inference_steps", 20),
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def test_result_fields_and_ledger():
    result = run(diffsteer.FK(8, lmbda=2.0, interval=5), num_outputs=3)
    assert result.samples.shape == (8, 2)
    assert result.log_weights.shape == (8,)
    assert torch.logsumexp(result.log_weights, 0).item() == pytest.approx(0.0, abs=1e-9)
    assert torch.allclose(result.rewards, REWARD(result.samples))
    assert result.selected.shape == (3, 2)
    assert torch.equal(result.selected, result.samples[result.selected_indices])
    assert result.rewards[result.selected_indices].tolist() == sorted(result.rewards.tolist(), reverse=True)[:3]
    assert isinstance(result.log_normalizer, float)
    assert len(result.trace) == 20
    assert [record.rewarded for record in result.trace] == [index % 5 == 0 for index in range(20)]
    cost = result.cost
    assert (cost.model_calls, cost.model_rows) == (20, 160)
    assert (cost.reward_calls, cost.reward_rows) == (5, 40)  # 4 potential steps and the final reward
    assert cost.resampling_steps == sum(record.resampled for record in result.trace)
    assert cost.wall_time_s > 0 and cost.as_dict()["model_rows"] == 160


def test_resampling_steps_record_their_ancestors_and_reset_weights():
    result = run(diffsteer.FK(16, lmbda=4.0, ess_threshold=None))
    for record in result.trace:
        assert record.resampled and record.ancestors.shape == (16,)
    assert result.origins().shape == (16,)


def test_same_seed_same_output_different_seed_different_output():
    method = diffsteer.FK(16, lmbda=2.0, ess_threshold=0.9)
    first, second, other = run(method, seed=3), run(method, seed=3), run(method, seed=4)
    assert torch.equal(first.samples, second.samples)
    assert torch.equal(first.log_weights, second.log_weights)
    assert not torch.equal(first.samples, other.samples)


def test_sampling_never_touches_the_global_rng():
    state = torch.get_rng_state()
    run(diffsteer.FK(8, lmbda=2.0, ess_threshold=None, select="sample"))
    assert torch.equal(torch.get_rng_state(), state)


def test_best_of_one_is_plain_sampling():
    """BestOfN(1) returns exactly the plain sampler's sample for the same generator."""
    scheduler = DDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    model = exact_denoiser(MIXTURE, scheduler)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, generator=generator)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
    result = run(diffsteer.BestOfN(1), seed=5)
    assert torch.equal(result.selected, x)
    assert result.log_normalizer is None and result.changes == []


def test_select_sample_draws_from_the_final_weights():
    result = run(diffsteer.FK(32, lmbda=3.0, select="sample"), num_outputs=5)
    assert result.selected.shape == (5, 2)
    assert not torch.isneginf(result.log_weights[result.selected_indices]).any()


def test_minus_infinity_rewards_remove_particles():
    def forbid_left(x: torch.Tensor) -> torch.Tensor:
        reward = x[:, 0].double()
        return torch.where(reward < 0, -math.inf, reward)

    result = run(diffsteer.FK(64, lmbda=1.0, interval=4))
    constrained = run(diffsteer.FK(64, lmbda=1.0, interval=4), reward=forbid_left)
    assert (result.samples[:, 0] < 0).any()
    alive = ~torch.isneginf(constrained.log_weights)
    assert alive.any() and (constrained.samples[alive, 0] >= 0).all()
    assert (constrained.selected[:, 0] >= 0).all()


def test_every_particle_forbidden_is_a_clear_error():
    with pytest.raises(ValueError, match="Every particle has zero weight"):
        run(diffsteer.FK(8), reward=lambda x: torch.full((x.shape[0],), -math.inf))


@pytest.mark.parametrize(
    "reward, message",
    [
        (lambda x: torch.full((x.shape[0],), math.nan), "NaN or \\+inf for samples \\[0, 1"),
        (lambda x: torch.full((x.shape[0],), math.inf), "NaN or \\+inf"),
        (lambda x: torch.zeros(x.shape[0], 2), r"one score per sample.*it returned shape \(8, 2\) for 8 samples"),
        (lambda x: torch.zeros(3), r"one score per sample.*it returned shape \(3,\)"),
    ],
)
def test_bad_rewards_are_clear_errors(reward, message):
    with pytest.raises(ValueError, match=message):
        run(diffsteer.FK(8), reward=reward)
    with pytest.raises(ValueError, match=message):
        run(diffsteer.BestOfN(8), reward=reward)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: diffsteer.FK(0), "num_particles must be a positive integer"),
        (lambda: diffsteer.BestOfN(-1), "num_particles must be a positive integer"),
        (lambda: diffsteer.FK(4, potential="add"), "Unknown potential 'add'; choose one of"),
        (lambda: diffsteer.FK(4, resampling="stratifed"), "Unknown resampling scheme 'stratifed'"),
        (lambda: diffsteer.FK(4, ess_threshold=1.5), r"ess_threshold must be a number in \(0, 1\] or None"),
        (lambda: diffsteer.FK(4, interval=0), "interval must be a positive integer"),
        (lambda: diffsteer.FK(4, start=5, stop=5), "stop must be an integer greater than start"),
        (lambda: diffsteer.FK(4, select="top"), "select must be one of"),
    ],
)
def test_bad_method_arguments_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_sample_arguments_are_clear_errors():
    with pytest.raises(TypeError, match=r"method must be a steering method"):
        run("fk")
    with pytest.raises(TypeError, match="reward must be a callable"):
        run(diffsteer.FK(4), reward="clip")
    with pytest.raises(ValueError, match="num_outputs must be an integer in \\[1, num_particles=4\\]"):
        run(diffsteer.FK(4), num_outputs=5)
    with pytest.raises(ValueError, match="stochastic must be one of"):
        run(diffsteer.FK(4), stochastic="yes")
    with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
        run(diffsteer.FK(4), num_inference_steps=0)
    with pytest.raises(ValueError, match="latents must have shape \\(4, 2\\)"):
        run(diffsteer.FK(4), latents=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"step_kwargs \[.etta.\] are not arguments of DDIMScheduler\.step"):
        run(diffsteer.FK(4), scheduler=DDIMScheduler(), step_kwargs={"etta": 1.0})
    with pytest.raises(ValueError, match="model returned shape \\(4, 3\\)"):
        diffsteer.sample(
            lambda x, t: torch.zeros(x.shape[0], 3),
            DDPMScheduler(),
            shape=(2,),
            method=diffsteer.FK(4),
            reward=REWARD,
            num_inference_steps=2,
        )


def test_potential_window_and_lambda_schedule():
    result = run(diffsteer.FK(8, lmbda=lambda progress: 2.0 * progress, start=4, stop=12, interval=4))
    assert [record.index for record in result.trace if record.rewarded] == [4, 8]


def test_select_sample_is_distributed_as_the_weighted_population():
    """Given the final population, each selected sample is a draw from the weights, so the selected samples' mode
    fractions estimate sum_i W_i P(k | x_i) within 5 binomial standard errors of M draws."""
    num_outputs = 4000
    result = run(diffsteer.FK(num_outputs, lmbda=1.5, interval=4, select="sample"), num_outputs=num_outputs)
    weighted = MIXTURE.mode_weights(result.samples, result.log_weights)
    drawn = MIXTURE.mode_weights(result.selected)
    assert torch.all((drawn - weighted).abs() <= 5 * torch.sqrt(weighted * (1 - weighted) / num_outputs))
    assert len(set(result.selected_indices.tolist())) < num_outputs  # draws with replacement


class ForbidThenTempt:
    """Rewards 0 for everyone, except particles 0-3: -inf at the second reward call and 1e3 at the last one.

    A particle that met the constraint must keep zero weight whatever it scores later, or the final reward of 1e3
    makes it the best sample."""

    def __init__(self, num_calls: int) -> None:
        self.calls, self.num_calls = 0, num_calls

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(x.shape[0], dtype=torch.float64)
        if self.calls == 1:
            scores[:4] = -math.inf
        elif self.calls == self.num_calls - 1:
            scores[:4] = 1e3
        self.calls += 1
        return scores


@pytest.mark.parametrize("kind", ["diff", "max", "sum", "immediate"])
def test_minus_infinity_at_an_intermediate_step_is_zero_weight_for_good(kind):
    """N = 16, 10 DDPM steps with a reward at each (11 reward calls with the final one); measured before the fix:
    under `max` particles 0-3 kept log-weight -1.386 and particle 1 (reward 1000) was selected."""
    reward = ForbidThenTempt(num_calls=11)
    result = run(diffsteer.FK(16, potential=kind, lmbda=1.0), reward=reward, num_inference_steps=10)
    assert reward.calls == 11
    assert not any(record.resampled for record in result.trace)  # ESS 12 of 16 stays above 8: rows 0-3 are theirs
    assert torch.isneginf(result.log_weights[:4]).all()
    assert torch.allclose(result.log_weights[4:], torch.full((12,), -math.log(12), dtype=torch.float64))
    assert result.selected_indices.item() >= 4


def test_best_of_n_refuses_a_group_whose_rewards_are_all_minus_infinity():
    with pytest.raises(ValueError, match="Every particle has a final reward of -inf"):
        run(diffsteer.BestOfN(8), reward=lambda x: torch.full((x.shape[0],), -math.inf))
    # One finite reward is enough to select it.
    result = run(diffsteer.BestOfN(8), reward=lambda x: torch.where(torch.arange(x.shape[0]) == 5, 1.0, -math.inf))
    assert result.selected_indices.tolist() == [5]


@pytest.mark.parametrize("magnitude", [1e14, 1e15, 1e16])
@pytest.mark.parametrize("ess_threshold", [0.5, None])
def test_huge_tilts_keep_normalised_weights_and_ess_exact(magnitude, ess_threshold):
    """r = magnitude + x_0: the log-weights are around 1e16, where float64's spacing is 2 and log N (2.8) would be
    lost to rounding without centring (measured before: weights summing to N, ESS 1 / N)."""
    num_particles = 16

    def reward(x: torch.Tensor) -> torch.Tensor:
        return magnitude + x[:, 0].double()

    result = run(diffsteer.FK(num_particles, lmbda=1.0, ess_threshold=ess_threshold), reward=reward)
    assert abs(float(result.log_weights.exp().sum()) - 1.0) <= 1e-12
    assert 1.0 <= result.ess <= num_particles
    assert all(1.0 - 1e-12 <= value <= num_particles + 1e-9 for r in result.trace for value in r.group_ess)
    # log Z = magnitude + log E[exp(x_0)], and x_0 is O(1) here.
    assert abs(result.log_normalizer - magnitude) < 10.0


def nan_model_from(call: int, scheduler):
    """The exact denoiser, returning NaN for particle 0 from model call `call` on."""
    exact = exact_denoiser(MIXTURE, scheduler)
    calls = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = exact(x, t)
        if len(calls) >= call:
            output[0] = math.nan
        calls.append(t)
        return output

    return model


@pytest.mark.parametrize("method", [diffsteer.FK(8, interval=2), diffsteer.BestOfN(8)])
def test_nan_from_the_model_is_reported_as_the_models(method):
    """FK sees NaN in x0-hat at a reward step; best-of-N only in the final samples: both name the model's step."""
    scheduler = DDPMScheduler(clip_sample=False)
    with pytest.raises(ValueError, match=r"model \(denoiser\) produced NaN or inf at step 3 .*not the reward's fault"):
        diffsteer.sample(
            nan_model_from(3, scheduler),
            scheduler,
            shape=(2,),
            method=method,
            reward=REWARD,
            num_inference_steps=10,
            generator=torch.Generator().manual_seed(0),
        )


def test_nan_tolerant_reward_still_gets_the_models_nan_reported():
    """A reward that maps NaN to a number cannot hide non-finite final samples."""
    scheduler = DDPMScheduler(clip_sample=False)
    with pytest.raises(ValueError, match=r"final samples.*model \(denoiser\) produced NaN or inf at step 6"):
        diffsteer.sample(
            nan_model_from(6, scheduler),
            scheduler,
            shape=(2,),
            method=diffsteer.FK(8, interval=2),
            reward=lambda x: torch.nan_to_num(REWARD(x)),
            num_inference_steps=10,
            generator=torch.Generator().manual_seed(0),
        )


def test_nan_from_the_reward_on_finite_inputs_is_the_rewards():
    def nan_reward(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), math.nan)

    with pytest.raises(ValueError, match=r"The reward 'nan_reward' returned NaN or \+inf for samples \[0, 1"):
        run(diffsteer.FK(8), reward=nan_reward)


def test_non_finite_initial_latents_are_named():
    latents = torch.zeros(4, 2)
    latents[2] = math.inf
    with pytest.raises(ValueError, match="initial latents x_T were already NaN or inf"):
        run(diffsteer.FK(4), latents=latents, num_inference_steps=4)


def test_ess_is_read_once_per_reward_step_and_carried_between(monkeypatch):
    """All groups' ESS in one vectorised call (one host sync) at reward steps only; the other steps' records carry
    the last value, or N after resampling."""
    import diffsteer.loop as loop

    calls = []
    real = loop.ess_rows
    monkeypatch.setattr(loop, "ess_rows", lambda log_weights: calls.append(log_weights.shape) or real(log_weights))
    result = run(diffsteer.FK(16, lmbda=3.0, interval=4, ess_threshold=0.9))
    assert calls == [(1, 16)] * 5  # steps 0, 4, 8, 12, 16
    previous = 16.0
    for record in result.trace:
        if not record.rewarded:
            assert record.group_ess == (previous,)
        previous = 16.0 if record.resampled else record.ess
    assert any(record.resampled for record in result.trace) and any(
        not record.resampled and record.rewarded and record.ess < 16 for record in result.trace
    )


def test_results_are_ordinary_tensors_and_rewards_may_use_autograd():
    """The loop runs under no_grad, not inference_mode: results can be changed in place, and a reward that needs
    gradients inside (torch.enable_grad) gets them."""

    def gradient_reward(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().double().requires_grad_(True)
            (grad,) = torch.autograd.grad(REWARD(x).sum(), x)
        return (grad * x.detach()).sum(1)  # = a.x, computed through autograd

    result = run(diffsteer.FK(4, interval=5), reward=gradient_reward)
    assert torch.allclose(result.rewards, REWARD(result.samples))
    samples = result.samples.clone()
    result.samples += 1
    result.log_weights.mul_(2)
    assert torch.equal(result.samples, samples + 1)


@pytest.mark.parametrize(
    "method, message",
    [
        (diffsteer.BestOfN(4), "^Every particle of group 1 has a final reward of -inf"),
        (diffsteer.FK(4), "^Group 1: Every particle has zero weight"),
    ],
)
def test_a_group_left_without_candidates_is_named(method, message):
    from diffsteer.loop import run_steering
    from diffsteer.outputs import CostLedger
    from diffsteer.processes import SchedulerProcess

    def forbid_group_1(x: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.arange(x.shape[0]) >= 4, -math.inf, REWARD(x))

    scheduler = DDPMScheduler(clip_sample=False)
    process = SchedulerProcess(exact_denoiser(MIXTURE, scheduler), scheduler, shape=(2,), num_inference_steps=3)
    with pytest.raises(ValueError, match=message):
        run_steering(
            process, method, forbid_group_1, CostLedger(), num_groups=3, generator=torch.Generator().manual_seed(0)
        )
