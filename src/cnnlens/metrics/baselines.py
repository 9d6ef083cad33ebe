"""Baseline maps that every metric is compared with, so each number has a floor.

* :func:`random_maps`: uniform noise, what a method that knows nothing scores;
* :func:`centre_maps`: a Gaussian bump at the image centre, what the photographer's centre
  bias alone scores (objects in datasets are often centred).

A method that does not beat both on a metric has not shown anything on that metric.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnnlens.errors import InputError

__all__ = ["centre_maps", "random_maps"]


def _check_like(like: Tensor) -> None:
    if not isinstance(like, Tensor) or like.dim() < 2:
        shape = tuple(like.shape) if isinstance(like, Tensor) else type(like).__name__
        raise InputError(f"like must be a tensor of maps (..., H, W), got {shape}")


def random_maps(like: Tensor, seed: int = 0) -> Tensor:
    """Maps of independent uniform noise in [0, 1), shaped like ``like`` (..., H, W).

    Drawn from a CPU generator seeded with ``seed`` (the same numbers on every device), then
    moved to ``like``'s device; float32 unless ``like`` is another floating dtype.

    Example:
        >>> floor = pointing_game(random_maps(exp.maps, seed=0), masks)   # doctest: +SKIP
    """
    _check_like(like)
    g = torch.Generator().manual_seed(int(seed))
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return torch.rand(like.shape, generator=g, dtype=torch.float32).to(like.device, dtype)


def centre_maps(like: Tensor, sigma: float = 0.25) -> Tensor:
    """Maps of an isotropic Gaussian at the image centre, shaped like ``like`` (..., H, W).

    $$M_{ij} = \\exp\\Big(-\\frac{(i - c_i)^2 + (j - c_j)^2}{2 (\\sigma \\min(H, W))^2}\\Big)$$

    with $(c_i, c_j) = ((H-1)/2, (W-1)/2)$, scaled so the maximum is 1.

    Args:
        like: maps whose shape, device and dtype to copy.
        sigma: the Gaussian's standard deviation as a fraction of the shorter side.
    """
    _check_like(like)
    if not sigma > 0:
        raise InputError(f"sigma must be > 0 (a fraction of the shorter side), got {sigma!r}")
    h, w = like.shape[-2:]
    s = sigma * min(h, w)
    i = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    j = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    m = torch.exp(-(i.view(-1, 1) ** 2 + j.view(1, -1) ** 2) / (2 * s * s))
    m = m / m.max()
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return m.to(like.device, dtype).expand(like.shape).clone()
