"""Helpers shared by the ``cnnlens`` sub-commands: the progress bar
(:mod:`cnnlens.core.progress`) and the option parsers of :mod:`cnnlens.pipelines.options`
(which the library pipelines use too)."""

from __future__ import annotations

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
    "resolve_device",
    "split_values",
]
