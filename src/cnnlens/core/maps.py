"""Map post-processing shared by every method: bilinear resizing and per-map min-max
normalization to [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalize_maps", "upsample"]


def normalize_maps(maps: Tensor, dims: int = 2) -> Tensor:
    """Min-max normalize each map (the last ``dims`` dims: 2 for (H, W), 3 for a video's
    (T, H, W)) to [0, 1]; constant maps become zeros.

    Non-finite values are treated as zero so a map is never NaN.
    """
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.flatten(-dims)
    tail = (None,) * dims
    lo = flat.amin(-1)[(..., *tail)]
    hi = flat.amax(-1)[(..., *tail)]
    span = hi - lo
    scale = torch.maximum(hi.abs(), lo.abs())
    flat_map = span <= torch.finfo(torch.float32).eps * scale + torch.finfo(torch.float32).tiny
    out = (maps - lo) / torch.where(flat_map, torch.ones_like(span), span)
    return out.masked_fill(flat_map, 0.0).clamp_(0.0, 1.0)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize (..., h, w) maps to ``size`` (align_corners=False)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)
