"""cnnlens.core.checks: one-line argument errors naming the argument, the expectation and
the value; canonical values returned."""

from __future__ import annotations

import math

import pytest

from cnnlens.core.checks import (
    check_choice,
    check_flag,
    check_float,
    check_int,
    check_optional_int,
    check_pair,
)
from cnnlens.errors import InputError, ModelError


def test_check_int_bounds_and_messages() -> None:
    assert check_int("n", 3) == 3
    assert check_int("seed", 0, minimum=0) == 0
    assert check_int("k", 5, minimum=1, maximum=5) == 5
    cases = [
        ({"value": 0}, "n must be a positive integer, got 0"),
        ({"value": True}, "n must be a positive integer, got True"),
        ({"value": 2.0}, "n must be a positive integer, got 2.0"),
        ({"value": -1, "minimum": 0}, "n must be a non-negative integer, got -1"),
        ({"value": 9, "minimum": 1, "maximum": 5}, r"n must be an integer in \[1, 5\], got 9"),
        ({"value": 3, "minimum": 16}, "n must be an integer >= 16, got 3"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=f"^{message}$"):
            check_int("n", **kwargs)
    with pytest.raises(ModelError, match="num_classes"):
        check_optional_int("num_classes", 0, error=ModelError)
    assert check_optional_int("top_channels", None) is None


def test_check_float_pair_flag_choice() -> None:
    assert check_float("p", 1, minimum=0.0, strict_minimum=True, maximum=1.0) == 1.0
    for bad in (0.0, 1.5, math.nan, math.inf, True, "0.5"):
        with pytest.raises(InputError, match=r"^p must be a finite number > 0\.0 and <= 1\.0"):
            check_float("p", bad, minimum=0.0, strict_minimum=True, maximum=1.0)
    assert check_pair("window", 4) == (4, 4)
    assert check_pair("window", [2, 3]) == (2, 3)
    for bad in (0, (1, 0), (1, 2, 3), True, "4"):
        with pytest.raises(InputError, match=r"^window must be a positive integer or an"):
            check_pair("window", bad)
    assert check_flag("optimize", None) is None and check_flag("optimize", False) is False
    with pytest.raises(InputError, match="optimize must be True, False or None"):
        check_flag("optimize", 1)
    assert check_choice("reduce", "abs", ("abs", "sum")) == "abs"
    with pytest.raises(InputError, match="reduce must be one of 'abs', 'sum'; got 'max'"):
        check_choice("reduce", "max", ("abs", "sum"))
