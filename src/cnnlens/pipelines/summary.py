"""The layer-by-layer summary of a model name or a checkpoint path (the library side of
``cnnlens summary``).

The model is built on the ``meta`` device (shapes only: no weights are read or allocated),
falling back to the CPU for the few architectures that cannot be built there.

Example:
    >>> build_summary("resnet50", "3,224,224").totals_lines()        # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cnnlens.errors import InputError

__all__ = ["architecture_of", "build_summary", "parse_size"]

logger = logging.getLogger(__name__)

_CPU_RETRY_MAX_PARAMS = 50_000_000


def parse_size(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` (or ``3x224x224``, or with a batch size first) as a tuple of ints."""
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as err:
        raise InputError(
            f"--input-size must be C,H,W or B,C,H,W integers (e.g. 3,224,224), got {text!r}"
        ) from err
    if len(dims) not in (3, 4):
        raise InputError(
            f"--input-size must be C,H,W or B,C,H,W integers (e.g. 3,224,224), got {text!r}"
        )
    if min(dims) < 1 or max(dims[-2:]) > _MAX_SIDE or max(dims[:-2]) > _MAX_CHANNELS_OR_BATCH:
        raise InputError(
            f"--input-size must be positive, with H and W at most {_MAX_SIDE} and C (and B) at "
            f"most {_MAX_CHANNELS_OR_BATCH}, got {text!r}"
        )
    return dims


#: Bounds of ``--input-size`` (checked before any tensor is allocated).
_MAX_SIDE = 4096
_MAX_CHANNELS_OR_BATCH = 1024


def architecture_of(model: str) -> tuple[str, dict[str, Any], tuple[int, ...], torch.dtype]:
    """(arch, arch_kwargs, default (C, H, W), dtype) for a name or a checkpoint path."""
    from cnnlens import models
    from cnnlens.models.weights import looks_like_path

    if Path(model).expanduser().is_file() or looks_like_path(model):
        info = models.read_checkpoint_info(model)
        dtype = getattr(torch, info.dtype, torch.float32)
        return info.arch, info.arch_kwargs, (info.in_channels, *info.input_size), dtype
    spec = models.get_spec(model)
    return spec.name, {}, (spec.in_channels, *spec.input_size), torch.float32


def build_summary(model: str, input_size: str | None = None, depth: int | None = None) -> Any:
    """The :class:`~cnnlens.summary.ModelSummary` of a model name or checkpoint path."""
    from cnnlens import models
    from cnnlens.summary import summary

    arch, kwargs, default_size, dtype = architecture_of(model)
    size = parse_size(input_size) if input_size else default_size
    try:
        with torch.device("meta"):
            net = models.create(arch, **kwargs)
        return summary(net.to(dtype), size, depth=depth)
    except NotImplementedError as err:  # an op without a meta kernel: use real tensors
        logger.info("%s cannot run on the meta device (%s); using the CPU", arch, err)
    except InputError:
        # meta tensors give terse shape errors; for a small model, repeat on the CPU to
        # raise PyTorch's fuller message
        if sum(p.numel() for p in net.parameters()) > _CPU_RETRY_MAX_PARAMS:
            raise
    net = models.create(arch, **kwargs).to(dtype)
    return summary(net, size, depth=depth)
