"""Argument checks shared by every layer: one line naming the argument, what was expected
and what was given, raised as :class:`~cnnlens.errors.InputError` (or a subclass passed in).

Each check returns the value in its canonical type, so a call site reads
``n = check_int("n_steps", n_steps)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeVar

from cnnlens.errors import CnnlensError, InputError

__all__ = [
    "check_choice",
    "check_flag",
    "check_float",
    "check_int",
    "check_optional_int",
    "check_pair",
    "check_sides",
]

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = 1,
    maximum: int | None = None,
    error: type[CnnlensError] = InputError,
) -> int:
    """``value`` as an int in [``minimum``, ``maximum``] (either bound may be None).

    Example:
        >>> check_int("n_steps", 16)
        16
    """
    ok = _is_int(value)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        raise error(f"{name} must be {_integer(minimum, maximum)}, got {value!r}")
    return int(value)


def check_optional_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = 1,
    maximum: int | None = None,
    error: type[CnnlensError] = InputError,
) -> int | None:
    """None, or :func:`check_int`."""
    if value is None:
        return None
    return check_int(name, value, minimum=minimum, maximum=maximum, error=error)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    error: type[CnnlensError] = InputError,
) -> float:
    """``value`` as a finite float in the bounds (``strict_minimum``: ``> minimum``).

    Booleans, NaN and infinities are refused.
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        low = None if minimum is None else (f"> {minimum}" if strict_minimum else f">= {minimum}")
        high = None if maximum is None else f"<= {maximum}"
        bounds = " and ".join(b for b in (low, high) if b)
        raise error(
            f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}"
        )
    return float(value)


def check_pair(name: str, value: Any) -> tuple[int, int]:
    """An int or an (h, w) pair of positive ints, as a pair."""
    pair = (value, value) if _is_int(value) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(not _is_int(v) or v < 1 for v in pair)
    ):
        raise InputError(
            f"{name} must be a positive integer or an (h, w) pair of them, got {value!r}"
        )
    return int(pair[0]), int(pair[1])


def check_sides(name: str, value: Any) -> tuple[int, ...]:
    """An int (as an (h, w) pair), an (h, w) pair or a video's (t, h, w) triple of positive
    ints, as a tuple."""
    sides = (value, value) if _is_int(value) else value
    if (
        not isinstance(sides, (tuple, list))
        or len(sides) not in (2, 3)
        or any(not _is_int(v) or v < 1 for v in sides)
    ):
        raise InputError(
            f"{name} must be a positive integer, an (h, w) pair or a (t, h, w) triple of them "
            f"(video), got {value!r}"
        )
    return tuple(int(v) for v in sides)


def check_flag(name: str, value: Any) -> bool | None:
    """``value`` if it is True, False or None (automatic)."""
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{name} must be True, False or None (automatic), got {value!r}")
    return value


def check_choice(
    name: str, value: Any, choices: Iterable[T], *, error: type[CnnlensError] = InputError
) -> T:
    """``value`` if it is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise error(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def _integer(minimum: int | None, maximum: int | None) -> str:
    """What :func:`check_int` expects, in words: "a positive integer", "an integer in [a, b]"."""
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if maximum is not None:
        return f"an integer <= {maximum}"
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return "an integer" if minimum is None else f"an integer >= {minimum}"
