"""Feynman-Kac steering (Singhal, Horvitz et al., 2025) and best-of-N."""

from dataclasses import dataclass

from diffsteer.smc.potentials import Lambda, Potential
from diffsteer.smc.resampling import get_resampling_scheme


SELECT_MODES = ("best", "sample")


def _check_num_particles(num_particles: int) -> None:
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}.")


@dataclass(frozen=True)
class FK:
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
        select (`str`, defaults to `"best"`): `"best"` returns the particles with the highest final reward;
            `"sample"` draws from the final weights (the statistically faithful sample of the tilted target).
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

    requires_stochastic = True

    def __post_init__(self) -> None:
        _check_num_particles(self.num_particles)
        Potential(self.potential, self.lmbda)
        get_resampling_scheme(self.resampling)
        if self.ess_threshold is not None and not 0 < self.ess_threshold <= 1:
            raise ValueError(f"ess_threshold must be in (0, 1] or None, got {self.ess_threshold!r}.")
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"interval must be a positive integer, got {self.interval!r}.")
        if not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"start must be a non-negative integer, got {self.start!r}.")
        if self.stop is not None and (not isinstance(self.stop, int) or self.stop <= self.start):
            raise ValueError(f"stop must be an integer greater than start={self.start}, got {self.stop!r}.")
        if self.select not in SELECT_MODES:
            raise ValueError(f"select must be one of {list(SELECT_MODES)}, got {self.select!r}.")

    def make_potential(self) -> Potential:
        return Potential(self.potential, self.lmbda)

    def reward_steps(self, num_inference_steps: int) -> frozenset[int]:
        """The full steps at which the reward is evaluated and potentials are applied."""
        stop = num_inference_steps if self.stop is None else min(self.stop, num_inference_steps)
        return frozenset(range(self.start, stop, self.interval))

    def should_resample(self, ess: float, num_particles: int) -> bool:
        return self.ess_threshold is None or ess < self.ess_threshold * num_particles


@dataclass(frozen=True)
class BestOfN:
    """Best-of-N: N independent plain samples, the highest final reward wins.

    Args:
        num_particles (`int`): the number of independent samples N.
    """

    num_particles: int

    requires_stochastic = False
    select = "best"

    def __post_init__(self) -> None:
        _check_num_particles(self.num_particles)

    def make_potential(self) -> None:
        return None

    def reward_steps(self, num_inference_steps: int) -> frozenset[int]:
        return frozenset()

    def should_resample(self, ess: float, num_particles: int) -> bool:
        return False
