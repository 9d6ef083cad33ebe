"""One explanation map drawn for people: the input as seen, the map over it, file names.

What ``cnnlens explain`` and ``cnnlens demo`` write for every image x method x class:
:func:`show_input` (the un-normalized input, enlarged when small), :func:`render_map` (a
``jet`` overlay, or a signed attribution in a diverging colormap when :func:`signed_view`
says so) and :func:`slug` (a file-name-safe name).

Example:
    >>> exp = cnnlens.explain(model, x, method="integrated_gradients")   # doctest: +SKIP
    >>> raw = exp.raw[0]
    >>> signed = signed_view(cnnlens.get_method(exp.method), raw, exp.maps[0])
    >>> render_map(x[0], exp.maps[0], raw=raw, signed=signed).save("ig.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from PIL import Image
from torch import Tensor

from cnnlens.viz.overlay import attribution, overlay, show_image

__all__ = ["render_map", "show_input", "signed_view", "slug"]

#: Channel reductions that turn a pixel attribution into a magnitude (shown as a heat overlay).
_MAGNITUDE_REDUCTIONS = ("absmax", "square")


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (``gradcam++`` -> ``gradcampp``)."""
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text).replace("+", "p")).strip("-.")
    return out or "x"


def signed_view(
    method: type | None, raw: Tensor | None, map_: Tensor, extras: Mapping[str, Any] | None = None
) -> bool:
    """Whether a map is best shown as a signed pixel attribution (blue negative, red positive).

    True for pixel attributions (``raw`` with a channel axis) that hold both signs, unless the
    method reduces its channels to a magnitude (``absmax`` / ``square``: saliency as in
    Simonyan et al., guided backprop, deconvnet), whose maps are shown as heat overlays. A
    wrapper (SmoothGrad and its variants: ``extras["base"]`` names the method it averages) is
    drawn as its base method is, so SmoothGrad of saliency looks like saliency.
    """
    if raw is None or raw.dim() != map_.dim() + 1:
        return False
    base = (extras or {}).get("base")
    if isinstance(base, str):
        from cnnlens.core.registry import get_method

        method = get_method(base)
    if getattr(method, "default_reduce", None) in _MAGNITUDE_REDUCTIONS:
        return False
    lo, hi = float(raw.min()), float(raw.max())
    return lo < 0.0 < hi


def show_input(
    image: Tensor | Image.Image, *, preset: Any = None, min_side: int = 0
) -> Image.Image:
    """The input as a person sees it (un-normalized with ``preset``), as an RGB or L image,
    enlarged by an integer factor (nearest neighbour) until its shorter side is at least
    ``min_side`` pixels."""
    img = show_image(image, preset=preset) if isinstance(image, Tensor) else image
    k = max(1, math.ceil(min_side / max(1, min(img.size)))) if min_side else 1
    return img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST) if k > 1 else img


def render_map(
    image: Tensor | Image.Image,
    map_: Tensor,
    *,
    raw: Tensor | None = None,
    signed: bool = False,
    preset: Any = None,
    min_side: int = 224,
    alpha: float = 0.5,
) -> Image.Image:
    """One explanation drawn over its image, as an RGB PIL image.

    Maps in [0, 1] are blended over the image with the ``jet`` colormap; with ``signed`` the
    pixel attribution ``raw`` (C, H, W) is shown instead with a diverging colormap centred at
    zero (red positive, blue negative, clipped at the 99th percentile of its magnitude).

    Args:
        image: the model input (C, H, W) (normalized with ``preset``) or a PIL image.
        map_: (H, W) map in [0, 1].
        raw: the method's raw pixel attribution (C, H, W), used when ``signed``.
        signed: draw ``raw`` as a signed attribution (see :func:`signed_view`).
        preset: the normalization of ``image``.
        min_side: enlarge small images (nearest neighbour) to at least this many pixels.
        alpha: weight of the colored map.
    """
    base = show_input(image, preset=preset, min_side=min_side)
    if signed and raw is not None:
        return attribution(raw.detach().float().cpu(), view="all", image=base, alpha=0.65)
    return overlay(base, map_.detach().float().cpu(), alpha=alpha)
