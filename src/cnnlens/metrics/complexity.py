"""Complexity: how concentrated is a map? A few strong pixels read more easily than a haze.

Both functions take maps (B, H, W) (or (H, W), or (B, 1, H, W)), use their absolute values,
and return one number per image, float (B,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cnnlens.metrics._common import check_maps
from cnnlens.metrics.registry import MetricInputs, register_metric

__all__ = ["entropy", "sparseness"]


def sparseness(maps: Tensor) -> Tensor:
    """Sparseness as the Gini index of the map (Chalasani et al., "Concise explanations of
    neural networks using adversarial training", ICML 2020, arXiv:1810.06583).

    With $a_{(1)} \\le \\dots \\le a_{(n)}$ the sorted absolute values of the $n$ pixels:

    $$G = \\frac{\\sum_{k=1}^{n} (2k - n - 1)\\, a_{(k)}}{n \\sum_{k=1}^{n} a_{(k)}}$$

    0 for a constant map (and, by that limit, for an all-zero one), $1 - 1/n$ for a map with
    a single non-zero pixel. Higher is sparser.

    Returns:
        float (B,) in [0, 1).
    """
    flat = check_maps(maps).flatten(1).abs().double()
    n = flat.shape[1]
    a = flat.sort(dim=1).values
    k = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    total = a.sum(dim=1)
    gini = ((2 * k - n - 1) * a).sum(dim=1) / (n * total.clamp(min=1e-300))
    return torch.where(total > 0, gini, torch.zeros_like(gini)).float()


@register_metric(
    "sparseness",
    family="complexity",
    higher_is_better=True,
    label="gini",
    summary="Gini index",
    options_of=sparseness,
)
def _sparseness(inputs: MetricInputs, **options: object) -> Tensor:
    return sparseness(inputs.maps, **options)  # type: ignore[arg-type]


def entropy(maps: Tensor, *, normalized: bool = False) -> Tensor:
    """Complexity as the entropy of the map's fractional contributions (Bhatt et al.,
    "Evaluating and aggregating feature-based model explanations", IJCAI 2020,
    arXiv:2005.00631).

    $$P_p = \\frac{|M_p|}{\\sum_q |M_q|}, \\qquad H = -\\sum_p P_p \\ln P_p$$

    with $0 \\ln 0 = 0$; an all-zero map counts as uniform ($H = \\ln n$). Lower is simpler.

    Args:
        maps: (B, H, W) maps.
        normalized: divide by $\\ln n$, the entropy of a uniform map, so the value lies in
            [0, 1] whatever the map's size.

    Returns:
        float (B,), in nats (or in [0, 1] when normalized).
    """
    flat = check_maps(maps).flatten(1).abs().double()
    n = flat.shape[1]
    total = flat.sum(dim=1, keepdim=True)
    p = flat / total.clamp(min=1e-300)
    h = -torch.special.xlogy(p, p).sum(dim=1)
    h = torch.where(total.squeeze(1) > 0, h, torch.full_like(h, math.log(n)))
    if normalized:
        h = h / math.log(n) if n > 1 else torch.zeros_like(h)
    return h.float()


@register_metric(
    "entropy",
    family="complexity",
    higher_is_better=False,
    label="entropy",
    summary="entropy of the map (nats)",
    options_of=entropy,
)
def _entropy(inputs: MetricInputs, **options: object) -> Tensor:
    return entropy(inputs.maps, **options)  # type: ignore[arg-type]
