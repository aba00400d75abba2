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
    leaves (ints, floats, strings) are shared by every particle and returned unchanged; objects with a
    `take(indices)` method return their reindexed copy, and `Reindexable` objects reindex themselves in place.
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
    take = getattr(value, "take", None)
    if callable(take):  # a value that builds its own reindexed copy (a solver's state)
        return take(indices)
    if callable(getattr(value, "reindex", None)):  # a Reindexable, without the Protocol's slow isinstance
        value.reindex(indices)
    return value


def concat_values(values: list[Any]) -> Any:
    """The values of several particle sets (the same field of each) joined along the particle dimension.

    Tensors are concatenated; containers are joined element by element; `None` and non-tensor leaves are shared, so
    the first is kept; objects with a `cat(values)` class method (a solver's state) join themselves.
    """
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if first is None or isinstance(first, int | float | str):
        return first
    if isinstance(first, dict):
        return {key: concat_values([value[key] for value in values]) for key in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(concat_values(list(items)) for items in zip(*values, strict=True)))
    if isinstance(first, list | tuple):
        return type(first)(concat_values(list(items)) for items in zip(*values, strict=True))
    cat = getattr(type(first), "cat", None)
    if callable(cat):
        return cat(values)
    raise TypeError(f"Particles fields of type {type(first).__name__} cannot be joined.")


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
        """Replace every field by its rows at `indices` (ancestor indices from a resampling scheme), in place."""
        _check_indices(indices, self.num_particles)
        if indices.numel() != self.num_particles:
            raise ValueError(
                f"indices must have shape ({self.num_particles},) to keep the particle count (Particles.take may "
                f"change it), got {tuple(indices.shape)}."
            )
        for name, value in self._fields.items():
            self._fields[name] = reindex_value(value, indices)

    def take(self, indices: torch.Tensor) -> "Particles":
        """New particles made of the rows at `indices`, any number of them (copies, a subset, K children each):
        every field, the solver's per-particle history included, moves with its row.

        Fields that hold state in place (`Reindexable` objects) are shared with this object, so use the result and
        drop this one, or take again from the result.
        """
        _check_indices(indices, self.num_particles)
        taken = Particles.__new__(Particles)
        object.__setattr__(taken, "num_particles", int(indices.numel()))
        object.__setattr__(
            taken, "_fields", {name: reindex_value(value, indices) for name, value in self._fields.items()}
        )
        return taken


def cat_particles(parts: list["Particles"]) -> "Particles":
    """One set of particles made of `parts` in order (they must have the same fields)."""
    names = list(parts[0]._fields)
    for part in parts[1:]:
        if list(part._fields) != names:
            raise ValueError(f"Particles with fields {names} and {list(part._fields)} cannot be joined.")
    joined = Particles.__new__(Particles)
    object.__setattr__(joined, "num_particles", sum(part.num_particles for part in parts))
    object.__setattr__(
        joined, "_fields", {name: concat_values([part._fields[name] for part in parts]) for name in names}
    )
    return joined


def _check_indices(indices: torch.Tensor, num_particles: int) -> None:
    # Out-of-range indices are left to index_select, which names them: a range check here would cost two host syncs.
    if not isinstance(indices, torch.Tensor) or indices.dtype in (torch.bool, *_FLOATS) or indices.is_complex():
        raise TypeError(f"indices must be a 1-D integer torch.Tensor, got {type(indices).__name__}.")
    if indices.ndim != 1 or indices.numel() == 0:
        raise ValueError(f"indices must be a non-empty 1-D tensor, got shape {tuple(indices.shape)}.")


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_particle_dim(name: str, value: Any, num_particles: int) -> None:
    if isinstance(value, torch.Tensor) and (value.ndim == 0 or value.shape[0] != num_particles):
        raise ValueError(
            f"Field {name!r} must have the particle count {num_particles} as its first dimension, "
            f"got shape {tuple(value.shape)}."
        )
    if isinstance(value, list | tuple | dict):
        for item in value.values() if isinstance(value, dict) else value:
            _check_particle_dim(name, item, num_particles)
