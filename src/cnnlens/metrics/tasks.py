"""Trust per task: localization of a detection's or a region's map against its own object.

The pointing game and the energy pointing game (:mod:`cnnlens.metrics.localization`) take
a box as the mask of its pixels (:func:`box_masks`); deletion and insertion read a
detection's or a region's score through :class:`cnnlens.targets.TargetScore`.
:func:`localize_objects` explains every object of every image with its own target and
scores each map against that object's mask, against the *other* objects' masks (a map that
lands on the wrong object), and the random baseline (the mask's share of the image: a
uniformly random point's chance of a hit).

Example:
    >>> masks = box_masks(torch.tensor([[4, 8, 20, 30]]), (64, 64))   # (1, 64, 64)
    >>> pointing_game(exp.maps, masks)                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import cnnlens.api as api
from cnnlens.errors import InputError
from cnnlens.metrics.localization import energy_pointing_game, pointing_game

__all__ = ["ObjectLocalization", "box_masks", "localize_objects"]


def box_masks(boxes: Tensor | Sequence[float], size: tuple[int, int]) -> Tensor:
    """Masks of boxes ``(x0, y0, x1, y1)`` in pixels: True on the pixels whose centre lies
    inside the box.

    Args:
        boxes: (..., 4).
        size: (H, W) of the masks.

    Returns:
        bool (..., H, W).
    """
    b = torch.as_tensor(boxes, dtype=torch.float32)
    if b.shape[-1:] != (4,):
        raise InputError(f"boxes must be (..., 4) as (x0, y0, x1, y1), got {tuple(b.shape)}")
    h, w = int(size[0]), int(size[1])
    ys = torch.arange(h, dtype=torch.float32, device=b.device) + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=b.device) + 0.5
    b = b[..., None, None, :]
    inside_y = (ys[:, None] >= b[..., 1]) & (ys[:, None] < b[..., 3])
    inside_x = (xs[None, :] >= b[..., 0]) & (xs[None, :] < b[..., 2])
    return inside_y & inside_x


@dataclass
class ObjectLocalization:
    """Per-object localization scores of one object slot over images (each (N,)).

    Attributes:
        pointing: pointing game against the object's own mask (1 hit, 0 miss).
        pointing_other: pointing game against the other objects' masks (a wrong object).
        energy: energy pointing game against the own mask.
        baseline: the own mask's share of the image (a random point's chance of a hit).
    """

    pointing: Tensor
    pointing_other: Tensor
    energy: Tensor
    baseline: Tensor

    def means(self) -> dict[str, float]:
        """The mean of each score, ignoring NaN (empty masks)."""
        return {k: float(v.nanmean()) for k, v in vars(self).items()}


def localize_objects(
    model: nn.Module,
    images: Tensor,
    masks: Tensor,
    target_of: Callable[[int, int], Any],
    *,
    method: str = "gradcam",
    layer: Any = None,
    **options: Any,
) -> list[ObjectLocalization]:
    """Explain each object of each image with its own target and score the map against it.

    Args:
        model: the detector or segmenter.
        images: (N, C, H, W).
        masks: bool (N, K, H, W): object ``k`` of image ``i``.
        target_of: ``target_of(i, k)`` -> the target of object ``k`` of image ``i`` (a
            :class:`~cnnlens.targets.Detection` of its box and label, a
            :class:`~cnnlens.targets.SegmentationRegion` of its class, ...).
        method, layer, options: as for :func:`cnnlens.explain`.

    Returns:
        One :class:`ObjectLocalization` per object slot ``k``.
    """
    if images.dim() != 4 or masks.dim() != 4 or masks.shape[0] != images.shape[0]:
        raise InputError(
            f"images must be (N, C, H, W) and masks (N, K, H, W) for the same N; got "
            f"{tuple(images.shape)} and {tuple(masks.shape)}"
        )
    if masks.shape[-2:] != images.shape[-2:]:
        raise InputError(
            f"masks must have the images' size {tuple(images.shape[-2:])}, "
            f"got {tuple(masks.shape[-2:])}"
        )
    n, k = masks.shape[:2]
    masks = masks.bool()
    out = []
    for slot in range(k):
        maps = torch.cat(
            [
                api.explain(
                    model, images[i : i + 1], method, target=target_of(i, slot), layer=layer,
                    **options,
                ).maps.cpu()
                for i in range(n)
            ]
        )  # fmt: skip
        own = masks[:, slot].cpu()
        others = (masks.cpu().sum(dim=1) > 0) & ~own
        out.append(
            ObjectLocalization(
                pointing=pointing_game(maps, own),
                pointing_other=pointing_game(maps, others),
                energy=energy_pointing_game(maps, own),
                baseline=own.flatten(1).float().mean(dim=1),
            )
        )
    return out
