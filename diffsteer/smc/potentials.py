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

Rewards may be -inf (a hard constraint: the particle gets zero weight at that step and keeps it, whatever its later
rewards, for every kind); NaN and +inf are errors. A reward of -inf under a zero tilt is no constraint (0 * -inf = 0),
and under a negative lambda it would give weight +inf and is rejected.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from diffsteer.smc.checks import check_choice, check_number, describe, is_real


POTENTIAL_KINDS = ("diff", "max", "sum", "immediate")

Lambda = float | Callable[[float], float]


class PotentialState(NamedTuple):
    """Per-particle history a potential needs; both fields are re-indexed with the particles.

    Attributes:
        applied: sum of the log-potentials applied so far along each particle's ancestry; -inf once a particle has
            met a hard constraint (a reward of -inf), and from then on for good.
        memory: `diff`: lambda_{j-1} r_{j-1}; `max`: running max of rewards; `sum`: running sum; `immediate`: unused.
    """

    applied: torch.Tensor
    memory: torch.Tensor


@dataclass(frozen=True)
class Potential:
    """A potential kind with its tilt strength.

    Args:
        kind (`str`, defaults to `"diff"`): one of `"diff"`, `"max"`, `"sum"`, `"immediate"`.
        lmbda (`float` or `Callable[[float], float]`, defaults to `1.0`): the tilt. A finite number is used at every
            step; a callable is evaluated at the denoising progress p in [0, 1] (0 = pure noise) for intermediate
            potentials, and at p = 1 for the final correction, so the target is p(x) exp(lmbda(1) r(x)). It must
            return a finite number wherever it is evaluated.

    Raises:
        TypeError: if `kind` is not a string, or `lmbda` neither a number nor a callable.
        ValueError: for an unknown `kind` or a NaN or infinite `lmbda`.
    """

    kind: str = "diff"
    lmbda: Lambda = 1.0

    def __post_init__(self) -> None:
        check_choice(
            "potential", self.kind, POTENTIAL_KINDS, message="Unknown potential {value}; choose one of {choices}."
        )
        if not callable(self.lmbda):
            if not is_real(self.lmbda):
                raise TypeError(
                    f"lmbda must be a number or a callable of the progress in [0, 1], got {describe(self.lmbda)}."
                )
            lmbda = check_number("lmbda", self.lmbda, hint="Pass a finite tilt strength, for example 1.0.")
            object.__setattr__(self, "lmbda", lmbda)

    def lmbda_at(self, progress: float) -> float:
        """The tilt at denoising progress `progress` in [0, 1].

        Raises:
            TypeError, ValueError: if a callable `lmbda` returns something other than a finite number there.
        """
        if not callable(self.lmbda):
            return self.lmbda
        value = self.lmbda(progress)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not is_real(value):
            raise TypeError(f"lmbda returned {describe(value)} at progress {progress:g}; it must return a number.")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(
                f"lmbda returned {value} at progress {progress:g}; the tilt must be a finite number at every "
                "progress in [0, 1]."
            )
        return value

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
        """Log-potential V_j for rewards r_j at a potential step, and the updated state.

        A reward of -inf under a non-zero tilt gives its particle zero weight (V_j = -inf) at this step and at every
        later one, whatever its later rewards; under a zero tilt it is no constraint (0 * -inf = 0).
        """
        lmbda = self.lmbda_at(progress)
        rewards = rewards.to(torch.float64)
        minus_inf, was_dead, dead = _constraints(rewards, state, lmbda)
        # -inf rewards and the rewards of dead particles never enter the arithmetic: they become the kind's neutral
        # value (nothing added to a sum, nothing raised in a max), so no -inf - -inf = NaN can form in the state.
        neutral = -math.inf if self.kind == "max" else 0.0
        clean = torch.where(minus_inf | was_dead, neutral, rewards)
        if self.kind == "diff":
            current = _tilt(lmbda, clean)
            log_potential = current - state.memory
            memory = current
        elif self.kind == "max":
            memory = torch.maximum(state.memory, clean)
            log_potential = _tilt(lmbda, memory)
        elif self.kind == "sum":
            memory = state.memory + clean
            log_potential = _tilt(lmbda, memory)
        else:
            memory = state.memory
            log_potential = _tilt(lmbda, clean)
        log_potential = torch.where(dead, -math.inf, log_potential)
        applied = torch.where(dead, -math.inf, state.applied + log_potential)
        return log_potential, PotentialState(applied=applied, memory=memory)

    def final_correction(self, state: PotentialState, final_rewards: torch.Tensor) -> torch.Tensor:
        """Log-potential that makes the product along each trajectory exactly exp(lambda r(x_0)).

        It is -inf for particles that met a constraint at a potential step, and for those whose final reward is
        -inf (under a non-zero target lambda).
        """
        lmbda = self.target_lmbda
        final_rewards = final_rewards.to(torch.float64)
        minus_inf, was_dead, dead = _constraints(final_rewards, state, lmbda)
        correction = _tilt(lmbda, torch.where(minus_inf, 0.0, final_rewards)) - torch.where(
            was_dead, 0.0, state.applied
        )
        return torch.where(dead, -math.inf, correction)


def _tilt(lmbda: float, rewards: torch.Tensor) -> torch.Tensor:
    """lmbda * rewards, with 0 * -inf = 0 (no tilt means no constraint)."""
    if lmbda == 0:
        return torch.zeros_like(rewards)
    return lmbda * rewards


def _refuse_negative_tilt(minus_inf: torch.Tensor) -> None:
    """Raise if a live particle has a reward of -inf under a negative lambda (a host sync, negative lambdas only)."""
    if minus_inf.any():
        raise ValueError(
            "A reward of -inf with a negative lmbda would give a particle infinite weight: -inf forbids a sample only "
            "under a positive tilt. Return a finite low reward instead, or use a positive lmbda."
        )


def _constraints(
    rewards: torch.Tensor, state: PotentialState, lmbda: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which rewards are -inf, which particles had already met a constraint, and which have from now on (under a
    zero tilt a -inf reward is no constraint); a -inf reward under a negative tilt is refused."""
    minus_inf = torch.isneginf(rewards)
    was_dead = torch.isneginf(state.applied)
    if lmbda < 0:
        _refuse_negative_tilt(minus_inf & ~was_dead)
    dead = was_dead | minus_inf if lmbda != 0 else was_dead
    return minus_inf, was_dead, dead
