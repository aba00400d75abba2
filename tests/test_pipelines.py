"""Every steering pipeline family on tiny seeded components, offline, with real prompt strings."""

import math

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderTiny,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    FluxPipeline,
    UNet2DModel,
)
from scipy.stats import rankdata

import diffsteer
from diffsteer.pipelines import (
    FluxSteeringPipeline,
    SteeringPipelineOutput,
)

from .tiny.families import FAMILIES, Family


PROMPTS = ["a photo of a red cat", "two blue squares"]


def redness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def parent(family):
    cls = family.parent
    expected = set(cls._get_signature_keys(cls)[0]) | set(cls._get_signature_keys(cls)[1])
    pipe = cls(**{name: value for name, value in family.components().items() if name in expected})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(family, parent):
    steering = family.steering.from_pipe(parent)
    steering.set_progress_bar_config(disable=True)
    return steering


@pytest.fixture(scope="module")
def CALL(family) -> dict:
    return family.call


def test_from_pipe_shares_the_components(family, parent, pipe):
    assert type(pipe) is family.steering
    assert all(getattr(pipe, name) is component for name, component in parent.components.items())


def test_no_method_and_best_of_one_reproduce_the_parent_bit_for_bit(parent, pipe, CALL):
    expected = parent(PROMPTS, generator=torch.Generator().manual_seed(0), **CALL).images
    plain = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **CALL)
    assert not isinstance(plain, SteeringPipelineOutput) and torch.equal(plain.images, expected)
    best_of_one = pipe(
        PROMPTS, generator=torch.Generator().manual_seed(0), reward=redness, method=diffsteer.BestOfN(1), **CALL
    )
    assert torch.equal(best_of_one.images, expected)
    assert best_of_one.changes == []


def test_best_of_n_particles_are_the_parents_images_per_prompt(parent, pipe, CALL):
    expected = parent(PROMPTS, generator=torch.Generator().manual_seed(1), num_images_per_prompt=3, **CALL).images
    out = pipe(
        PROMPTS, generator=torch.Generator().manual_seed(1), reward=redness, method=diffsteer.BestOfN(3), **CALL
    )
    assert torch.equal(out.particles, expected)
    best = out.rewards.argmax(1)
    assert torch.equal(out.images, expected[torch.arange(2) * 3 + best])


def test_fk_raises_the_reward_over_plain_sampling(parent, pipe, CALL):
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


def test_resampling_copies_whole_trajectories_and_never_crosses_prompts(family, parent, pipe, CALL):
    """Deterministic multistep scheduler, multinomial resampling at every step: every output equals, bit for bit,
    the plain output of its ancestor's initial latent under its own prompt; ancestors stay within their prompt."""
    num_particles = 6
    pipe.scheduler = family.deterministic_scheduler(parent.scheduler.config)
    try:
        x_T = torch.randn(2 * num_particles, *family.latent_shape, generator=torch.Generator().manual_seed(3))
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


def test_many_particles_in_small_decode_chunks_and_the_ledger(family, pipe, CALL):
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
    assert cost.model_calls == 4 and cost.model_rows == 4 * family.rows_per_particle * 64
    assert cost.reward_calls == 3 and cost.reward_rows == 3 * 64  # potential steps 0 and 2, then the final one
    # The final reward's decode (full VAE) gives the images too: no second decode of the selected particles.
    assert cost.decode_calls == 3 * 16 and cost.decode_rows == 3 * 64
    assert "fresh noise" in out.changes[0]  # the deterministic default scheduler was made stochastic


def test_a_reward_by_name_and_a_rank_ensemble_sees_whole_prompt_groups(family, pipe, CALL):
    """A registry name loads the reward; a batch-relative reward gets each prompt's particles in one call even when
    they are decoded in smaller chunks, and scores them as the rank ensemble defines (mean rank within the group)."""
    named = pipe(
        PROMPTS, generator=torch.Generator().manual_seed(3), reward="brightness", method=diffsteer.BestOfN(3), **CALL
    )
    brightness = diffsteer.rewards.Brightness()
    torch.testing.assert_close(named.rewards.float(), brightness(named.particles).view(2, 3), atol=1e-5, rtol=0)

    calls = []
    recorder = diffsteer.rewards.from_function(
        lambda images, prompts: calls.append(list(prompts)) or images[:, 0].mean((1, 2)), differentiable=False
    )
    ensemble = diffsteer.rewards.RankEnsemble([recorder, brightness])
    out = pipe(
        PROMPTS,
        generator=torch.Generator().manual_seed(3),
        reward=ensemble,
        method=diffsteer.BestOfN(3),
        decode_batch_size=2,
        **CALL,
    )
    assert calls == [[PROMPTS[0]] * 3, [PROMPTS[1]] * 3]
    for group, images in zip(out.rewards, out.particles.view(2, 3, *out.particles.shape[1:]), strict=True):
        ranks = (rankdata(images[:, 0].mean((1, 2)).numpy()) + rankdata(brightness(images).numpy())) / 2
        np.testing.assert_allclose(group.numpy(), ranks, atol=1e-6)


def test_save_load_and_custom_pipeline(family, pipe, CALL, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = family.steering.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    common = dict(generator=torch.Generator().manual_seed(2), reward=redness, method=diffsteer.FK(3), **CALL)
    reference = pipe(PROMPTS, **common).images
    common["generator"] = torch.Generator().manual_seed(2)
    assert torch.equal(loaded(PROMPTS, **common).images, reference)

    custom = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(family.file), trust_remote_code=True)
    assert type(custom).__name__ == family.steering.__name__
    custom.set_progress_bar_config(disable=True)
    common["generator"] = torch.Generator().manual_seed(2)
    assert torch.equal(custom(PROMPTS, **common).images, reference)


def test_callback_on_step_end_sees_and_edits_the_particles(family, pipe, CALL):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, tensors["latents"].shape, tensors[family.conditioning_name].shape[0]))
        return {"latents": tensors["latents"] * 0}

    out = pipe(
        PROMPTS[:1],
        generator=torch.Generator().manual_seed(0),
        reward=redness,
        method=diffsteer.FK(4),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", family.conditioning_name],
        **{**CALL, "output_type": "latent", "num_inference_steps": 3},
    )
    # Conditioning is laid out as the parent lays it out: [negative; positive] rows under classifier-free guidance.
    rows = family.rows_per_particle * 4
    assert [entry[0] for entry in seen] == [0, 1, 2] and seen[0][1:] == ((4, *family.latent_shape), rows)
    assert torch.count_nonzero(out.particles) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reward": "imagereward", "method": diffsteer.BestOfN(2)}, "Unknown reward 'imagereward'"),
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
        (
            {"reward": lambda images, prompts: torch.zeros(len(prompts), 2), "method": diffsteer.FK(2)},
            r"it returned shape \(4, 2\) for 4 images",
        ),
        (
            {"reward": redness, "method": diffsteer.FK(2), "guidance_scale": math.nan},
            "guidance_scale must be a finite",
        ),
        ({"reward": redness, "method": diffsteer.FK(2), "num_images_per_prompt": 0}, "must be a positive integer"),
    ],
)
def test_bad_input_is_a_clear_error(pipe, CALL, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **CALL, **kwargs)


def test_a_wrong_type_is_a_type_error(pipe, CALL):
    with pytest.raises(TypeError, match=r"method must be a steering method"):
        pipe(PROMPTS, generator=torch.Generator().manual_seed(0), reward=redness, method="fk", **CALL)


def test_num_particles_must_be_positive():
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        diffsteer.FK(0)


def test_flux_true_cfg_matches_the_parent_and_counts_both_passes():
    family = FAMILIES["flux"]
    components = family.components()
    parent = FluxPipeline(**{k: v for k, v in components.items() if k not in ("image_encoder", "feature_extractor")})
    parent.set_progress_bar_config(disable=True)
    pipe = FluxSteeringPipeline.from_pipe(parent)
    pipe.set_progress_bar_config(disable=True)

    seen = []

    def rows(pipeline, step, timestep, tensors):
        seen.append(tensors["prompt_embeds"].shape[0])
        return tensors

    def both(negative_prompt):
        call = {
            **family.call,
            "negative_prompt": negative_prompt,
            "true_cfg_scale": 2.0,
            "callback_on_step_end": rows,
            "callback_on_step_end_tensor_inputs": ["latents", "prompt_embeds"],
        }
        expected = parent(PROMPTS, generator=torch.Generator().manual_seed(0), **call).images
        out = pipe(
            PROMPTS, generator=torch.Generator().manual_seed(0), reward=redness, method=diffsteer.BestOfN(1), **call
        )
        return expected, out

    expected, out = both(["a dog", "a dog"])
    assert torch.equal(out.images, expected)
    # Flux's callbacks see the positive embeddings alone under true CFG (it runs two passes), in the parent and here.
    assert set(seen) == {2}
    assert out.cost.model_rows == 2 * 2 * family.call["num_inference_steps"]  # both passes, 2 prompts, every step
    # One negative prompt for several prompts: the parent broadcasts it inside attention, the particles carry a
    # row each, so the results agree to float rounding rather than bit for bit.
    expected, out = both("a dog")
    torch.testing.assert_close(out.images, expected)


def test_auto_steering_pipeline_picks_the_family(family, parent, tmp_path):
    steering = diffsteer.pipelines.AutoSteeringPipeline.from_pipe(parent)
    assert type(steering) is family.steering and steering.vae is parent.vae
    parent.save_pretrained(tmp_path)
    assert type(diffsteer.pipelines.AutoSteeringPipeline.from_pretrained(tmp_path)) is family.steering


def test_auto_steering_pipeline_refuses_other_families():
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(4, 8),
        norm_num_groups=2,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    with pytest.raises(ValueError, match="No steering pipeline for DDPMPipeline"):
        diffsteer.pipelines.AutoSteeringPipeline.from_pipe(DDPMPipeline(unet, DDPMScheduler()))


def test_model_cpu_offload_keeps_working(family, CALL):
    """Offload hooks (here to the CPU, the only device these machines have) change nothing in the output."""

    def build():
        cls = family.steering
        expected = set(cls._get_signature_keys(cls)[0]) | set(cls._get_signature_keys(cls)[1])
        pipe = cls(**{name: value for name, value in family.components().items() if name in expected})
        pipe.set_progress_bar_config(disable=True)
        return pipe

    common = dict(reward=redness, method=diffsteer.FK(3, lmbda=20.0), **CALL)
    reference = build()(PROMPTS, generator=torch.Generator().manual_seed(6), **common).images
    offloaded = build()
    offloaded.enable_model_cpu_offload(device="cpu")
    assert torch.equal(offloaded(PROMPTS, generator=torch.Generator().manual_seed(6), **common).images, reference)


def test_a_cheaper_decoder_for_intermediate_rewards():
    family = FAMILIES["sd"]
    pipe = family.steering(**family.components(), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    common = dict(reward=redness, method=diffsteer.FK(4, lmbda=20.0, interval=2), decode_batch_size=2, **family.call)
    reference = pipe(PROMPTS, generator=torch.Generator().manual_seed(8), **common)
    same = pipe(PROMPTS, generator=torch.Generator().manual_seed(8), reward_decoder=pipe.vae, **common)
    assert torch.equal(same.images, reference.images)  # the plumbing alone changes nothing

    torch.manual_seed(0)
    tiny = AutoencoderTiny(
        encoder_block_out_channels=(4, 4),
        decoder_block_out_channels=(4, 4),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    ).eval()
    calls = {"tiny": 0, "full": 0}

    def counting(name, decode):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return decode(*args, **kwargs)

        return wrapped

    tiny.decode = counting("tiny", tiny.decode)
    pipe.vae.decode = counting("full", pipe.vae.decode)
    try:
        out = pipe(PROMPTS, generator=torch.Generator().manual_seed(8), reward_decoder=tiny, **common)
    finally:
        del pipe.vae.decode
    # 2 potential steps x 4 chunks of 2 particles on the tiny decoder; the final reward (4 chunks, whose decoded
    # images are also the output) on the full VAE.
    assert calls == {"tiny": 8, "full": 4}
    assert out.images.shape == reference.images.shape and out.cost.decode_rows == 2 * 8 + 8


def test_unsupported_parent_arguments_are_refused_with_a_method(family, pipe, CALL):
    with pytest.raises(ValueError, match=r"IP-Adapter inputs are \(ip_adapter_image_embeds\) not supported"):
        pipe(PROMPTS, ip_adapter_image_embeds=[torch.zeros(1)], reward=redness, method=diffsteer.FK(2), **CALL)


@pytest.mark.parametrize("output_type", ["pt", "np", "pil"])
def test_images_are_the_selected_particles_decoded_once(output_type):
    """The images are rows of the particles' decode, in every output type, pixel for pixel."""
    family = FAMILIES["sd"]
    pipe = family.steering(**family.components(), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        PROMPTS,
        generator=torch.Generator().manual_seed(5),
        reward=redness,
        method=diffsteer.FK(3, lmbda=20.0),
        num_images_per_prompt=2,
        **{**family.call, "output_type": output_type},
    )
    assert len(out.images) == 4 and len(out.particles) == 6
    for image, index in zip(out.images, out.selected_indices.flatten().tolist(), strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(out.particles[index]))


def test_rewards_of_shape_n_by_1_are_accepted_and_bad_rows_are_named_as_the_caller_counts_them():
    family = FAMILIES["sd"]
    pipe = family.steering(**family.components(), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    common = dict(method=diffsteer.BestOfN(2), decode_batch_size=1, **family.call)
    flat = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), reward=redness, **common)
    column = pipe(
        PROMPTS, generator=torch.Generator().manual_seed(0), reward=lambda i, p: redness(i, p)[:, None], **common
    )
    assert torch.equal(flat.rewards, column.rewards) and torch.equal(flat.images, column.images)

    calls = []

    def nan_at_the_fourth_image(images, prompts):
        calls.append(len(prompts))
        return torch.full((len(prompts),), math.nan if len(calls) == 4 else 0.0)

    with pytest.raises(ValueError, match=r"reward 'nan_at_the_fourth_image' returned NaN or \+inf for images \[3\]"):
        pipe(PROMPTS, generator=torch.Generator().manual_seed(0), reward=nan_at_the_fourth_image, **common)


def test_nan_from_the_decoder_or_the_latents_is_not_blamed_on_the_reward(monkeypatch):
    family = FAMILIES["sd"]
    pipe = family.steering(**family.components(), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    common = dict(generator=torch.Generator().manual_seed(0), reward=redness, method=diffsteer.FK(2), **family.call)

    def nan_latents(pipeline, step, timestep, tensors):
        return {"latents": torch.full_like(tensors["latents"], math.nan)} if step == 1 else tensors

    with pytest.raises(ValueError, match="not the reward's fault"):
        pipe(PROMPTS, callback_on_step_end=nan_latents, **common)
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: (decode(*a, **k)[0] * math.nan,))
    with pytest.raises(ValueError, match="The decoder produced NaN or infinite images"):
        pipe(PROMPTS, **common)


def test_a_steered_call_refuses_an_empty_prompt_list_and_deprecated_callbacks():
    family = FAMILIES["sd"]
    pipe = family.steering(**family.components(), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    common = dict(reward=redness, method=diffsteer.FK(2), **family.call)
    with pytest.raises(ValueError, match="prompt is an empty list"):
        pipe([], **common)
    with pytest.raises(ValueError, match=r"Arguments \['callback'\] are not supported with a steering method"):
        pipe(PROMPTS, callback=lambda *args: None, **common)
