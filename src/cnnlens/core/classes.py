"""Class indices from what a user types: indices, ranges and class names, checked against
the model's classes (shared by ``cnnlens explain``, ``cnnlens.dataset`` and the CLI).

- :func:`split_values`: repeated and comma-separated option values as one list;
- :func:`parse_class_list`: class indices from indices, names and ranges, with errors that
  name what exists.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from cnnlens.errors import TargetError

__all__ = ["parse_class_list", "split_values"]


def split_values(values: Iterable[Any] | None) -> list[str]:
    """Repeated option values, each possibly comma-separated, as one flat list of strings."""
    out: list[str] = []
    for value in values or []:
        out.extend(part.strip() for part in str(value).split(",") if part.strip())
    return out


def _classes_like(item: str, names: Sequence[str]) -> tuple[list[str], str]:
    """Class names that contain ``item`` as a word, else as a part, else the nearest by
    spelling (difflib); with the word for the message."""
    word = re.compile(rf"\b{re.escape(item.lower())}\b")
    for found, how in (
        ([n for n in names if word.search(n.lower())], "classes with that word"),
        ([n for n in names if item.lower() in n.lower()], "classes containing it"),
        (difflib.get_close_matches(item, names, n=5, cutoff=0.5), "nearest"),
    ):
        if found:
            return found, how
    return [], "classes"


def _index(text: str, option: str, num_classes: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TargetError(f"{option} takes class indices, got {text!r}") from None
    if not 0 <= value < num_classes:
        raise TargetError(
            f"{option} {value} is out of range: the model has {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    return value


def parse_class_list(
    values: Sequence[str] | None,
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    option: str = "--target",
    by_name: bool | None = None,
) -> list[int]:
    """Class indices from option values: indices (``3``), ranges (``0-4``), or class names.

    Values may repeat and be comma-separated (``--target 3,5 --target 7``). Duplicates are
    dropped, the order kept.

    Args:
        values: the option's raw values.
        num_classes: the model's number of outputs.
        class_names: the model's class names (needed for names).
        option: the option's name, for error messages.
        by_name: True: every value is a class name; False: every value is an index or a range;
            None: a value that is a known class name is a name, else an index or range.

    Raises:
        TargetError: an index out of range, or a name the model does not have (the message
            names the nearest class names, or says that the model has none).
    """
    names = list(class_names or [])
    lookup = {n: i for i, n in enumerate(names)}
    lower = {n.lower(): i for i, n in enumerate(names)}
    out: list[int] = []
    for item in split_values(values):
        if by_name is True or (by_name is None and item in lookup):
            if item in lookup:
                idx = [lookup[item]]
            elif item.lower() in lower:
                idx = [lower[item.lower()]]
            elif not names:
                raise TargetError(
                    f"{option} {item!r}: the model has no class names; give class indices "
                    f"0..{num_classes - 1} with --target"
                )
            else:
                close, how = _classes_like(item, names)
                pool = close or names
                more = "" if len(pool) <= 10 else f" (and {len(pool) - 10} more)"
                raise TargetError(
                    f"{option} {item!r} is not a class of the model; "
                    f"{how}: {', '.join(pool[:10])}{more}"
                )
        else:
            lo, sep, hi = item.partition("-")
            if sep and lo.strip() and hi.strip():
                a, b = (
                    _index(lo.strip(), option, num_classes),
                    _index(hi.strip(), option, num_classes),
                )
                if b < a:
                    raise TargetError(f"{option} range {item!r} must go from low to high")
                idx = list(range(a, b + 1))
            else:
                idx = [_index(item, option, num_classes)]
        out.extend(i for i in idx if i not in out)
    return out
