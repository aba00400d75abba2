"""Potentials that turn intermediate rewards into Feynman-Kac log-potentials.

At the potential steps j = 1..m the reward r_j = r(x0_hat(x_{t_j})) is turned into a log-potential V_j; after the
last denoising step the final correction lambda * r(x_0) - sum_j V_j is applied. The product of all potentials
along a trajectory is therefore exp(lambda * r(x_0)) for every kind, so every kind targets
p(x) exp(lambda r(x)). The kinds differ only in variance:

- `diff`: V_j = lambda_j r_j - lambda_{j-1} r_{j-1} (telescoping; the final correction is the last difference).
- `max`: V_j = lambda_j max_{i<=j} r_i.
- `sum`: V_j = lambda_j sum_{i<=j} r_i.
- `immediate`: V_j = lambda_j r_j.

`max`, `sum` and `immediate` apply the tilt once per potential step, so on a dense schedule their intermediate
targets are far more peaked than the final one and the particle population collapses before the final correction
can undo it; use them on sparse schedules (a handful of potential steps). `diff` is safe on any schedule.

Rewards may be -inf (a hard constraint: the particle gets zero weight and is never resampled); NaN and +inf are
errors. A reward of -inf with a negative lambda would give weight +inf and is rejected.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch


POTENTIAL_KINDS = ("diff", "max", "sum", "immediate")

Lambda = float | Callable[[float], float]


class PotentialState(NamedTuple):
    """Per-particle history a potential needs; both fields are re-indexed with the particles.

    Attributes:
        applied: sum of the log-potentials applied so far along each particle's ancestry.
        memory: `diff`: lambda_{j-1} r_{j-1}; `max`: running max of rewards; `sum`: running sum; `immediate`: unused.
    """

    applied: torch.Tensor
    memory: torch.Tensor


@dataclass(frozen=True)
class Potential:
    """A potential kind with its tilt strength.

    Args:
        kind (`str`, defaults to `"diff"`): one of `"diff"`, `"max"`, `"sum"`, `"immediate"`.
        lmbda (`float` or `Callable[[float], float]`, defaults to `1.0`): the tilt. A float is used at every step; a
            callable is evaluated at the denoising progress p in [0, 1] (0 = pure noise) for intermediate
            potentials, and at p = 1 for the final correction, so the target is p(x) exp(lmbda(1) r(x)).
    """

    kind: str = "diff"
    lmbda: Lambda = 1.0

    def __post_init__(self) -> None:
        if self.kind not in POTENTIAL_KINDS:
            raise ValueError(f"Unknown potential {self.kind!r}; choose one of {list(POTENTIAL_KINDS)}.")
        if not callable(self.lmbda) and not isinstance(self.lmbda, int | float):
            raise ValueError(f"lmbda must be a number or a callable of the progress in [0, 1], got {self.lmbda!r}.")

    def lmbda_at(self, progress: float) -> float:
        """The tilt at denoising progress `progress` in [0, 1]."""
        value = self.lmbda(progress) if callable(self.lmbda) else self.lmbda
        return float(value)

    @property
    def target_lmbda(self) -> float:
        """The lambda of the target p(x) exp(lambda r(x))."""
        return self.lmbda_at(1.0)

    def init_state(self, num_particles: int, device: torch.device | str = "cpu") -> PotentialState:
        """The state before any potential step."""
        zeros = torch.zeros(num_particles, dtype=torch.float64, device=device)
        memory = torch.full_like(zeros, -torch.inf) if self.kind == "max" else zeros
        return PotentialState(applied=zeros, memory=memory)

    def step(
        self, state: PotentialState, rewards: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, PotentialState]:
        """Log-potential V_j for rewards r_j at a potential step, and the updated state."""
        lmbda = self.lmbda_at(progress)
        rewards = rewards.to(torch.float64)
        if self.kind == "diff":
            current = _tilt(lmbda, rewards)
            log_potential = current - state.memory
            memory = current
        elif self.kind == "max":
            memory = torch.maximum(state.memory, rewards)
            log_potential = _tilt(lmbda, memory)
        elif self.kind == "sum":
            memory = state.memory + rewards
            log_potential = _tilt(lmbda, memory)
        else:
            memory = state.memory
            log_potential = _tilt(lmbda, rewards)
        return log_potential, PotentialState(applied=state.applied + log_potential, memory=memory)

    def final_correction(self, state: PotentialState, final_rewards: torch.Tensor) -> torch.Tensor:
        """Log-potential that makes the product along each trajectory exactly exp(lambda r(x_0))."""
        return _tilt(self.target_lmbda, final_rewards.to(torch.float64)) - state.applied


def _tilt(lmbda: float, rewards: torch.Tensor) -> torch.Tensor:
    """lmbda * rewards, with 0 * -inf = 0 (no tilt means no constraint) and -inf * negative lambda rejected."""
    if lmbda == 0:
        return torch.zeros_like(rewards)
    if lmbda < 0 and torch.isneginf(rewards).any():
        raise ValueError("A reward of -inf with a negative lmbda would give a particle infinite weight.")
    return lmbda * rewards
