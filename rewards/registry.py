"""Rewards by name: `load("image-reward")`, `register("my-reward")`, `available()`."""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from diffsteer.rewards.base import Reward


@dataclass(frozen=True)
class RewardSpec:
    """A registered reward.

    Attributes:
        name: the name `load` takes.
        factory: builds the reward from keyword options.
        source: where its weights come from (a hub id, a path inside the package, or "none").
        needs_download: whether the default weights come from the hub (and so fail offline without a local path).
        differentiable: whether gradients reach the images.
        summary: one line on what it scores.
    """

    name: str
    factory: Callable[..., Reward]
    source: str
    needs_download: bool
    differentiable: bool
    summary: str


_REGISTRY: dict[str, RewardSpec] = {}


def register(
    name: str,
    *,
    source: str = "none",
    needs_download: bool = False,
    differentiable: bool,
    summary: str = "",
) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """Decorator registering a reward factory (a `Reward` subclass or a function returning one) under `name`.

    Example:
        ```py
        @diffsteer.rewards.register("redness", differentiable=True, summary="mean of the red channel")
        def redness() -> Reward:
            return diffsteer.rewards.from_function(lambda images, prompts: images[:, 0].mean((1, 2)))
        ```
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register needs a non-empty name, got {name!r}.")

    def decorate(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"A reward named {name!r} is already registered; pick another name.")
        _REGISTRY[name] = RewardSpec(name, factory, source, needs_download, differentiable, summary)
        return factory

    return decorate


def available() -> list[RewardSpec]:
    """The registered rewards, sorted by name, with their weights source and whether they need a download."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_spec(name: str) -> RewardSpec:
    """The registration of `name`, without building the reward.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(
            f"Unknown reward {name!r}; available rewards: {known}. Add one with diffsteer.rewards.register."
        )
    return _REGISTRY[name]


def load(name: str, **options: object) -> Reward:
    """Build the reward registered as `name` with its keyword `options` (for example a local weights path).

    Raises:
        ValueError: for an unknown name (listing the known ones) or an option the reward does not take.
        OSError: when its weights are neither local nor reachable on the hub (the message names the hub id).
    """
    factory = get_spec(name).factory
    signature = inspect.signature(factory)
    try:
        signature.bind(**options)
    except TypeError as error:
        accepted = ", ".join(parameter for parameter in signature.parameters if parameter != "self") or "none"
        raise ValueError(f"Reward {name!r}: {error}. Its options are: {accepted}.") from None
    return factory(**options)
