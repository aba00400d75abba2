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
        (lambda x: torch.zeros(x.shape[0], 1), "one score per sample, shape \\(8,\\)"),
        (lambda x: torch.zeros(3), "one score per sample"),
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
        (lambda: diffsteer.FK(2.5), "num_particles must be a positive integer"),
        (lambda: diffsteer.BestOfN(-1), "num_particles must be a positive integer"),
        (lambda: diffsteer.FK(4, potential="add"), "Unknown potential 'add'; choose one of"),
        (lambda: diffsteer.FK(4, resampling="stratifed"), "Unknown resampling scheme 'stratifed'"),
        (lambda: diffsteer.FK(4, ess_threshold=1.5), "ess_threshold must be in"),
        (lambda: diffsteer.FK(4, interval=0), "interval must be a positive integer"),
        (lambda: diffsteer.FK(4, start=5, stop=5), "stop must be an integer greater than start"),
        (lambda: diffsteer.FK(4, select="top"), "select must be one of"),
    ],
)
def test_bad_method_arguments_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_sample_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"method must be diffsteer\.FK"):
        run("fk")
    with pytest.raises(ValueError, match="reward must be a callable"):
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
