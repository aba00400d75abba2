"""StableDiffusionSteeringPipeline on tiny seeded components, offline, with real prompt strings."""

import math
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, StableDiffusionPipeline

import diffsteer
from diffsteer.pipelines import StableDiffusionSteeringPipeline, SteeringPipelineOutput

from .tiny.components import sd_components


PROMPTS = ["a photo of a red cat", "two blue squares"]
CALL = {"num_inference_steps": 4, "height": 32, "width": 32, "output_type": "pt"}
PIPELINE_FILE = Path(diffsteer.pipelines.__file__).parent / "pipeline_stable_diffusion_steering.py"


def redness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


@pytest.fixture(scope="module")
def parent() -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(**sd_components(), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(parent) -> StableDiffusionSteeringPipeline:
    steering = StableDiffusionSteeringPipeline.from_pipe(parent)
    steering.set_progress_bar_config(disable=True)
    return steering


def test_from_pipe_shares_the_components(parent, pipe):
    assert type(pipe) is StableDiffusionSteeringPipeline and pipe.unet is parent.unet and pipe.vae is parent.vae


def test_no_method_and_best_of_one_reproduce_the_parent_bit_for_bit(parent, pipe):
    expected = parent(PROMPTS, generator=torch.Generator().manual_seed(0), **CALL).images
    plain = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **CALL)
    assert not isinstance(plain, SteeringPipelineOutput) and torch.equal(plain.images, expected)
    best_of_one = pipe(
        PROMPTS, generator=torch.Generator().manual_seed(0), reward=redness, method=diffsteer.BestOfN(1), **CALL
    )
    assert torch.equal(best_of_one.images, expected)
    assert best_of_one.changes == []


def test_best_of_n_particles_are_the_parents_images_per_prompt(parent, pipe):
    expected = parent(PROMPTS, generator=torch.Generator().manual_seed(1), num_images_per_prompt=3, **CALL).images
    out = pipe(
        PROMPTS, generator=torch.Generator().manual_seed(1), reward=redness, method=diffsteer.BestOfN(3), **CALL
    )
    assert torch.equal(out.particles, expected)
    best = out.rewards.argmax(1)
    assert torch.equal(out.images, expected[torch.arange(2) * 3 + best])


def test_fk_raises_the_reward_over_plain_sampling(parent, pipe):
    """Across 6 seeds and 2 prompts, FK(16) with a redness reward beats plain samples by more than 3 standard
    errors of the paired difference (measured: 5.1; the tiny random UNet's images vary little)."""
    differences = []
    for seed in range(6):
        plain = parent(PROMPTS, generator=torch.Generator().manual_seed(seed), **CALL).images
        steered = pipe(
            PROMPTS,
            generator=torch.Generator().manual_seed(seed),
            reward=redness,
            method=diffsteer.FK(16, lmbda=500.0),
            **CALL,
        )
        differences.append(redness(steered.images, PROMPTS) - redness(plain, PROMPTS))
    differences = torch.cat(differences).double()
    standard_error = differences.std() / math.sqrt(differences.numel())
    assert differences.mean() > 3 * standard_error, (differences.mean(), standard_error)


def test_resampling_copies_whole_trajectories_and_never_crosses_prompts(parent, pipe):
    """Deterministic multistep scheduler, multinomial resampling at every step: every output equals, bit for bit,
    the plain output of its ancestor's initial latent under its own prompt; ancestors stay within their prompt."""
    num_particles = 6
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(parent.scheduler.config)
    try:
        x_T = torch.randn(2 * num_particles, 4, 16, 16, generator=torch.Generator().manual_seed(3))
        steered = pipe(
            PROMPTS,
            latents=x_T,
            reward=lambda images, prompts: 300 * torch.sin(20 * images).mean((1, 2, 3)),
            method=diffsteer.FK(num_particles, lmbda=1.0, resampling="multinomial", ess_threshold=None),
            stochastic="off",
            generator=torch.Generator().manual_seed(4),
            **CALL,
        )
        origins = steered.origins()
        assert torch.equal(origins // num_particles, torch.arange(2 * num_particles) // num_particles)
        assert len(set(origins.tolist())) < len(origins)  # copies occurred
        plain = pipe(PROMPTS, latents=x_T[origins], num_images_per_prompt=num_particles, **CALL).images
        assert torch.equal(steered.particles, plain)
    finally:
        pipe.scheduler = parent.scheduler


def test_many_particles_in_small_decode_chunks_and_the_ledger(pipe):
    out = pipe(
        PROMPTS[:1],
        generator=torch.Generator().manual_seed(0),
        reward=redness,
        method=diffsteer.FK(64, lmbda=10.0, interval=2),
        decode_batch_size=4,
        num_images_per_prompt=2,
        **CALL,
    )
    assert out.images.shape == (2, 3, 32, 32) and out.particles.shape == (64, 3, 32, 32)
    cost = out.cost
    assert cost.model_calls == 4 and cost.model_rows == 4 * 2 * 64  # classifier-free guidance doubles the rows
    assert cost.reward_calls == 3 and cost.reward_rows == 3 * 64  # potential steps 0 and 2, then the final one
    assert cost.decode_calls == 3 * 16 + 1 and cost.decode_rows == 3 * 64 + 2
    assert "eta was set to 1.0" in out.changes[0]


def test_save_load_and_custom_pipeline(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = StableDiffusionSteeringPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    common = dict(generator=torch.Generator().manual_seed(2), reward=redness, method=diffsteer.FK(3), **CALL)
    reference = pipe(PROMPTS, **common).images
    common["generator"] = torch.Generator().manual_seed(2)
    assert torch.equal(loaded(PROMPTS, **common).images, reference)

    custom = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(PIPELINE_FILE), trust_remote_code=True)
    assert type(custom).__name__ == "StableDiffusionSteeringPipeline"
    custom.set_progress_bar_config(disable=True)
    common["generator"] = torch.Generator().manual_seed(2)
    assert torch.equal(custom(PROMPTS, **common).images, reference)


def test_callback_on_step_end_sees_and_edits_the_particles(pipe):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, tensors["latents"].shape, tensors["prompt_embeds"].shape[0]))
        return {"latents": tensors["latents"] * 0}

    out = pipe(
        PROMPTS[:1],
        generator=torch.Generator().manual_seed(0),
        reward=redness,
        method=diffsteer.FK(4),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
        output_type="latent",
        num_inference_steps=3,
        height=32,
        width=32,
    )
    assert [entry[0] for entry in seen] == [0, 1, 2] and seen[0][1:] == ((4, 4, 16, 16), 4)
    assert torch.count_nonzero(out.particles) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reward": "imagereward", "method": diffsteer.BestOfN(2)}, "Unknown reward 'imagereward'"),
        ({"reward": redness, "method": "fk"}, "method must be diffsteer.FK"),
        (
            {"reward": redness, "method": diffsteer.FK(2), "decode_batch_size": 0},
            "decode_batch_size must be a positive",
        ),
        ({"reward": redness, "method": diffsteer.FK(2), "stochastic": "require"}, "deterministic transition"),
        (
            {"reward": redness, "method": diffsteer.FK(2), "num_images_per_prompt": 3},
            "exceeds the method's num_particles",
        ),
        ({"reward": lambda images, prompts: torch.zeros(1), "method": diffsteer.FK(2)}, "one score per image"),
        ({"reward": lambda images, prompts: torch.full((len(prompts),), math.nan), "method": diffsteer.FK(2)}, "NaN"),
        ({"reward": redness}, "reward= is only used with a method="),
    ],
)
def test_bad_input_is_a_clear_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **CALL, **kwargs)


def test_num_particles_must_be_positive():
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        diffsteer.FK(0)
