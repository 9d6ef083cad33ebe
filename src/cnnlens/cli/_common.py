"""Helpers shared by the ``cnnlens`` sub-commands: the progress bar
(:mod:`cnnlens.core.progress`) and the option parsers of :mod:`cnnlens.pipelines.options`
(which the library pipelines use too)."""

from __future__ import annotations

from typing import TypeVar

from cnnlens.core.progress import Progress, progress_bar
from cnnlens.pipelines.options import (
    class_names_for,
    load_model,
    parse_class_list,
    parse_method_options,
    parse_value,
    resolve_device,
    split_values,
)

__all__ = [
    "Progress",
    "class_names_for",
    "load_model",
    "parse_class_list",
    "parse_method_options",
    "parse_value",
    "progress_bar",
    "renamed",
    "resolve_device",
    "split_values",
]

_T = TypeVar("_T")


def renamed(new_value: _T, old_value: _T | None, old: str, new: str) -> _T:
    """The value of an option renamed from ``old`` to ``new``: the old spelling still works
    and prints one deprecation line on stderr (issue 18: one meaning per option name)."""
    if old_value is None:
        return new_value
    import typer

    typer.echo(f"warning: {old} is deprecated; use {new}", err=True)
    return old_value
