"""More localization against a ground-truth mask: top-k intersection, attribution
localisation and the ROC AUC of the map as a pixel classifier.

Same conventions as :mod:`cnnlens.metrics.localization`: maps (B, H, W), binary masks of
the same size, one float per image, higher is better, NaN for an empty mask (with a warning).
The numbers equal Quantus 0.6's ``TopKIntersection``, ``AttributionLocalisation`` and
``AUC`` on the same inputs (``tests/test_mask_localization.py``), with two deliberate
differences: tied map values are scored by their expected value (as everywhere in cnnlens),
and the weighted attribution localisation uses the mask's share of the image, where Quantus
divides by the size of the batch minus two images (``x_batch[2:].size``, a slicing slip).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cnnlens.errors import InputError
from cnnlens.metrics._common import mask_inputs, nan_where
from cnnlens.metrics.registry import MetricInputs, register_metric
from cnnlens.metrics.similarity import rank

__all__ = ["attribution_localisation", "roc_auc", "top_k_intersection"]


def top_k_intersection(
    maps: Tensor, masks: Tensor, *, k: int = 1000, concept_influence: bool = False
) -> Tensor:
    """Top-k intersection (Theiner, Müller-Budack & Ewerth, "Interpretable semantic photo
    geolocation", WACV 2022, arXiv:2104.14995): the share of the $k$ highest map values
    that fall inside the mask $S$,

    $$\\mathrm{TKI} = \\frac{|\\mathrm{top}_k(\\Phi) \\cap S|}{k}$$

    times $HW / |S|$ with ``concept_influence`` (the object's size factored out). Values tied
    with the $k$-th count by the share of the tied group inside the mask.

    Args:
        maps: (B, H, W) maps.
        masks: binary ground truth of the same size.
        k: number of top pixels (at most H*W; Quantus' default 1000).
        concept_influence: divide by the mask's share of the image.

    Returns:
        float (B,), NaN for an empty mask.
    """
    flat, s, empty = mask_inputs(maps, masks)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= flat.shape[1]:
        raise InputError(f"k must be an integer in 1..{flat.shape[1]} (H*W), got {k!r}")
    kth = flat.topk(k, dim=1).values[:, -1:]
    above, tied = flat > kth, flat == kth
    n_above = above.sum(dim=1).double()
    hits = (above & s).sum(dim=1).double() + (k - n_above) * (tied & s).sum(
        dim=1
    ).double() / tied.sum(dim=1).double()
    score = hits / k
    if concept_influence:
        score = score * flat.shape[1] / s.sum(dim=1).clamp(min=1).double()
    return nan_where(score, empty)


def attribution_localisation(
    maps: Tensor,
    masks: Tensor,
    *,
    weighted: bool = False,
    positive_only: bool = False,
    absolute: bool = True,
) -> Tensor:
    """Attribution localisation (Kohlbrenner et al., "Towards best practice in explaining
    neural network decisions with LRP", IJCNN 2020, arXiv:1910.09840): the share of the
    map's mass inside the mask,

    $$\\mu = \\frac{\\sum_{p \\in S} \\Phi_p}{\\sum_p \\Phi_p + 10^{-9}}, \\qquad
    \\mu_w = \\mu \\cdot \\frac{|S|}{HW}\\ (\\text{weighted})$$

    Args:
        maps: (B, H, W) maps.
        masks: binary ground truth of the same size.
        weighted: multiply by the mask's share of the image.
        positive_only: clip negative map values to 0 first.
        absolute: take $|\\Phi|$ first (Quantus' default ``abs=True``).

    Returns:
        float (B,), NaN for an empty mask or a share above 1 (possible only with negative
        values).
    """
    flat, s, empty = mask_inputs(maps, masks)
    if absolute:
        flat = flat.abs()
    if positive_only:
        flat = flat.clamp(min=0)
    share = (flat * s).sum(dim=1) / (flat.sum(dim=1) + 1e-9)
    share = torch.where(share > 1, torch.full_like(share, float("nan")), share)
    if weighted:
        share = share * s.sum(dim=1).double() / s.shape[1]
    return nan_where(share, empty)


def roc_auc(maps: Tensor, masks: Tensor) -> Tensor:
    """Area under the ROC curve of the map as a classifier of mask pixels (Fawcett 2006;
    used for saliency by Judd et al. 2009): the probability that a random mask pixel has a
    higher map value than a random background pixel, ties counting one half,

    $$\\mathrm{AUC} = \\frac{\\sum_{p \\in S} R_p - |S|(|S|+1)/2}{|S|\\,(HW - |S|)}$$

    with $R$ the (average) ranks of the map values (the Mann-Whitney form).

    Returns:
        float (B,) in [0, 1], 0.5 for a constant map; NaN for an empty mask or one that
        covers the whole image.
    """
    flat, s, empty = mask_inputs(maps, masks)
    n_pos = s.sum(dim=1).double()
    n_neg = s.shape[1] - n_pos
    ranks = rank(flat)
    u = (ranks * s).sum(dim=1) - n_pos * (n_pos + 1) / 2
    score = u / (n_pos * n_neg).clamp(min=1)
    return nan_where(score, empty | (n_neg == 0))


_FACTS = dict(family="localization", higher_is_better=True, needs_masks=True)


@register_metric(
    "top_k_intersection", label="top-k", summary="share of the top k pixels in the mask", **_FACTS
)
def _top_k(inputs: MetricInputs, k: int | None = None, **options: Any) -> Tensor:
    h, w = inputs.maps.shape[-2:]
    k = k if k is not None else max(1, (h * w) // 20)  # 5% of the pixels
    return top_k_intersection(inputs.maps, inputs.masks, k=k, **options)


@register_metric(
    "attribution_localisation",
    label="attr-loc",
    summary="share of |map| mass in the mask",
    **_FACTS,
)
def _attribution_localisation(inputs: MetricInputs, **options: Any) -> Tensor:
    return attribution_localisation(inputs.maps, inputs.masks, **options)


@register_metric(
    "roc_auc", label="AUC", summary="ROC AUC of the map as a mask-pixel classifier", **_FACTS
)
def _roc_auc(inputs: MetricInputs, **options: Any) -> Tensor:
    return roc_auc(inputs.maps, inputs.masks, **options)
