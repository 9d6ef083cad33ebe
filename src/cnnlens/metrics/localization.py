"""Localization: does a map point at the object, given a ground-truth mask?

Each function takes maps (B, H, W) and binary masks of the same size ((H, W) shared by the
batch, (B, H, W) or (B, 1, H, W)) and returns one score per image, float (B,), higher is
better. An empty mask gives NaN for that image (with a warning); :func:`cnnlens.metrics.
aggregate` skips NaN.

Ties are scored as the expected value under a random tie-break, so a constant (or all-zero)
map, which carries no information, scores chance level $|S|/HW$ in every metric here rather
than a lucky 1 or an arbitrary raster-order result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlens.core.checks import check_float
from cnnlens.errors import InputError
from cnnlens.metrics._common import check_maps, check_masks, mask_inputs, nan_where
from cnnlens.metrics.registry import MetricInputs, register_metric

__all__ = ["energy_pointing_game", "iou", "pointing_game", "relevance_rank_accuracy"]


def _dilate(masks: Tensor, tolerance: float) -> Tensor:
    """Masks grown by every pixel within Euclidean distance ``tolerance``, bool (B, H, W)."""
    r = math.floor(tolerance)
    if r < 1:
        return masks
    d = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    disk = ((d.view(-1, 1) ** 2 + d.view(1, -1) ** 2) <= tolerance**2).float()
    grown = F.conv2d(masks.unsqueeze(1).float(), disk.view(1, 1, *disk.shape), padding=r)
    return grown.squeeze(1) > 0


def pointing_game(maps: Tensor, masks: Tensor, *, tolerance: float = 0.0) -> Tensor:
    """Pointing game (Zhang et al., "Top-down neural attention by excitation backprop",
    ECCV 2016 / IJCV 2018, arXiv:1608.00507).

    A hit when the map's maximum lies inside the mask $S$, or within ``tolerance`` pixels of
    it (the paper uses 15 pixels on 224-pixel images):

    $$\\mathrm{hit} = \\mathbb{1}\\left[\\arg\\max_p M_p \\in S_{\\oplus r}\\right]$$

    When several pixels share the maximum the score is the share of them inside the
    (grown) mask, the expected hit under a random choice among them.

    Args:
        maps: (B, H, W) saliency maps.
        masks: binary ground truth of the same size.
        tolerance: radius in pixels by which the mask is grown (0: the mask itself).

    Returns:
        float (B,): 1.0 for a hit, 0.0 for a miss (a share for tied maxima), NaN for an
        empty mask.

    Example:
        >>> pointing_game(exp.maps, masks).mean()      # doctest: +SKIP
    """
    check_float("tolerance", tolerance, minimum=0)
    maps = check_maps(maps)
    masks = check_masks(masks, maps)
    empty = ~masks.flatten(1).any(dim=1)
    grown = _dilate(masks, float(tolerance)).flatten(1)
    flat = maps.flatten(1)
    at_max = flat == flat.max(dim=1, keepdim=True).values
    score = (at_max & grown).sum(dim=1).double() / at_max.sum(dim=1).double()
    return nan_where(score, empty)


@register_metric(
    "pointing_game",
    family="localization",
    higher_is_better=True,
    label="point",
    summary="maximum inside the mask",
    needs_masks=True,
    binary=True,
    options_of=pointing_game,
)
def _pointing_game(inputs: MetricInputs, **options: object) -> Tensor:
    return pointing_game(inputs.maps, inputs.masks, **options)  # type: ignore[arg-type]


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020, arXiv:1910.01279),
    also called relevance mass accuracy (Arras et al., CLEVR-XAI, Inf. Fusion 2022).

    The share of the map's mass inside the mask $S$:

    $$\\mathrm{Proportion} = \\frac{\\sum_{p \\in S} M_p}{\\sum_{p} M_p}$$

    An all-zero map scores $|S| / HW$ (as a constant map does).

    Args:
        maps: (B, H, W) non-negative saliency maps.
        masks: binary ground truth of the same size.

    Returns:
        float (B,) in [0, 1], NaN for an empty mask.

    Raises:
        InputError: for negative map values (pass ``maps.abs()`` or cnnlens's [0, 1] maps).
    """
    flat, s, empty = mask_inputs(maps, masks)
    if bool((flat < 0).any()):
        raise InputError(
            "maps must be non-negative for the energy pointing game; pass maps.abs() or "
            "the [0, 1] maps of cnnlens.explain"
        )
    total = flat.sum(dim=1)
    inside = (flat * s).sum(dim=1)
    chance = s.sum(dim=1).double() / s.shape[1]
    score = torch.where(total > 0, inside / total.clamp(min=1e-300), chance)
    return nan_where(score, empty)


@register_metric(
    "energy_pointing_game",
    family="localization",
    higher_is_better=True,
    label="energy",
    summary="mass inside the mask",
    needs_masks=True,
    options_of=energy_pointing_game,
)
def _energy_pointing_game(inputs: MetricInputs, **options: object) -> Tensor:
    return energy_pointing_game(inputs.maps, inputs.masks, **options)  # type: ignore[arg-type]


def relevance_rank_accuracy(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance rank accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022,
    arXiv:2003.07258).

    With $K = |S|$ the mask's size, the share of the $K$ highest-ranked pixels that fall
    inside the mask:

    $$\\mathrm{RRA} = \\frac{|\\mathrm{top}_K(M) \\cap S|}{K}$$

    Pixels tied with the $K$-th value count by the share of the tied group inside the mask
    (the expected value of a random tie-break).

    Returns:
        float (B,) in [0, 1], NaN for an empty mask.
    """
    flat, s, empty = mask_inputs(maps, masks)
    k = s.sum(dim=1)
    kth = flat.sort(dim=1, descending=True).values.gather(1, (k - 1).clamp(min=0).view(-1, 1))
    above = flat > kth
    tied = flat == kth
    n_above = above.sum(dim=1).double()
    hits = (above & s).sum(dim=1).double() + (k.double() - n_above) * (tied & s).sum(
        dim=1
    ).double() / tied.sum(dim=1).double()
    score = hits / k.clamp(min=1).double()
    return nan_where(score, empty)


@register_metric(
    "relevance_rank_accuracy",
    family="localization",
    higher_is_better=True,
    label="rank",
    summary="top-|S| in mask",
    needs_masks=True,
    options_of=relevance_rank_accuracy,
)
def _relevance_rank_accuracy(inputs: MetricInputs, **options: object) -> Tensor:
    return relevance_rank_accuracy(inputs.maps, inputs.masks, **options)  # type: ignore[arg-type]


def iou(maps: Tensor, masks: Tensor, *, threshold: float = 0.5) -> Tensor:
    """Intersection over union of the thresholded map and the mask.

    The map is binarised at a fraction $t$ of its maximum, as in weakly supervised
    localization (Zhou et al., CAM, CVPR 2016, used $t = 0.2$ for boxes):

    $$B = \\{p : M_p \\ge t \\max_q M_q\\}, \\qquad
    \\mathrm{IoU} = \\frac{|B \\cap S|}{|B \\cup S|}$$

    Args:
        maps: (B, H, W) saliency maps.
        masks: binary ground truth of the same size.
        threshold: $t$ in [0, 1].

    Returns:
        float (B,) in [0, 1], NaN for an empty mask.
    """
    check_float("threshold", threshold, minimum=0, maximum=1)
    flat, s, empty = mask_inputs(maps, masks)
    pred = flat >= threshold * flat.max(dim=1, keepdim=True).values
    inter = (pred & s).sum(dim=1).double()
    union = (pred | s).sum(dim=1).double()
    return nan_where(inter / union.clamp(min=1), empty)


@register_metric(
    "iou",
    family="localization",
    higher_is_better=True,
    label="iou",
    summary="IoU of the thresholded map",
    needs_masks=True,
    options_of=iou,
)
def _iou(inputs: MetricInputs, **options: object) -> Tensor:
    return iou(inputs.maps, inputs.masks, **options)  # type: ignore[arg-type]
