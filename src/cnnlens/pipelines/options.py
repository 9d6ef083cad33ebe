"""Options of the pipelines, from the texts a user types (shared by ``cnnlens explain``,
``cnnlens assess`` and the library calls behind them).

- :func:`check_out_dir`: an output folder that is not a file;
- :func:`resolve_device`: ``cpu``, ``cuda`` or ``cuda:N``, checked to be usable;
- :func:`load_model`: a model from a name (plus optional weights) or a checkpoint path;
- :func:`split_values`: repeated and comma-separated option values as one list;
- :func:`parse_value` / :func:`parse_method_options`: ``[METHOD.]KEY=VALUE`` method options;
- :func:`method_options`: the options a method class's constructor takes;
- :func:`parse_class_list`: class indices from indices, names and ranges, checked against
  the model's classes with errors that name what exists.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlens.errors import InputError, TargetError
from cnnlens.pipelines.outdir import probe_writable

logger = logging.getLogger(__name__)

__all__ = [
    "check_out_dir",
    "class_names_for",
    "load_model",
    "method_options",
    "parse_class_list",
    "parse_method_options",
    "parse_value",
    "resolve_device",
    "split_values",
]


def method_options(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that the method class's constructor accepts."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        named = {k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        # a wrapper (SmoothGrad) passes unknown keywords to its base method: keep only its own
        return {k: v for k, v in options.items() if k in named}
    return {k: v for k, v in options.items() if k in params}


def check_out_dir(out: str | Path, option: str = "--out") -> Path:
    """``out`` as a Path, checked to be a folder that exists or can be created, and can be
    written (:func:`~cnnlens.pipelines.outdir.probe_writable`; nothing is created).

    Raises:
        InputError: when ``out`` exists and is not a folder, lies under a file, or cannot be
            written.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {str(path)!r} exists and is not a folder")
    return probe_writable(path, option)


def resolve_device(text: str) -> torch.device:
    """A torch device from ``cpu``, ``cuda`` or ``cuda:N``, checked to be usable.

    Raises:
        InputError: for another text, or a CUDA device that this machine does not have.
    """
    value = (text or "cpu").strip().lower()
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {text} was asked for but no CUDA device is available "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(
                f"--device {text}: this machine has {count} CUDA device(s), "
                f"cuda:0..cuda:{count - 1}"
            )
    return device


def load_model(
    model: str, weights: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """``(model, ModelInfo)`` from a model name (with optional weights) or a checkpoint path.

    The model is in eval mode on ``device``. Errors are the CnnlensError subclasses of
    :func:`cnnlens.models.load` (unknown name, unreadable or unfitting weights).
    """
    from cnnlens import models

    dev = resolve_device(device) if isinstance(device, str) else device
    return models.load(model, weights=weights, device=dev)


def class_names_for(info: Any, num_classes: int) -> list[str]:
    """The model's class names, or ``"0"``, ``"1"``, ... when it has none (or a wrong count)."""
    names = list(getattr(info, "class_names", None) or [])
    if names and len(names) != num_classes:
        logger.warning(
            "the model has %d outputs but %d class names; using class indices as names",
            num_classes,
            len(names),
        )
        names = []
    return names or [str(i) for i in range(num_classes)]


def split_values(values: Iterable[Any] | None) -> list[str]:
    """Repeated option values, each possibly comma-separated, as one flat list of strings."""
    out: list[str] = []
    for value in values or []:
        out.extend(part.strip() for part in str(value).split(",") if part.strip())
    return out


def parse_value(raw: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw.strip()


def parse_method_options(
    values: Sequence[str] | None, methods: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per-method options from ``KEY=VALUE`` (every method whose constructor takes KEY) and
    ``METHOD.KEY=VALUE`` (that method only) texts.

    Returns:
        method name -> its options (only for methods in ``methods``).

    Raises:
        InputError: a text that is not ``[METHOD.]KEY=VALUE``, a METHOD that is not among
            ``methods``, or a KEY that none of the methods it applies to takes.
    """
    from cnnlens.core.registry import get_method

    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for text in values or []:
        key, sep, raw = str(text).partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--option must look like KEY=VALUE or METHOD.KEY=VALUE, got {text!r}")
        method, dot, name = key.rpartition(".")
        if dot and method not in out:
            raise InputError(
                f"--option {text!r} names method {method!r}, which is not among the methods "
                f"run ({', '.join(methods)})"
            )
        targets = [method] if dot else list(methods)
        took = [m for m in targets if method_options(get_method(m), {name: None})]
        if not took:
            raise InputError(f"--option {text!r}: {_unknown_option(name, targets)}")
        for m in took:
            out[m][name] = parse_value(raw)
    return out


def _option_names(cls: type) -> list[str]:
    """The options a method class's constructor takes (not the model or the wrapped method)."""
    params = inspect.signature(cls.__init__).parameters.values()
    skip = {"self", "model", "method"}
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.name not in skip and p.kind in plain]


def _unknown_option(name: str, methods: Sequence[str]) -> str:
    """Why no method in ``methods`` takes option ``name``: the nearest option names (difflib)
    and each method's options."""
    from cnnlens.core.registry import get_method

    known = {m: _option_names(get_method(m)) for m in methods}
    every = sorted({o for names in known.values() for o in names})
    close = difflib.get_close_matches(name, every, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    listed = "; ".join(f"{m} takes {', '.join(o) or 'no options'}" for m, o in known.items())
    return f"no method among {', '.join(methods)} takes an option {name!r}{hint} ({listed})"


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
