"""Similarity of two batches of maps, as the sanity checks use it (Adebayo et al. 2018).

* :func:`spearman`: Spearman rank correlation per pair of maps (ties get average ranks);
* :func:`ssim`: the structural similarity index of Wang et al. (2004) per pair of maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlens.errors import InputError

__all__ = ["rank", "spearman", "ssim"]


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise InputError("maps to compare must be tensors")
    if a.shape != b.shape:
        raise InputError(
            f"maps to compare must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dim() < 2:
        raise InputError(f"maps to compare must be (B, ...), got {tuple(a.shape)}")
    return a, b.to(a.device)


def rank(values: Tensor) -> Tensor:
    """1-based ranks along the last axis, ties given their average rank, float64."""
    v = values.double()
    s = v.sort(dim=-1).values.contiguous()
    left = torch.searchsorted(s, v.contiguous(), right=False)
    right = torch.searchsorted(s, v.contiguous(), right=True)
    return (left + right + 1).double() / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps, (B,).

    The Pearson correlation of the ranks $R$ of the flattened maps (Spearman 1904):

    $$\\rho = \\frac{\\sum_p (R_p(a) - \\bar R(a))(R_p(b) - \\bar R(b))}
    {\\sqrt{\\sum_p (R_p(a) - \\bar R(a))^2 \\sum_p (R_p(b) - \\bar R(b))^2}}$$

    Tied values share their average rank (as ``scipy.stats.spearmanr``). A constant map has
    no ranking to share, so its correlation with anything is defined as 0 (scipy gives NaN).

    Args:
        a: maps (B, ...), flattened per row.
        b: maps of the same shape.

    Returns:
        float (B,) in [-1, 1].
    """
    a, b = _pair(a, b)
    ra, rb = rank(a.flatten(1)), rank(b.flatten(1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    rho = (ra * rb).sum(dim=1) / den.clamp(min=1e-300)
    return torch.where(den > 0, rho, torch.zeros_like(rho)).clamp(-1, 1).float()


def _window(h: int, w: int, win_size: int, sigma: float, device: torch.device) -> Tensor:
    size = min(win_size, h, w)
    size -= 1 - size % 2  # odd
    r = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g.view(-1, 1) * g.view(1, -1)).view(1, 1, size, size)


def ssim(
    a: Tensor,
    b: Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity of each pair of 2-D maps, (B,) (Wang et al., IEEE TIP 2004).

    Local means, variances and covariance come from a Gaussian window ($\\sigma = 1.5$,
    11 x 11, shrunk to the map's size for small maps); the index is averaged over every
    position where the window fits:

    $$\\mathrm{SSIM}(a, b) = \\frac{(2\\mu_a\\mu_b + C_1)(2\\sigma_{ab} + C_2)}
    {(\\mu_a^2 + \\mu_b^2 + C_1)(\\sigma_a^2 + \\sigma_b^2 + C_2)}, \\quad
    C_1 = (k_1 L)^2,\\; C_2 = (k_2 L)^2$$

    with $L$ the ``data_range``. Matches ``skimage.metrics.structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.

    Args:
        a: maps (B, H, W).
        b: maps of the same shape.
        data_range: $L$, the span of the values (1 for maps in [0, 1]).
        win_size: largest window side (odd).
        sigma: the window's standard deviation.
        k1: constant of the luminance term.
        k2: constant of the contrast term.

    Returns:
        float (B,) in [-1, 1].
    """
    a, b = _pair(a, b)
    if a.dim() != 3:
        raise InputError(f"ssim compares 2-D maps (B, H, W), got {tuple(a.shape)}")
    h, w = a.shape[-2:]
    win = _window(h, w, win_size, sigma, a.device)
    x, y = a.double().unsqueeze(1), b.double().unsqueeze(1)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, win)

    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx * mx
    vy = filt(y * y) - my * my
    cxy = filt(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1).float()
