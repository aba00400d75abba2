"""Argument checks with one wording for the whole library (core API, particle core, worlds and pipelines).

The rule: a value of the wrong type raises `TypeError`, a value of the right type outside what the argument allows
raises `ValueError`. Both name the argument, say what it must be and show what was passed (with its type, so that
`'0.5'` and `0.5` are told apart). Numbers from numpy count as numbers (`np.int64(4)` is an integer, `np.float32(0.5)`
a real number); bools never do, although Python makes `True` an `int`: `interval=True` is a mistake, not 1.

Every check returns the value as the plain Python type (`int`, `float`, `str`) so that numpy scalars go no further.
"""

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any


_REPR_LIMIT = 80


def describe(value: Any) -> str:
    """`repr(value)` with its type name, shortened if long: `'0.5' (str)`, `2.5 (float)`."""
    text = repr(value)
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return f"{text} ({type(value).__name__})"


def is_integer(value: Any) -> bool:
    """True for Python and numpy integers; False for bools (numpy's `bool_` is not `numbers.Integral` anyway)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """True for Python and numpy integers and floats, False for bools, complex numbers, strings and tensors."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
    hint: str = "",
) -> int | None:
    """`value` as an `int`, if it is an integer in [minimum, maximum].

    Args:
        name: the argument's name, as the caller writes it.
        value: what was passed.
        minimum, maximum: inclusive bounds, or None for none.
        allow_none: accept (and return) None.
        hint: a sentence appended to the `ValueError`, saying how to fix it.

    Raises:
        TypeError: if `value` is not an integer (bools and floats such as 4.0 included).
        ValueError: if it is out of range.
    """
    if value is None and allow_none:
        return None
    if not is_integer(value):
        raise TypeError(f"{name} must be {_int_kind(minimum, maximum, allow_none)}, got {describe(value)}.")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_int_kind(minimum, maximum, allow_none)}, got {value}.{_hint(hint)}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    minimum_open: bool = False,
    maximum_open: bool = False,
    finite: bool = True,
    allow_none: bool = False,
    hint: str = "",
) -> float | None:
    """`value` as a `float`, if it is a real number in the given interval (and finite, unless `finite=False`).

    Args:
        name: the argument's name, as the caller writes it.
        value: what was passed.
        minimum, maximum: bounds, or None for none.
        minimum_open, maximum_open: exclude the bound itself.
        finite: refuse NaN and +-inf.
        allow_none: accept (and return) None.
        hint: a sentence appended to the `ValueError`, saying how to fix it.

    Raises:
        TypeError: if `value` is not a real number (strings, bools and tensors included).
        ValueError: if it is NaN or infinite (with `finite`), or outside the interval.
    """
    if value is None and allow_none:
        return None
    kind = _number_kind(minimum, maximum, minimum_open, maximum_open, allow_none)
    if not is_real(value):
        raise TypeError(f"{name} must be {kind}, got {describe(value)}.")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}.{_hint(hint)}")
    below = minimum is not None and (value <= minimum if minimum_open else value < minimum)
    above = maximum is not None and (value >= maximum if maximum_open else value > maximum)
    if below or above:
        raise ValueError(f"{name} must be {kind}, got {value}.{_hint(hint)}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str], *, message: str | None = None) -> str:
    """`value`, if it is one of the strings `choices`.

    Args:
        name: the argument's name.
        value: what was passed.
        choices: the allowed strings.
        message: the `ValueError`'s text for an unknown string, formatted with `value` (its repr) and `choices` (the
            list); defaults to "`name` must be one of [...], got 'value'."

    Raises:
        TypeError: if `value` is not a string.
        ValueError: if it is not one of `choices`.
    """
    choices = list(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {choices}, got {describe(value)}.")
    if value not in choices:
        template = message or "{name} must be one of {choices}, got {value}."
        raise ValueError(template.format(name=name, value=repr(value), choices=choices))
    return value


def check_callable(name: str, value: Any, what: str) -> Callable[..., Any]:
    """`value`, if it is callable; `what` says what it must be ("a callable reward(x) -> scores").

    Raises:
        TypeError: naming `name` and `what`.
    """
    if not callable(value):
        raise TypeError(f"{name} must be {what}, got {describe(value)}.")
    return value


def check_type(name: str, value: Any, types: type | tuple[type, ...], what: str) -> Any:
    """`value`, if it is an instance of `types`; `what` says what it must be ("a torch.Generator or None").

    Raises:
        TypeError: naming `name` and `what`.
    """
    if not isinstance(value, types):
        raise TypeError(f"{name} must be {what}, got {describe(value)}.")
    return value


def _hint(hint: str) -> str:
    return f" {hint}" if hint else ""


def _int_kind(minimum: int | None, maximum: int | None, allow_none: bool) -> str:
    if maximum is None:
        kind = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
    elif minimum is None:
        kind = f"an integer <= {maximum}"
    else:
        kind = f"an integer in [{minimum}, {maximum}]"
    return f"{kind} or None" if allow_none else kind


def _number_kind(
    minimum: float | None, maximum: float | None, minimum_open: bool, maximum_open: bool, allow_none: bool
) -> str:
    if minimum is not None and maximum is not None:
        kind = f"a number in {'(' if minimum_open else '['}{minimum:g}, {maximum:g}{')' if maximum_open else ']'}"
    elif minimum is not None:
        kind = f"a number {'>' if minimum_open else '>='} {minimum:g}"
    elif maximum is not None:
        kind = f"a number {'<' if maximum_open else '<='} {maximum:g}"
    else:
        kind = "a number"
    return f"{kind} or None" if allow_none else kind
