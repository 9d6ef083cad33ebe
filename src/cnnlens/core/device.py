"""Where a model lives: the device and floating dtype of its tensors."""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

__all__ = ["model_device", "model_device_dtype"]


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
