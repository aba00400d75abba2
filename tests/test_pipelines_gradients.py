"""Every pipeline family runs every reward-gradient method on tiny seeded components: gradients through the VAE and
(for DPS) the denoiser, backward rows in the ledger, and refusals of rewards without a gradient."""

import copy
import inspect

import pytest
import torch

import diffsteer
from diffsteer.gradients import BACKWARD_COST
from diffsteer.methods.guidance import Guidance, Twisted

from .tiny.families import FAMILIES


PROMPTS = ["a photo of a red cat", "two blue squares"]


def redness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_pipe(request):
    family = FAMILIES[request.param]
    pipe = family.steering(**family.components())
    pipe.set_progress_bar_config(disable=True)
    return family, pipe


METHODS = {
    "guidance dps": lambda: Guidance(2, lmbda=50.0),
    "guidance x0-fixed": lambda: Guidance(2, lmbda=50.0, variant="x0-fixed"),
    "twisted dps": lambda: Twisted(3, lmbda=50.0),
    "twisted x0-fixed": lambda: Twisted(3, lmbda=50.0, variant="x0-fixed", chunk_size=2),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_family_runs_every_gradient_method(family_pipe, name):
    family, pipe = family_pipe
    method = METHODS[name]()
    out = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), reward=redness, method=method, **family.call)
    steps = family.call["num_inference_steps"]
    rows = len(PROMPTS) * method.num_particles * steps * family.rows_per_particle
    assert out.rewards.shape == (2, method.num_particles) and torch.isfinite(out.rewards).all()
    assert out.cost.model_rows == rows
    assert out.cost.backward_rows == (rows if method.variant == "dps" else 0)
    per_sample = 1 + (BACKWARD_COST if method.variant == "dps" else 0)
    assert out.cost.cost == pytest.approx(method.num_particles * per_sample)
    if name.startswith("twisted"):
        assert torch.isfinite(out.log_normalizers).all()


def test_gradients_reach_the_latents_through_the_vae(family_pipe):
    # The pipelines' differentiable reward (decode x0-hat with the family's VAE, then score), against a central
    # difference along a random direction, per row, in float64 (a copy of the VAE) so that the difference is
    # accurate far below the tolerance.
    from diffsteer.gradients import chunked_gradient
    from diffsteer.outputs import CostLedger
    from diffsteer.pipelines.steering import _ChunkedScorer

    family, pipe = family_pipe
    bound = inspect.signature(family.parent.__call__).bind(pipe, PROMPTS, **family.call)
    bound.apply_defaults()
    call = dict(bound.arguments)
    call.pop("self")
    call["generator"] = torch.Generator().manual_seed(0)
    setup = pipe._steering_setup(call, 2, CostLedger())
    scorer = _ChunkedScorer(setup, redness, len(PROMPTS), 3, CostLedger())
    scorer.intermediate_vae = copy.deepcopy(pipe.vae).double()
    x = setup.latents.double()
    _, grads = chunked_gradient(scorer.gradient_reward, x, chunk_size=3)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h, rows = 1e-4, slice(0, x.shape[0])
    with torch.no_grad():
        ahead = scorer.gradient_reward(x + h * direction, rows)
        behind = scorer.gradient_reward(x - h * direction, rows)
    numeric = (ahead - behind) / (2 * h)
    analytic = (grads * direction).flatten(1).sum(1)
    assert float(analytic.abs().min()) > 0
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_guidance_changes_the_chain_and_zero_strength_is_the_unguided_chain(family_pipe):
    family, pipe = family_pipe

    def run(method):
        return pipe(PROMPTS, generator=torch.Generator().manual_seed(1), reward=redness, method=method, **family.call)

    # FK with no tilt never resamples: the same stochastic chain as guidance with no shift.
    unguided = run(diffsteer.FK(2, lmbda=0.0))
    torch.testing.assert_close(run(Guidance(2, gradient_scale=0.0)).particles, unguided.particles)
    assert not torch.allclose(run(Guidance(2, lmbda=200.0)).particles, unguided.particles)


def test_rewards_without_a_gradient_are_refused_before_any_work(family_pipe):
    family, pipe = family_pipe
    with pytest.raises(ValueError, match="'shapes-eval' is not differentiable"):
        pipe(PROMPTS, reward="shapes-eval", method=Guidance(2), **family.call)
    flagged = diffsteer.rewards.from_function(lambda images, prompts: images.mean((1, 2, 3)), differentiable=False)
    with pytest.raises(ValueError, match="says it is not differentiable"):
        pipe(PROMPTS, reward=flagged, method=Twisted(2), **family.call)
    ensemble = diffsteer.rewards.RankEnsemble([diffsteer.rewards.Brightness()])
    with pytest.raises(ValueError, match="relative to its batch"):
        pipe(PROMPTS, reward=ensemble, method=Guidance(2), **family.call)


def test_a_callable_reward_without_a_gradient_is_named(family_pipe):
    family, pipe = family_pipe

    def numpy_redness(images, prompts):
        return torch.as_tensor(images.detach().numpy()[:, 0].mean((1, 2)))

    with pytest.raises(diffsteer.gradients.NotDifferentiableError, match="'numpy_redness' gives no gradient"):
        pipe(
            PROMPTS,
            generator=torch.Generator().manual_seed(0),
            reward=numpy_redness,
            method=Guidance(2),
            **family.call,
        )


def test_every_family_runs_noise_optimisation(family_pipe):
    family, pipe = family_pipe
    method = diffsteer.NoiseOpt(num_iterations=3, lmbda=50.0)
    out = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), reward=redness, method=method, **family.call)
    per_pass = len(PROMPTS) * family.call["num_inference_steps"] * family.rows_per_particle
    assert out.rewards.shape == (2, 1) and torch.isfinite(out.rewards).all()
    # Three forward passes, two recomputed by checkpointing in the backward passes, two backward passes.
    assert out.cost.model_rows == 5 * per_pass and out.cost.backward_rows == 2 * per_pass
    assert out.cost.cost == pytest.approx(3 + 2 * (1 + BACKWARD_COST))


@pytest.fixture(scope="module")
def shapes_scene_latents():
    """The embedded model's pipeline, and the VAE latents of a rendered scene of its caption."""
    import numpy as np

    from diffsteer import generate as gen
    from diffsteer.worlds.shapes import parse, render, scene_for

    pipe = gen.load_pipeline(gen.SHAPES_MODEL)
    caption = "a red circle left of a blue square"
    image = render(scene_for(parse(caption), np.random.default_rng(0)))
    pixels = torch.as_tensor(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    return pipe, caption, latents


@pytest.mark.parametrize(
    "name",
    sorted(spec.name for spec in diffsteer.rewards.available() if spec.differentiable and not spec.needs_download),
)
def test_every_shipped_differentiable_reward_sends_a_gradient_through_the_vae(shapes_scene_latents, name):
    # On the embedded model's own VAE, from the latents of a scene of the caption (a blank image would leave
    # shapes-detect flat). The models that need a download are checked on tiny random weights in
    # tests/test_rewards_models.py and tests/test_image_reward.py.
    from diffsteer.gradients import chunked_gradient
    from diffsteer.outputs import CostLedger
    from diffsteer.pipelines.steering import FamilySetup, _ChunkedScorer

    pipe, caption, latents = shapes_scene_latents
    setup = FamilySetup(
        denoise=None,
        combine=None,
        latents=latents,
        conditioning={},
        prompts=[caption],
        decode=lambda x, vae: vae.decode(x / vae.config.scaling_factor, return_dict=False)[0],
    )
    scorer = _ChunkedScorer(setup, diffsteer.rewards.load(name), 1, 8, CostLedger())
    scorer.intermediate_vae = pipe.vae
    scores, grads = chunked_gradient(scorer.gradient_reward, latents)
    assert torch.isfinite(scores).all() and torch.isfinite(grads).all()
    assert float(grads.abs().sum()) > 0
