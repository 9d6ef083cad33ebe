"""Pictures of task explanations: detections with their boxes, labels and scores, a
segmentation region outlined, each beside its map (the report lays them out in a table).

Example:
    >>> img = show_input(x[0], min_side=224)                              # doctest: +SKIP
    >>> draw_boxes(img, boxes, ["circle 0.93"], scale=img.width / x.shape[-1])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from cnnlens.errors import InputError
from cnnlens.viz.overlay import overlay
from cnnlens.viz.render import show_input

__all__ = ["PALETTE", "detection_views", "draw_boxes", "outline_region", "region_views"]

#: Box and outline colours, one per detection in turn (colour-blind safe: Okabe-Ito).
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
           (213, 94, 0), (204, 121, 167), (255, 255, 255)]  # fmt: skip


def draw_boxes(
    image: Image.Image,
    boxes: Tensor | Sequence[Sequence[float]],
    labels: Sequence[str] = (),
    *,
    scale: float = 1.0,
    colors: Sequence[tuple[int, int, int]] | None = None,
    width: int = 2,
) -> Image.Image:
    """A copy of ``image`` with boxes ``(x0, y0, x1, y1)`` drawn and, above each, its label.

    Args:
        image: the picture (e.g. :func:`~cnnlens.viz.show_input` of the model input).
        boxes: (N, 4) in model-input pixels.
        labels: one text per box (e.g. ``"circle 0.93"``), or none.
        scale: picture pixels per input pixel (the enlargement of ``show_input``).
        colors: one RGB colour per box (default :data:`PALETTE` in turn).
        width: line width in picture pixels.
    """
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    if labels and len(labels) != len(arr):
        raise InputError(f"labels must have one text per box ({len(arr)}), got {len(labels)}")
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    for i, box in enumerate(arr * float(scale)):
        color = tuple((colors or PALETTE)[i % len(colors or PALETTE)])
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=width)
        if labels:
            left, top, right, bottom = draw.textbbox((0, 0), labels[i])
            ty = y0 - (bottom - top) - 4 if y0 >= bottom - top + 4 else y1 + 1
            draw.rectangle([x0, ty, x0 + right - left + 4, ty + bottom - top + 4], fill=color)
            draw.text((x0 + 2 - left, ty + 2 - top), labels[i], fill=(0, 0, 0))
    return out


def outline_region(
    image: Image.Image, mask: Any, *, color: tuple[int, int, int] = (255, 255, 255), width: int = 2
) -> Image.Image:
    """A copy of ``image`` with the border of ``mask`` (H, W) drawn in ``color``; the mask is
    scaled to the picture (nearest neighbour) first."""
    m = np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask).astype(bool)
    if m.ndim != 2:
        raise InputError(f"mask must be (H, W), got shape {m.shape}")
    big = (
        np.asarray(
            Image.fromarray(m.astype(np.uint8) * 255).resize(image.size, Image.Resampling.NEAREST)
        )
        > 0
    )
    inner = big.copy()
    for _ in range(max(1, width)):  # erode: a pixel stays when its 4 neighbours are inside
        p = np.pad(inner, 1)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    out = np.asarray(image.convert("RGB")).copy()
    out[big & ~inner] = color
    return Image.fromarray(out)


def detection_views(
    x: Tensor,
    map_: Tensor,
    box: Sequence[float],
    label: str,
    *,
    preset: Any = None,
    min_side: int = 224,
    color: tuple[int, int, int] = PALETTE[0],
) -> tuple[Image.Image, Image.Image]:
    """One detection: (the input with its box and ``label``, the map over it with the box).

    Args:
        x: the model input (C, H, W), normalized with ``preset``.
        map_: (H, W) in [0, 1].
        box: ``(x0, y0, x1, y1)`` in input pixels.
        label: e.g. ``"circle 0.93"``.
    """
    base = show_input(x, preset=preset, min_side=min_side)
    scale = base.width / x.shape[-1]
    shown = draw_boxes(base, [box], [label], scale=scale, colors=[color])
    on_map = overlay(base, map_.detach().float().cpu())
    return shown, draw_boxes(on_map, [box], scale=scale, colors=[color])


def region_views(
    x: Tensor,
    map_: Tensor,
    mask: Tensor,
    *,
    preset: Any = None,
    min_side: int = 224,
) -> tuple[Image.Image, Image.Image]:
    """One segmentation class: (the input with the predicted region outlined, the map over
    it with the same outline)."""
    base = show_input(x, preset=preset, min_side=min_side)
    on_map = overlay(base, map_.detach().float().cpu())
    return outline_region(base, mask), outline_region(on_map, mask)
