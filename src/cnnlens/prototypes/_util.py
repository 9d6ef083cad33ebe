"""Argument checks and small helpers private to :mod:`cnnlens.prototypes`.

Layers, freezing, autograd and normalization come from :mod:`cnnlens.core` and
:mod:`cnnlens.data`; only what is particular to optimizing inputs lives here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from cnnlens.core.capture import grad_enabled
from cnnlens.core.device import model_device_dtype
from cnnlens.data.presets import Preset, get_preset
from cnnlens.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


def with_grad(func: F) -> F:
    """Run ``func`` with autograd on, so that the tensors it creates are ordinary ones even
    when the caller is inside ``torch.no_grad()`` or ``torch.inference_mode()``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with grad_enabled():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model (CPU float32 for a model without tensors)."""
    device, dtype = model_device_dtype(model)
    return device or torch.device("cpu"), dtype or torch.float32


def preset_for(preset: Any, channels: int) -> Preset:
    """The :class:`~cnnlens.data.Preset` for ``preset`` (None, a name, or an object with
    ``mean`` and ``std``), checked against the images' channel count up front.

    Raises:
        InputError: statistics for another number of channels.
    """
    found = get_preset(preset)
    if found.channels is not None and found.channels != channels:
        raise InputError(
            f"preset {found.name!r} has {found.channels} channel values but the images have "
            f"{channels} channels"
        )
    return found


def as_index_list(value: int | Sequence[int] | Tensor, what: str) -> list[int]:
    """An int, a sequence of ints or a 0-/1-D integer tensor as a list of ints."""
    if isinstance(value, Tensor):
        if value.dim() > 1 or value.is_floating_point():
            raise InputError(f"{what} must be an int or a 1-D integer sequence, got {value!r}")
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, bool):
        raise InputError(f"{what} must be an int or a sequence of ints, got a bool")
    if isinstance(value, int):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise InputError(
            f"{what} must be an int or a sequence of ints, got {type(value).__name__}"
        ) from None
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise InputError(f"{what} must be a non-empty sequence of ints, got {items!r}")
    return items
