"""Where a model lives: the device and floating dtype of its tensors, and the device a user
asks for (``cpu``, ``cuda``, ``cuda:N``), checked to be usable."""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from cnnlens.errors import InputError

__all__ = ["model_device", "model_device_dtype", "resolve_device"]


def model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and dtype of the model's first floating parameter (or buffer); ``(None, None)``
    for a model without floating tensors."""
    for t in chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return None, None


def model_device(model: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter or buffer (``fallback`` when it has none)."""
    for t in chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device(fallback)


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
