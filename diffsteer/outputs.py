"""What a steered run returns: the particle population, its diagnostics, and what it cost."""

import math
import time
from dataclasses import dataclass, field

import torch

from diffsteer.smc.weights import ess_rows


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
        reward_time_s: wall-clock seconds spent inside the reward (a pipeline's reward includes its decodes).
        decode_time_s: wall-clock seconds spent decoding latents for rewards and images.
        model_time_s: wall-clock seconds spent inside the denoiser (on a GPU, the time to queue its work unless the
            model synchronises).
        particle_calls: model calls counted per particle row (a classifier-free-guidance call on N particles counts
            N here and 2N in `model_rows`).
        num_groups: prompts (independent particle systems) of the run.
        plain_model_rows: the denoiser rows of one plain sample at the same steps and guidance (the budget's unit).
        budget: the budget the method was made for, in plain samples per prompt, or None.
        backward_rows: denoiser rows a backward pass ran through (reward-gradient methods that differentiate
            through the model); each costs `diffsteer.gradients.BACKWARD_COST` forward rows in `cost`.
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
    decode_time_s: float = 0.0
    model_time_s: float = 0.0
    particle_calls: int = 0
    num_groups: int = 1
    plain_model_rows: int = 0
    budget: float | None = None
    backward_rows: int = 0
    _started: float = field(default_factory=time.perf_counter, repr=False, compare=False)

    def add_model(self, rows: int) -> None:
        self.model_calls += 1
        self.model_rows += rows

    def add_reward(self, rows: int, seconds: float) -> None:
        self.reward_calls += 1
        self.reward_rows += rows
        self.reward_time_s += seconds

    def add_decode(self, rows: int, seconds: float = 0.0) -> None:
        self.decode_calls += 1
        self.decode_rows += rows
        self.decode_time_s += seconds

    def add_backward(self, rows: int) -> None:
        self.backward_rows += rows

    @property
    def denoiser_rows(self) -> float:
        """Forward rows plus backward rows at their documented cost, in forward rows (what a budget limits)."""
        from diffsteer.gradients import BACKWARD_COST

        return self.model_rows + BACKWARD_COST * self.backward_rows

    def stop(self) -> None:
        self.wall_time_s = time.perf_counter() - self._started

    @property
    def cost(self) -> float:
        """Denoiser rows spent per prompt (backward rows at their documented cost), in plain samples (what a budget
        limits)."""
        if not self.plain_model_rows:
            return math.nan
        return self.denoiser_rows / (self.plain_model_rows * self.num_groups)

    @property
    def wall_time_cost(self) -> float:
        """Wall time per prompt in plain samples: the run's wall time over a plain sample's denoiser time, estimated
        from this run's own time per denoiser row. Unlike `cost`, it counts the rewards and decodes (the
        verifier's cost), which can reverse a ranking made on denoiser calls alone."""
        if not (self.plain_model_rows and self.model_rows and self.model_time_s > 0):
            return math.nan
        plain_seconds = self.model_time_s / self.model_rows * self.plain_model_rows
        return self.wall_time_s / (plain_seconds * self.num_groups)

    @property
    def within_budget(self) -> bool | None:
        """Whether the denoiser rows stayed within the budget (None without one)."""
        if self.budget is None:
            return None
        return self.denoiser_rows <= self.budget * self.plain_model_rows * self.num_groups + 1e-9

    def as_dict(self) -> dict[str, float | None]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if not name.startswith("_")}
        derived = {"cost": self.cost, "wall_time_cost": self.wall_time_cost, "within_budget": self.within_budget}
        # NaN (no plain sample to compare with) is not JSON: None says the same.
        derived = {
            key: None if isinstance(value, float) and math.isnan(value) else value for key, value in derived.items()
        }
        return {**values, **derived}


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
        """Effective sample size of the final weights: exactly N for equal weights (1 / sum W^2 of the normalised
        weights is N - 1e-14 there)."""
        return float(ess_rows(self.log_weights))

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
