"""Rewards built from rewards: weighted sums, scaling, negation, and the rank ensemble of the noise-search paper."""

from collections.abc import Callable, Sequence

import torch

from diffsteer.rewards.base import Reward


class WeightedSum(Reward):
    """`sum_i w_i r_i(images, prompts)`; each part scores in chunks of its own `batch_size`.

    Args:
        rewards: the parts.
        weights: one weight per part (all 1 when omitted).
    """

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float] | None = None) -> None:
        super().__init__(batch_size=None)
        rewards = list(rewards)
        if not rewards or not all(isinstance(reward, Reward) for reward in rewards):
            raise ValueError(f"WeightedSum needs one or more Reward objects, got {rewards!r}.")
        weights = [1.0] * len(rewards) if weights is None else [float(weight) for weight in weights]
        if len(weights) != len(rewards):
            raise ValueError(
                f"WeightedSum got {len(rewards)} rewards but {len(weights)} weights; pass one per reward."
            )
        self.parts = torch.nn.ModuleList(rewards)
        self.weights = weights
        self.differentiable = all(reward.differentiable for reward in rewards)
        self.needs_prompts = any(reward.needs_prompts for reward in rewards)
        self.batch_relative = any(reward.batch_relative for reward in rewards)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return sum(weight * part(images, prompts) for weight, part in zip(self.weights, self.parts, strict=True))


class Scaled(Reward):
    """`scale * reward(images, prompts)`: a temperature for a potential, or a unit change."""

    def __init__(self, reward: Reward, scale: float) -> None:
        super().__init__(batch_size=None)
        if not isinstance(reward, Reward):
            raise ValueError(f"Scaled needs a Reward, got {reward!r}.")
        self.inner, self.scale = reward, float(scale)
        self.differentiable, self.needs_prompts = reward.differentiable, reward.needs_prompts
        self.batch_relative = reward.batch_relative

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.scale * self.inner(images, prompts)


class Negated(Scaled):
    """`-reward(images, prompts)`: turns a cost (say, JPEG size) into a reward."""

    def __init__(self, reward: Reward) -> None:
        super().__init__(reward, -1.0)


class RankEnsemble(Reward):
    """The verifier ensemble of "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps": each
    image's score is the mean, over the rewards, of its rank within the batch (1 = lowest, N = highest; ties share
    the mean of their ranks). Ranks put rewards on different scales on one footing.

    The score depends on the whole batch, so the pipelines call it on one prompt's particles at once. It is meant for
    selection (best-of-N, search); as an FK potential the weights of a particle depend on the rest of the population.

    Args:
        rewards: the verifiers.
    """

    batch_relative = True

    def __init__(self, rewards: Sequence[Reward]) -> None:
        super().__init__(batch_size=None)
        rewards = list(rewards)
        if not rewards or not all(isinstance(reward, Reward) for reward in rewards):
            raise ValueError(f"RankEnsemble needs one or more Reward objects, got {rewards!r}.")
        self.parts = torch.nn.ModuleList(rewards)
        self.needs_prompts = any(reward.needs_prompts for reward in rewards)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        ranks = [average_ranks(part(images, prompts)) for part in self.parts]
        return torch.stack(ranks).mean(0)


def average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N in ascending order, ties given the mean of the ranks they span (scipy's `rankdata`)."""
    scores = scores.detach().to(torch.float64)
    below = (scores[None, :] < scores[:, None]).sum(1).to(torch.float64)  # how many s_j < s_i
    at_most = (scores[None, :] <= scores[:, None]).sum(1).to(torch.float64)  # how many s_j <= s_i, i included
    return (below + 1 + at_most) / 2


class FunctionReward(Reward):
    """A plain function `fn(images, prompts) -> Tensor[N]` as a `Reward` (see `from_function`)."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor, list[str] | None], torch.Tensor],
        *,
        differentiable: bool,
        needs_prompts: bool = False,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size)
        if not callable(fn):
            raise ValueError(f"from_function needs a callable fn(images, prompts) -> scores, got {fn!r}.")
        self.fn, self.differentiable, self.needs_prompts = fn, bool(differentiable), bool(needs_prompts)

    def score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return torch.as_tensor(self.fn(images, prompts))


def from_function(
    fn: Callable[[torch.Tensor, list[str] | None], torch.Tensor],
    *,
    differentiable: bool,
    needs_prompts: bool = False,
    batch_size: int | None = None,
) -> Reward:
    """Wrap `fn(images, prompts) -> Tensor[N]` (images float in [0, 1], (N, 3, H, W)) as a `Reward`, so it gets the
    input checks, chunking and combinators of the built-in rewards."""
    return FunctionReward(fn, differentiable=differentiable, needs_prompts=needs_prompts, batch_size=batch_size)
