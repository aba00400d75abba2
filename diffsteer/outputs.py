"""What a steered run returns: the particle population, its diagnostics, and what it cost."""

import time
from dataclasses import dataclass, field

import torch


@dataclass
class CostLedger:
    """What a run spent.

    Attributes:
        model_calls: calls of the denoiser.
        model_rows: rows passed to the denoiser (a call on N particles counts N).
        reward_calls: calls of the reward.
        reward_rows: rows the reward scored.
        decode_calls: VAE decoder calls (pipelines decode x0-hat for rewards, in chunks).
        decode_rows: rows the VAE decoded.
        resampling_steps: steps at which the particles were resampled.
        wall_time_s: wall-clock seconds of the whole run.
        reward_time_s: wall-clock seconds spent inside the reward.
    """

    model_calls: int = 0
    model_rows: int = 0
    reward_calls: int = 0
    reward_rows: int = 0
    decode_calls: int = 0
    decode_rows: int = 0
    resampling_steps: int = 0
    wall_time_s: float = 0.0
    reward_time_s: float = 0.0
    _started: float = field(default_factory=time.perf_counter, repr=False, compare=False)

    def add_model(self, rows: int) -> None:
        self.model_calls += 1
        self.model_rows += rows

    def add_reward(self, rows: int, seconds: float) -> None:
        self.reward_calls += 1
        self.reward_rows += rows
        self.reward_time_s += seconds

    def add_decode(self, rows: int) -> None:
        self.decode_calls += 1
        self.decode_rows += rows

    def stop(self) -> None:
        self.wall_time_s = time.perf_counter() - self._started

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if not name.startswith("_")}


@dataclass(frozen=True)
class StepRecord:
    """Diagnostics of one model call.

    Attributes:
        index: the call's position in the scheduler's timesteps.
        timestep: the scheduler's timestep.
        rewarded: whether the reward was evaluated (and potentials applied) at this call.
        ess: effective sample size of the weights after this call's potentials, before any resampling (the smallest
            over groups).
        resampled: whether the particles (of any group) were resampled at this call.
        ancestors: the ancestor index of each particle after resampling, or None if no resampling happened.
        group_ess: the ESS of each group.
        group_resampled: whether each group was resampled.
    """

    index: int
    timestep: float
    rewarded: bool
    ess: float
    resampled: bool
    ancestors: torch.Tensor | None = None
    group_ess: tuple[float, ...] = ()
    group_resampled: tuple[bool, ...] = ()


@dataclass
class SamplingResult:
    """The output of `diffsteer.sample`.

    Attributes:
        samples: all final particles, shape (N, *shape).
        log_weights: final normalised log-weights (logsumexp 0), shape (N,). The weighted population targets
            p(x) exp(lambda r(x)); best-of-N returns uniform weights.
        rewards: final reward of each particle, shape (N,).
        log_normalizer: estimate of log E_p[exp(lambda r(x))] (None for methods without a tilt).
        selected: the samples the method's `select` picked, shape (num_outputs, *shape).
        selected_indices: their particle indices.
        trace: one `StepRecord` per model call.
        cost: the `CostLedger`.
        changes: what diffsteer changed on the caller's behalf (for example switching to a stochastic scheduler).
    """

    samples: torch.Tensor
    log_weights: torch.Tensor
    rewards: torch.Tensor
    log_normalizer: float | None
    selected: torch.Tensor
    selected_indices: torch.Tensor
    trace: list[StepRecord]
    cost: CostLedger
    changes: list[str]

    @property
    def ess(self) -> float:
        """Effective sample size of the final weights."""
        return float(1.0 / torch.exp(torch.logsumexp(2 * self.log_weights, dim=0)))

    def origins(self) -> torch.Tensor:
        """Index of each final particle's initial particle (x_T), composed through every resampling step."""
        return origins(self.trace, self.samples.shape[0])


def origins(trace: list[StepRecord], num_particles: int) -> torch.Tensor:
    """Index of each final particle's initial particle, composing the ancestors of every resampling step."""
    origin = torch.arange(num_particles)
    for record in reversed(trace):
        if record.ancestors is not None:
            origin = record.ancestors.cpu()[origin]
    return origin
