"""Feynman-Kac steering (Singhal, Horvitz et al., 2025) and best-of-N."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diffsteer.methods.base import set_field, settings_of
from diffsteer.smc.checks import check_choice, check_int, check_number, check_type
from diffsteer.smc.potentials import Lambda, Potential
from diffsteer.smc.resampling import get_resampling_scheme


if TYPE_CHECKING:
    from diffsteer.loop import RunContext, SteeringRun


SELECT_MODES = ("best", "sample")


class _SMCHooks:
    """The hooks FK and best-of-N share: both run on the SMC driver and spend a plain run's calls per particle."""

    num_particles: int

    def run(self, ctx: "RunContext") -> "SteeringRun":
        """The SMC driver (`diffsteer.loop.run_steering`) with this method."""
        from diffsteer.loop import run_steering

        return run_steering(
            ctx.process,
            self,
            ctx.reward,
            ctx.ledger,
            num_groups=ctx.num_groups,
            generator=ctx.generator,
            latents=ctx.latents,
            conditioning=ctx.conditioning,
            num_outputs=ctx.num_outputs,
            on_step_end=ctx.on_step_end,
            final_reward=ctx.final_reward,
            gradient_reward=ctx.gradient_reward,
            gradient_chunk_size=ctx.gradient_chunk_size,
        )

    def model_passes(self, num_inference_steps: int, num_model_calls: int) -> int:
        """Particle-model calls per group: every particle makes a plain run's calls."""
        return self.num_particles * num_model_calls

    def settings(self) -> dict[str, Any]:
        return settings_of(self)


@dataclass(frozen=True)
class FK(_SMCHooks):
    """Feynman-Kac steering: particles weighted by reward potentials and resampled along the denoising chain.

    The weighted population targets p(x) exp(lmbda r(x)) for every potential kind.

    Args:
        num_particles (`int`): particles per run.
        potential (`str`, defaults to `"diff"`): `"diff"`, `"max"`, `"sum"` or `"immediate"`
            (see `diffsteer.smc.potentials`). `diff` is safe on any schedule; the others need a sparse one.
        lmbda (`float` or `Callable[[float], float]`, defaults to `1.0`): tilt strength, constant or a function of
            the denoising progress in [0, 1]; the target uses its value at 1.
        resampling (`str`, defaults to `"systematic"`): a name in `diffsteer.smc.RESAMPLING_SCHEMES`.
        ess_threshold (`float` or `None`, defaults to `0.5`): resample at a potential step when ESS < threshold * N;
            `None` resamples at every potential step.
        interval (`int`, defaults to `1`): evaluate the reward every `interval` full steps.
        start (`int`, defaults to `0`): first full step with a potential.
        stop (`int`, *optional*): no potentials from this full step on (defaults to the number of steps).
        select (`str`, defaults to `"best"`): `"best"` returns the distinct particles with the highest final
            reward (never one of zero weight: asking for more outputs than there are allowed particles is refused);
            `"sample"` draws from the final weights with replacement (the statistically faithful sample of the tilted
            target), so with several outputs a heavy particle can be returned more than once.
        budget (`float`, *optional*): the budget `diffsteer.make_method` built it for, in plain samples (recorded in
            the ledger; not part of the settings).

    Integers may be Python or numpy integers (not bools); numbers may be Python or numpy numbers.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range (a NaN or infinite `lmbda` included), naming it.
    """

    num_particles: int
    potential: str = "diff"
    lmbda: Lambda = 1.0
    resampling: str = "systematic"
    ess_threshold: float | None = 0.5
    interval: int = 1
    start: int = 0
    stop: int | None = None
    select: str = "best"
    budget: float | None = field(default=None, compare=False)

    name = "fk"
    requires_stochastic = True
    takes_generator_lists = True

    def __post_init__(self) -> None:
        set_field(self, "num_particles", _check_num_particles(self.num_particles))
        set_field(self, "lmbda", Potential(self.potential, self.lmbda).lmbda)
        check_type("resampling", self.resampling, str, "the name of a resampling scheme, such as 'systematic'")
        get_resampling_scheme(self.resampling)
        ess_threshold = check_number(
            "ess_threshold",
            self.ess_threshold,
            minimum=0.0,
            maximum=1.0,
            minimum_open=True,
            allow_none=True,
            hint="It is a fraction of num_particles (0.5 resamples when ESS < N / 2); pass None to resample at "
            "every potential step.",
        )
        set_field(self, "ess_threshold", ess_threshold)
        set_field(self, "interval", check_int("interval", self.interval, minimum=1, hint="1 evaluates every step."))
        set_field(self, "start", check_int("start", self.start, minimum=0, hint="0 is the first step."))
        stop = check_int("stop", self.stop, allow_none=True)
        if stop is not None and stop <= self.start:
            raise ValueError(
                f"stop must be an integer greater than start={self.start}, got {stop}: potentials are applied at "
                "full steps start, start + interval, ... below stop; pass None to go to the last step."
            )
        set_field(self, "stop", stop)
        check_choice("select", self.select, SELECT_MODES)

    def make_potential(self) -> Potential:
        return Potential(self.potential, self.lmbda)

    def reward_steps(self, num_inference_steps: int) -> frozenset[int]:
        """The full steps at which the reward is evaluated and potentials are applied."""
        stop = num_inference_steps if self.stop is None else min(self.stop, num_inference_steps)
        return frozenset(range(self.start, stop, self.interval))

    def should_resample(self, ess: float, num_particles: int) -> bool:
        return self.ess_threshold is None or ess < self.ess_threshold * num_particles


class _Unweighted:
    """The SMC hooks of a method whose particles are never weighted or resampled (best-of-N, plain guidance)."""

    def make_potential(self) -> None:
        return None

    def reward_steps(self, num_inference_steps: int) -> frozenset[int]:
        return frozenset()

    def should_resample(self, ess: float, num_particles: int) -> bool:
        return False


@dataclass(frozen=True)
class BestOfN(_Unweighted, _SMCHooks):
    """Best-of-N: N independent plain samples, the highest final reward wins.

    Random search over initial noises, in the terms of Ma et al. (2025).

    Args:
        num_particles (`int`): the number of independent samples N.
        budget (`float`, *optional*): the budget `diffsteer.make_method` built it for, in plain samples.
    """

    num_particles: int
    budget: float | None = field(default=None, compare=False)

    name = "bon"
    requires_stochastic = False
    takes_generator_lists = True
    select = "best"

    def __post_init__(self) -> None:
        set_field(self, "num_particles", _check_num_particles(self.num_particles))


def _check_num_particles(num_particles: Any) -> int:
    return check_int("num_particles", num_particles, minimum=1)
