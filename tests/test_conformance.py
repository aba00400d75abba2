"""Drop-in conformance: what diffusers' own pipeline test mixins check of a parent pipeline, checked of every
steering family, with `method=None` and with `BestOfN(1)` (which must then give the parent's output bit for bit).

Written in the spirit of diffusers' `PipelineTesterMixin` (signature, `encode_prompt` in isolation, callbacks and
their tensor inputs, CFG, `num_images_per_prompt`, save/load, custom timesteps, interrupt), on the tiny seeded
components of `tests/tiny`, offline.
"""

import ast
import inspect
import textwrap
import warnings

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

import diffsteer
from diffsteer.pipelines import SteeringPipelineOutput

from .tiny.families import FAMILIES, Family


PROMPT = "a photo of a red cat"
STEERING_PARAMETERS = ("reward", "method", "decode_batch_size", "stochastic", "reward_decoder")
MODES = {"plain": {}, "best-of-1": {"method": diffsteer.BestOfN(1)}}


def redness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(params=sorted(MODES))
def mode(request) -> dict:
    """The steering arguments of a run: none (the parent's path) or best-of-1 (the steering engine's path)."""
    return {**MODES[request.param], "reward": redness} if MODES[request.param] else {}


def build(cls, components: dict) -> object:
    expected = set(cls._get_signature_keys(cls)[0]) | set(cls._get_signature_keys(cls)[1])
    pipe = cls(**{name: value for name, value in components.items() if name in expected})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def parent(family):
    return build(family.parent, family.components())


@pytest.fixture(scope="module")
def pipe(family, parent):
    steering = family.steering.from_pipe(parent)
    steering.set_progress_bar_config(disable=True)
    return steering


def inputs(family: Family, seed: int = 0, **overrides) -> dict:
    return {"prompt": PROMPT, "generator": torch.Generator().manual_seed(seed), **family.call, **overrides}


def first(output):
    """The images of a dict or tuple output, as diffusers' tests read them (`pipe(**inputs)[0]`)."""
    return output[0]


def test_signature_is_the_parents_plus_the_steering_arguments(family):
    parent = inspect.signature(family.parent.__call__).parameters
    steering = inspect.signature(family.steering.__call__).parameters
    for name, parameter in parent.items():
        assert name in steering, name
        assert steering[name].default == parameter.default, name
        assert steering[name].kind == parameter.kind, name
    added = [name for name in steering if name not in parent]
    assert added == list(STEERING_PARAMETERS)
    assert all(steering[name].kind is inspect.Parameter.KEYWORD_ONLY for name in added)


def test_a_bound_call_binds_like_the_parents(family, parent, pipe):
    """The bound method's signature drops `self` as the parent's does, so positional arguments bind alike."""
    bound = inspect.signature(pipe.__call__).bind(PROMPT, 32, 32, 3)
    assert bound.arguments == inspect.signature(parent.__call__).bind(PROMPT, 32, 32, 3).arguments


def encode_prompt_return_names(cls: type) -> list[str]:
    """The names `encode_prompt` returns, read from its source (as diffusers' `ReturnNameVisitor` does)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.encode_prompt)))
    value = [node for node in ast.walk(tree) if isinstance(node, ast.Return)][-1].value
    return [element.id for element in (value.elts if isinstance(value, ast.Tuple) else [value])]


def test_encode_prompt_works_in_isolation(family, mode):
    """Embeddings from a pipeline holding only the text encoders, fed to a pipeline without them, give the full
    pipeline's output; `encode_prompt`'s required arguments come from `__call__`'s defaults, as in diffusers."""
    components = family.components()
    text_only = {name: value if "text" in name or "tokenizer" in name else None for name, value in components.items()}
    encoder_pipe = build(family.steering, text_only)
    call_parameters = inspect.signature(encoder_pipe.__call__).parameters
    call = inputs(family)
    encode_parameters = inspect.signature(encoder_pipe.encode_prompt).parameters
    encode_inputs = {name: call.pop(name) for name in list(call) if name in encode_parameters}
    extra = {"device": "cpu", "do_classifier_free_guidance": call_parameters["guidance_scale"].default > 1}
    for name, parameter in encode_parameters.items():
        if name in encode_inputs or parameter.default is not inspect.Parameter.empty or name == "kwargs":
            continue
        call_default = call_parameters[name].default if name in call_parameters else inspect.Parameter.empty
        encode_inputs[name] = call_default if call_default is not inspect.Parameter.empty else extra[name]
    with torch.no_grad():
        encoded = encoder_pipe.encode_prompt(**encode_inputs)
    embeddings = dict(zip(encode_prompt_return_names(family.steering), encoded, strict=True))
    embeddings = {name: value for name, value in embeddings.items() if name in call_parameters}
    assert "prompt_embeds" in embeddings

    no_text = {name: None if "text" in name or "tokenizer" in name else value for name, value in components.items()}
    isolated = first(build(family.steering, no_text)(**call, **embeddings, **mode))
    full = first(build(family.steering, components)(**inputs(family), **mode))
    torch.testing.assert_close(isolated, full, atol=1e-4, rtol=1e-4)


def test_callback_tensor_inputs(family, pipe, mode):
    """A subset, then every allowed tensor, reaches the callback; zeroing the latents at the last step zeroes the
    output."""
    seen: list[set[str]] = []

    def subset(pipeline, step, timestep, tensors):
        seen.append(set(tensors))
        assert set(tensors) <= set(pipeline._callback_tensor_inputs)
        return tensors

    first(pipe(**inputs(family, output_type="latent"), callback_on_step_end=subset, **mode))
    assert seen and all(names == {"latents"} for names in seen)
    seen.clear()
    every = pipe._callback_tensor_inputs
    first(pipe(**inputs(family), callback_on_step_end=subset, callback_on_step_end_tensor_inputs=every, **mode))
    assert all(names == set(every) for names in seen)

    def zero_at_the_end(pipeline, step, timestep, tensors):
        if step == pipeline.num_timesteps - 1:
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    out = first(
        pipe(
            **inputs(family, output_type="latent"),
            callback_on_step_end=zero_at_the_end,
            callback_on_step_end_tensor_inputs=every,
            **mode,
        )
    )
    assert out.abs().sum() == 0


def test_callback_cfg_reads_the_guidance_at_every_step(family, parent, pipe, mode):
    """A callback that raises `_guidance_scale` by 1 per step: the pipeline ends at the start value plus
    `num_timesteps`, and the steered run denoises exactly as the parent does."""

    def increase(pipeline, step, timestep, tensors):
        pipeline._guidance_scale += 1.0
        return tensors

    common = dict(guidance_scale=2.0, callback_on_step_end=increase)
    out = first(pipe(**inputs(family), **common, **mode))
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps
    assert torch.equal(out, first(parent(**inputs(family), **common)))


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3"])
def test_dynamic_cfg_recipe_matches_the_parent(name, mode):
    """diffusers' dynamic-CFG callback (keep the positive half of each concatenated tensor, set guidance to 0) turns
    guidance off mid-run in the steered pipeline exactly as in the parent."""
    family = FAMILIES[name]
    parent = build(family.parent, family.components())
    pipe = family.steering.from_pipe(parent)
    pipe.set_progress_bar_config(disable=True)

    def dynamic_cfg(pipeline, step, timestep, tensors):
        if step == 1:
            for tensor in family.concatenated:
                tensors[tensor] = tensors[tensor].chunk(2)[-1]
            pipeline._guidance_scale = 0.0
        return tensors

    common = dict(callback_on_step_end=dynamic_cfg, callback_on_step_end_tensor_inputs=list(family.concatenated))
    expected = first(parent(**inputs(family), **common))
    out = pipe(**inputs(family), **common, **mode)
    assert torch.equal(first(out), expected)
    if mode:
        steps = family.call["num_inference_steps"]
        assert out.cost.model_rows == 2 * 2 + (steps - 2)  # two guided steps, then one row per step


def test_cfg_on_and_off(family, parent, pipe, mode):
    outputs = {}
    for scale in (1.0, 7.5):
        outputs[scale] = first(pipe(**inputs(family, guidance_scale=scale), **mode))
        assert torch.equal(outputs[scale], first(parent(**inputs(family, guidance_scale=scale))))
    assert outputs[1.0].shape == outputs[7.5].shape
    if family.rows_per_particle == 2:  # Flux's guidance_scale is an embedding, not classifier-free guidance
        assert not torch.equal(outputs[1.0], outputs[7.5])


def test_num_images_per_prompt(family, pipe, mode):
    """Images per prompt as in the parent; under a method they are selected from each prompt's particles, so more
    than `num_particles` is refused."""
    for batch in (1, 2):
        for per_prompt in (1, 2):
            call = inputs(family, prompt=[PROMPT] * batch, num_images_per_prompt=per_prompt)
            if mode and per_prompt > mode["method"].num_particles:
                with pytest.raises(ValueError, match="num_images_per_prompt=2 exceeds the method's num_particles=1"):
                    pipe(**call, **mode)
                out = pipe(**call, **{**mode, "method": diffsteer.BestOfN(per_prompt)})
                assert out.images.shape[0] == batch * per_prompt and out.particles.shape[0] == batch * per_prompt
            else:
                assert first(pipe(**call, **mode)).shape[0] == batch * per_prompt


def test_num_images_per_prompt_must_be_a_positive_integer(family, pipe):
    for value, error in ((0, ValueError), (True, TypeError), (1.0, TypeError)):
        with pytest.raises(error, match="num_images_per_prompt must be a positive integer"):
            pipe(**inputs(family, num_images_per_prompt=value), method=diffsteer.BestOfN(1), reward=redness)


def test_save_load_round_trip(family, pipe, mode, tmp_path):
    """The saved folder loads as the steering class and as the parent; both give the same output, which is the
    original pipeline's up to the rounding diffusers' own save/load test allows (5e-4; text encoders reload with
    float differences of about 2e-7)."""
    pipe.save_pretrained(tmp_path)
    loaded = family.steering.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    parent = family.parent.from_pretrained(tmp_path)
    parent.set_progress_bar_config(disable=True)
    out = first(loaded(**inputs(family), **mode))
    assert torch.equal(out, first(parent(**inputs(family))))
    torch.testing.assert_close(out, first(pipe(**inputs(family), **mode)), atol=5e-4, rtol=0)


def custom_schedule(family: Family) -> tuple[object, list[dict]]:
    """A scheduler taking custom schedules, and schedules of 3 steps for it (timesteps, sigmas where it takes both)."""
    if family.parent in (StableDiffusionPipeline, StableDiffusionXLPipeline):
        return EulerDiscreteScheduler.from_config, [{"timesteps": [999, 599, 199]}, {"sigmas": [14.6, 3.0, 0.6, 0.03]}]
    return FlowMatchEulerDiscreteScheduler.from_config, [{"sigmas": [1.0, 0.6, 0.3]}]


def test_custom_timesteps_without_num_inference_steps(family, parent, pipe, mode):
    """AYS-style schedules: `timesteps` or `sigmas` with `num_inference_steps=None`, as diffusers'
    `test_stable_diffusion_ays` passes them; the steered run follows the parent's schedule."""
    make, schedules = custom_schedule(family)
    original = parent.scheduler
    parent.scheduler = pipe.scheduler = make(original.config)
    try:
        for schedule in schedules:
            call = inputs(family, num_inference_steps=None, **schedule)
            expected = first(parent(**call))
            call["generator"] = torch.Generator().manual_seed(0)
            assert torch.equal(first(pipe(**call, **mode)), expected)
            assert pipe.num_timesteps == 3
    finally:
        parent.scheduler = pipe.scheduler = original


def test_interrupt_stops_the_loop_as_in_the_parent(family, pipe, mode):
    """`pipe._interrupt = True` in a callback at step 1 of 3: the output is the latents after step 1 of an
    uninterrupted run; under a method the remaining steps cost nothing and the particles are still scored."""
    states = []

    def record(pipeline, step, timestep, tensors):
        states.append(tensors["latents"].clone())
        return tensors

    call = inputs(family, num_inference_steps=3, output_type="latent")
    pipe(**call, callback_on_step_end=record, **mode)

    def interrupt(pipeline, step, timestep, tensors):
        if step == 1:
            pipeline._interrupt = True
        return tensors

    call["generator"] = torch.Generator().manual_seed(0)
    out = pipe(**call, callback_on_step_end=interrupt, **mode)
    assert torch.equal(first(out), states[1])
    if mode:
        assert out.cost.model_calls == 2 and out.rewards.shape == (1, 1)


def test_best_of_one_matches_a_parent_that_fixed_an_old_scheduler_config():
    """An old config (a plain `DDIMScheduler()`: `steps_offset` and `clip_sample` left to their defaults) is fixed
    by `StableDiffusionPipeline.__init__` (steps_offset 0 -> 1, clip_sample True -> False); the steered run's copy
    of the scheduler keeps those fixes, so BestOfN(1) is still the parent bit for bit."""
    family = FAMILIES["sd"]
    components = family.components()
    components["scheduler"] = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert {"steps_offset", "clip_sample"} <= set(components["scheduler"].config._use_default_values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' deprecation notes about the old config
        parent = build(family.parent, components)
    assert parent.scheduler.config.steps_offset == 1 and parent.scheduler.config.clip_sample is False
    pipe = family.steering.from_pipe(parent)
    pipe.set_progress_bar_config(disable=True)
    expected = first(parent(**inputs(family)))
    out = pipe(**inputs(family), method=diffsteer.BestOfN(1), reward=redness)
    assert isinstance(out, SteeringPipelineOutput) and torch.equal(out.images, expected)


@pytest.mark.parametrize("name", ["zero-order", "paths", "svdd", "rbf"])
def test_every_search_method_runs_in_every_family_within_its_budget(family, pipe, name):
    """Two prompts, two images each, from a method made for a budget of 3 plain samples: the images, the
    population and the ledger come back as with FK, and the denoiser rows stay within the budget (a guided call
    counts its rows)."""
    steps = family.call["num_inference_steps"]
    settings = {"num_neighbors": 1} if name == "zero-order" else {"num_chains": 2} if name in ("svdd", "rbf") else {}
    if name == "paths":
        settings = {"num_paths": 2, "num_branches": 2}
    budget = 6.0 if name in ("svdd", "rbf") else 3.0
    method = diffsteer.make_method(name, budget=budget, num_inference_steps=steps, **settings)
    output = pipe(
        **inputs(family, prompt=[PROMPT, "a blue dog"], num_images_per_prompt=2), method=method, reward=redness
    )
    assert isinstance(output, SteeringPipelineOutput)
    assert output.images.shape[0] == 4 and output.rewards.shape == (2, method.num_particles)
    assert output.cost.within_budget and output.cost.num_groups == 2
    assert output.cost.plain_model_rows == steps * family.rows_per_particle
    # The images are the selected samples, each group's best first.
    assert torch.equal(output.selected_indices[:, 0], torch.arange(2) * method.num_particles)
