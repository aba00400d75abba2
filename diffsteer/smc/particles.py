"""A container for everything that has a particle dimension.

The classic bug of particle samplers is a per-particle tensor that resampling forgets (a cached model output, a
solver's history, a conditioning row): the sampler still runs and silently targets the wrong distribution. So every
per-particle quantity lives in one `Particles` object, and one `reindex(indices)` moves all of it together.
"""

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from diffsteer.smc.checks import check_int


@runtime_checkable
class Reindexable(Protocol):
    """Per-particle state kept outside a tensor (for example a scheduler's history) that knows how to reindex."""

    def reindex(self, indices: torch.Tensor) -> None: ...


def reindex_value(value: Any, indices: torch.Tensor) -> Any:
    """`value` with its particle dimension (dim 0) gathered at `indices`.

    Tensors are indexed; tuples, lists, dicts and NamedTuples are reindexed element by element; `None` and non-tensor
    leaves (ints, floats, strings) are shared by every particle and returned unchanged; `Reindexable` objects
    reindex themselves in place.
    """
    # The common cases first: `isinstance` against a runtime-checkable Protocol is slow (it inspects attributes),
    # and this runs for every field at every resampling step.
    if isinstance(value, torch.Tensor):
        # index_select, not value[indices]: same rows, without advanced indexing's parallel region (tens of
        # microseconds per field on a loaded CPU).
        return value.index_select(0, indices.to(value.device))
    if value is None or isinstance(value, int | float | str):
        return value
    if isinstance(value, dict):
        return {key: reindex_value(item, indices) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(reindex_value(item, indices) for item in value))
    if isinstance(value, list | tuple):
        return type(value)(reindex_value(item, indices) for item in value)
    if callable(getattr(value, "reindex", None)):  # a Reindexable, without the Protocol's slow isinstance
        value.reindex(indices)
    return value


class Particles:
    """Named per-particle fields with one atomic `reindex`.

    Fields are set and read as attributes (`particles.latents = x`). Tensors must have the particle count as their
    first dimension; containers of tensors and `Reindexable` objects are allowed too.

    Args:
        num_particles (`int`): the number of particles N.
        **fields: initial fields.
    """

    def __init__(self, num_particles: int, **fields: Any) -> None:
        object.__setattr__(self, "num_particles", check_int("num_particles", num_particles, minimum=1))
        object.__setattr__(self, "_fields", {})
        for name, value in fields.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        _check_particle_dim(name, value, self.num_particles)
        self._fields[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"Particles has no field {name!r}; fields are {sorted(self._fields)}.") from None

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def reindex(self, indices: torch.Tensor) -> None:
        """Replace every field by its rows at `indices` (ancestor indices from a resampling scheme)."""
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a 1-D integer torch.Tensor, got {type(indices).__name__}.")
        if indices.ndim != 1 or indices.numel() != self.num_particles:
            raise ValueError(
                f"indices must have shape ({self.num_particles},) to keep the particle count, "
                f"got {tuple(indices.shape)}."
            )
        for name, value in self._fields.items():
            self._fields[name] = reindex_value(value, indices)


def _check_particle_dim(name: str, value: Any, num_particles: int) -> None:
    if isinstance(value, torch.Tensor) and (value.ndim == 0 or value.shape[0] != num_particles):
        raise ValueError(
            f"Field {name!r} must have the particle count {num_particles} as its first dimension, "
            f"got shape {tuple(value.shape)}."
        )
    if isinstance(value, list | tuple | dict):
        for item in value.values() if isinstance(value, dict) else value:
            _check_particle_dim(name, item, num_particles)
