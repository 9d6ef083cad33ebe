"""Options of the pipelines, from the texts a user types (shared by ``cnnlens explain``,
``cnnlens assess`` and the library calls behind them).

- :func:`check_out_dir`: an output folder that is not a file;
- :func:`resolve_device`: ``cpu``, ``cuda`` or ``cuda:N``, checked to be usable (it lives in
  :mod:`cnnlens.core.device`, re-exported here);
- :func:`load_model`: a model from a name (plus optional weights) or a checkpoint path;
- :func:`split_values`: repeated and comma-separated option values as one list
  (:mod:`cnnlens.core.classes`);
- :func:`parse_value` / :func:`parse_method_options`: ``[METHOD.]KEY=VALUE`` method options;
- :func:`method_options`: the options a method class's constructor takes;
- :func:`parse_class_list`: class indices from indices, names and ranges, checked against
  the model's classes with errors that name what exists (:mod:`cnnlens.core.classes`, so
  that ``cnnlens.dataset`` reads them without importing the pipelines).
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlens.core.classes import parse_class_list, split_values
from cnnlens.core.device import resolve_device
from cnnlens.errors import InputError
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
