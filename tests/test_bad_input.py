"""One rule for bad arguments across the core API: the wrong type is a `TypeError`, a bad value a `ValueError`, both
naming the argument; numpy integers count as integers and bools never do. Also `check_scores`, the reward-shape
check that the core loop and the pipelines share."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

import diffsteer
from diffsteer.loop import check_scores
from diffsteer.smc import Particles, Potential, resample
from diffsteer.smc.checks import check_choice, check_int, check_number
from diffsteer.worlds.gmm import GaussianMixture, exact_denoiser, four_modes, linear_reward


MIXTURE = GaussianMixture.isotropic([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.4)
REWARD = linear_reward([1.0, 0.0])


def run(method=None, **kwargs) -> diffsteer.SamplingResult:
    scheduler = DDPMScheduler(clip_sample=False)
    arguments = dict(
        shape=(2,),
        method=diffsteer.FK(4) if method is None else method,
        reward=REWARD,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
    )
    arguments.update(kwargs)
    return diffsteer.sample(exact_denoiser(MIXTURE, scheduler), scheduler, **arguments)


def test_numpy_integers_are_integers():
    method = diffsteer.FK(np.int64(4), interval=np.int32(2), start=np.int64(0), stop=np.int64(3))
    assert (method.num_particles, method.interval, method.stop) == (4, 2, 3)
    assert type(method.num_particles) is int and type(diffsteer.BestOfN(np.int16(3)).num_particles) is int
    assert diffsteer.FK(4, lmbda=np.float64(0.5), ess_threshold=np.float32(0.5)).lmbda == 0.5
    result = run(method, num_outputs=np.int64(2), num_inference_steps=np.int64(4), shape=(np.int64(2),))
    assert result.selected.shape == (2, 2) and len(result.trace) == 4
    assert resample(torch.zeros(3), np.int64(5), "systematic").shape == (5,)
    assert Particles(np.int64(3)).num_particles == 3
    assert four_modes().sample(np.int64(5)).shape == (5, 2)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: diffsteer.FK(True), "num_particles"),
        (lambda: diffsteer.BestOfN(True), "num_particles"),
        (lambda: diffsteer.FK(2.5), "num_particles"),
        (lambda: diffsteer.FK(4.0), "num_particles"),
        (lambda: diffsteer.FK("4"), "num_particles"),
        (lambda: diffsteer.FK(4, interval=True), "interval"),
        (lambda: diffsteer.FK(4, start=False), "start"),
        (lambda: diffsteer.FK(4, stop=2.0), "stop"),
        (lambda: diffsteer.FK(4, ess_threshold="0.5"), "ess_threshold"),
        (lambda: diffsteer.FK(4, ess_threshold=True), "ess_threshold"),
        (lambda: diffsteer.FK(4, lmbda="strong"), "lmbda"),
        (lambda: diffsteer.FK(4, lmbda=torch.tensor(1.0)), "lmbda"),
        (lambda: diffsteer.FK(4, potential=None), "potential"),
        (lambda: diffsteer.FK(4, resampling=3), "resampling"),
        (lambda: diffsteer.FK(4, select=1), "select"),
        (lambda: run("fk"), "method"),
        (lambda: run(reward="clip"), "reward"),
        (lambda: run(num_outputs=True), "num_outputs"),
        (lambda: run(num_outputs=1.0), "num_outputs"),
        (lambda: run(num_inference_steps=2.0), "num_inference_steps"),
        (lambda: run(num_inference_steps=True), "num_inference_steps"),
        (lambda: run(shape=2), "shape"),
        (lambda: run(shape=(2.0,)), r"shape\[0\]"),
        (lambda: run(generator=0), "generator"),
        (lambda: run(generator=[0, 1, 2, 3]), "generator"),
        (lambda: run(latents=[[0.0, 0.0]] * 4), "latents"),
        (lambda: run(step_kwargs=[("eta", 1.0)]), "step_kwargs"),
        (lambda: run(stochastic=1), "stochastic"),
        (lambda: run(dtype="float32"), "dtype"),
        (lambda: resample(torch.zeros(3), True, "systematic"), "num_samples"),
        (lambda: resample(torch.zeros(3), 3.0, "systematic"), "num_samples"),
        (lambda: resample(torch.zeros(3), 3, 3), "scheme"),
        (lambda: resample([0.0, 0.0], 2, "multinomial"), "log_weights"),
        (lambda: resample(torch.zeros(3), 3, "multinomial", 0), "generator"),
        (lambda: Particles(True), "num_particles"),
        (lambda: four_modes().tilt([1.0, 0.5], "0.6"), "lmbda"),
        (lambda: four_modes().sample(2.0), "num_samples"),
    ],
)
def test_wrong_types_are_type_errors_naming_the_argument(make, name):
    with pytest.raises(TypeError, match=rf"^{name} must be"):
        make()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: diffsteer.FK(0), "num_particles must be a positive integer, got 0"),
        (lambda: diffsteer.FK(4, interval=0), "interval must be a positive integer, got 0"),
        (lambda: diffsteer.FK(4, start=-1), "start must be a non-negative integer, got -1"),
        (lambda: diffsteer.FK(4, start=3, stop=2), "stop must be an integer greater than start=3, got 2: "),
        (
            lambda: diffsteer.FK(4, ess_threshold=0),
            r"ess_threshold must be a number in \(0, 1\] or None, got 0.0\. It",
        ),
        (lambda: diffsteer.FK(4, ess_threshold=math.nan), "ess_threshold must be a finite number, got nan"),
        (lambda: diffsteer.FK(4, lmbda=math.nan), "lmbda must be a finite number, got nan"),
        (lambda: diffsteer.FK(4, lmbda=math.inf), "lmbda must be a finite number, got inf"),
        (lambda: diffsteer.FK(4, lmbda=-math.inf), "lmbda must be a finite number, got -inf"),
        (lambda: diffsteer.FK(4, select="top"), r"select must be one of \['best', 'sample'\], got 'top'"),
        (lambda: run(num_outputs=0), "num_outputs must be a positive integer, got 0"),
        (lambda: run(num_outputs=5), r"num_outputs must be an integer in \[1, num_particles=4\], got 5: .*raise"),
        (lambda: run(num_inference_steps=0), "num_inference_steps must be a positive integer, got 0"),
        (lambda: run(shape=(2, 0)), r"shape\[1\] must be a positive integer, got 0"),
        (lambda: run(stochastic="yes"), "stochastic must be one of"),
        (lambda: resample(torch.zeros(3), 0, "systematic"), "num_samples must be a positive integer, got 0"),
        (lambda: four_modes().tilt([1.0, 0.5], math.nan), "lmbda must be a finite number, got nan"),
        (lambda: four_modes().tilt([1.0, 0.5], -math.inf), "lmbda must be a finite number, got -inf"),
        (lambda: four_modes().tilt([1.0, 0.5, 0.0], 0.5), r"direction must be a finite vector of shape \(2,\)"),
    ],
)
def test_bad_values_are_value_errors_naming_the_argument(make, message):
    with pytest.raises(ValueError, match=rf"^{message}"):
        make()


def test_a_lambda_schedule_that_returns_nan_is_named_with_its_progress():
    """The schedule is only known when evaluated: the run stops at the first potential step where it is NaN."""
    method = diffsteer.FK(4, lmbda=lambda progress: 1.0 if progress < 0.5 else math.nan)
    with pytest.raises(ValueError, match=r"^lmbda returned nan at progress 0\.5; .*finite"):
        run(method, num_inference_steps=4)
    with pytest.raises(ValueError, match=r"^lmbda returned inf at progress 0;"):
        run(diffsteer.FK(4, lmbda=lambda progress: math.inf))


def test_a_reward_returning_none_is_a_type_error_naming_it():
    def forgetful(x: torch.Tensor) -> None:
        REWARD(x)  # computes, forgets to return

    for method in (diffsteer.FK(4), diffsteer.BestOfN(4)):
        with pytest.raises(
            TypeError, match=r"The reward 'forgetful' returned None; it must return one score per sample"
        ):
            run(method, reward=forgetful)


def test_check_scores_accepts_n_and_n_by_1_and_returns_float64():
    for scores in (torch.arange(3), torch.arange(3.0)[:, None], np.arange(3, dtype=np.float32), [0, 1, 2]):
        checked = check_scores(scores, 3)
        assert checked.dtype == torch.float64 and checked.tolist() == [0.0, 1.0, 2.0]
    assert check_scores(torch.tensor([True, False]), 2).tolist() == [1.0, 0.0]
    assert torch.isneginf(check_scores(torch.tensor([0.0, -math.inf]), 2)[1])
    scores = torch.ones(2, requires_grad=True)
    assert not check_scores(scores, 2).requires_grad
    # Huge finite scores whose sum overflows to +inf are still finite scores.
    assert check_scores(torch.tensor([1e308, 1e308], dtype=torch.float64), 2).tolist() == [1e308, 1e308]


@pytest.mark.parametrize(
    "scores, error, message",
    [
        (
            None,
            TypeError,
            r"^The reward returned None; it must return one score per sample: .* shape \(4,\) or \(4, 1\)",
        ),
        ("good", TypeError, r"^The reward returned 'good' \(str\); it must return"),
        ({"score": 1.0}, TypeError, r"^The reward returned \{'score': 1.0\} \(dict\)"),
        (torch.ones(4, dtype=torch.complex64), TypeError, "dtype torch.complex64"),
        (torch.ones(1, 4), ValueError, r"it returned shape \(1, 4\) for 4 samples"),  # not flattened to (4,)
        (torch.ones(4, 2), ValueError, r"it returned shape \(4, 2\) for 4 samples"),
        (torch.ones(2, 2), ValueError, r"it returned shape \(2, 2\) for 4 samples"),
        (torch.tensor(1.0), ValueError, r"it returned shape \(\) for 4 samples"),
        (torch.tensor([0.0, math.nan, math.inf, -math.inf]), ValueError, r"NaN or \+inf for samples \[1, 2\];"),
    ],
)
def test_check_scores_refuses_with_the_shape_the_reward_returned(scores, error, message):
    with pytest.raises(error, match=message):
        check_scores(scores, 4)


def test_check_scores_names_the_reward_and_its_rows():
    with pytest.raises(ValueError, match=r"^The reward 'clip' must return one score per image: .*for 3 images"):
        check_scores(torch.ones(2), 3, "reward 'clip'", item="image")
    scores = torch.full((30,), math.nan)
    with pytest.raises(ValueError, match=r"for samples \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. \(30 in all\)\]"):
        check_scores(scores, 30)


def test_an_n_by_1_reward_gives_the_same_run_as_an_n_reward():
    flat = run(diffsteer.FK(8, lmbda=2.0))
    column = run(diffsteer.FK(8, lmbda=2.0), reward=lambda x: REWARD(x)[:, None])
    assert torch.equal(flat.samples, column.samples) and torch.equal(flat.log_weights, column.log_weights)


def test_checks_return_plain_python_values_and_keep_the_messages_uniform():
    assert type(check_int("n", np.int64(3))) is int
    assert type(check_number("x", np.float32(0.5))) is float and check_number("x", 2) == 2.0
    assert check_int("n", None, allow_none=True) is None
    with pytest.raises(TypeError, match=r"^n must be an integer in \[1, 3\], got True \(bool\)\.$"):
        check_int("n", True, minimum=1, maximum=3)
    with pytest.raises(ValueError, match=r"^x must be a number >= 0, got -1\.0\. Pass a size\.$"):
        check_number("x", -1, minimum=0, hint="Pass a size.")
    assert check_number("x", math.inf, finite=False) == math.inf
    with pytest.raises(ValueError, match="x must be a finite number, got nan"):
        check_number("x", math.nan, finite=False)
    with pytest.raises(ValueError, match=r"^Unknown mode 'c'; pick \['a', 'b'\]\.$"):
        check_choice("mode", "c", ("a", "b"), message="Unknown mode {value}; pick {choices}.")


def test_potential_kind_and_lambda_follow_the_rule():
    with pytest.raises(TypeError, match=r"^potential must be a string"):
        Potential(None)
    with pytest.raises(ValueError, match=r"^Unknown potential 'add'; choose one of"):
        Potential("add")
    assert Potential("diff", np.float64(2.0)).lmbda == 2.0
