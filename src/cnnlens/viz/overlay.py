"""Pictures of one map: colored heatmaps, overlays, masked images and signed attributions.

All functions take images as PIL images, torch tensors ``(C, H, W)`` / ``(H, W)`` or numpy
arrays, and maps as ``(H, W)`` tensors or arrays in [0, 1]; they return PIL images (mode RGB,
or L for a grey masked image). A map of another size than its image is resized bilinearly.
Normalized image tensors are un-normalized for display with ``preset`` (a preset name such as
``"imagenet"`` or ``"mnist"``, or an object with ``mean`` and ``std``).
"""

from __future__ import annotations

from typing import Any, Literal

import matplotlib
import numpy as np
import torch
from matplotlib.colors import Colormap
from PIL import Image

from cnnlens.core.checks import check_choice, check_float
from cnnlens.errors import InputError
from cnnlens.viz._convert import (
    check_geometry,
    place_map,
    to_display,
    to_map,
    to_pil,
    to_rgb,
)

View = Literal["all", "positive", "negative", "absolute"]
VIEWS: tuple[str, ...] = ("all", "positive", "negative", "absolute")

# Default colormap of each attribution view: a diverging one centred at 0 for the signed view.
DEFAULT_VIEW_CMAPS: dict[str, str] = {
    "all": "bwr",
    "positive": "Reds",
    "negative": "Blues",
    "absolute": "inferno",
}


def get_cmap(cmap: str | Colormap) -> Colormap:
    """Return a matplotlib colormap by name (any registered name, e.g. ``"jet"``, ``"bwr"``).

    Raises:
        InputError: for an unknown name.
    """
    if isinstance(cmap, Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, TypeError):
        names = sorted(matplotlib.colormaps)
        raise InputError(
            f"cmap {cmap!r} is not a matplotlib colormap; e.g. jet, viridis, inferno, bwr, "
            f"RdBu_r ({len(names)} names in matplotlib.colormaps)"
        ) from None


def colorize(values: np.ndarray, cmap: str | Colormap = "jet") -> np.ndarray:
    """Map values in [0, 1] of shape ``(H, W)`` to RGB floats ``(H, W, 3)`` with ``cmap``."""
    rgba = get_cmap(cmap)(np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0))
    return np.asarray(rgba[..., :3], dtype=np.float64)


def _check_alpha(alpha: float) -> float:
    return check_float("alpha", alpha, minimum=0.0, maximum=1.0)


def map_on_image(
    map: Any, shape: tuple[int, int], geometry: Any = None, *, what: str = "overlay"
) -> tuple[np.ndarray, np.ndarray | None]:
    """A map as ``(H, W)`` values on an image of ``shape``, and where the model looked.

    With ``geometry`` (a :class:`cnnlens.data.Geometry`), the map (at the model input's size)
    is put back on the part of the photo the input was cut from; the second value is the
    mask of photo pixels inside that part. Without it the map is resized to the image (a
    :class:`GeometryWarning` when the aspect ratios differ) and the mask is None.
    """
    m = to_map(map)
    if geometry is not None:
        return place_map(m, geometry, shape)
    check_geometry(tuple(shape), m.shape, what)
    return to_map(m, tuple(shape)), None


def blend(
    img: np.ndarray,
    values: np.ndarray,
    inside: np.ndarray | None,
    *,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
) -> Image.Image:
    """``(1 - alpha) * img + alpha * cmap(values)``; pixels outside ``inside`` faded to grey.

    Photo pixels the model never saw (outside a centre crop) show the image faded half-way
    to grey, with no map.
    """
    a = _check_alpha(alpha)
    img = to_rgb(img)
    out = (1.0 - a) * img + a * colorize(values, cmap)
    if inside is not None:
        out = np.where(inside[..., None], out, 0.5 * img + 0.25)
    return to_pil(out)


def heatmap(
    map: Any, *, cmap: str | Colormap = "jet", size: tuple[int, int] | None = None
) -> Image.Image:
    """The map alone, colored with ``cmap``.

    Args:
        map: ``(H, W)`` values in [0, 1] (tensor, array or PIL image).
        cmap: matplotlib colormap name or object.
        size: optional ``(H, W)`` to resize the map to (bilinear) before coloring.

    Returns:
        An RGB PIL image of the map's (or ``size``'s) height and width.
    """
    return to_pil(colorize(to_map(map, size), cmap))


def overlay(
    image: Any,
    map: Any,
    *,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    preset: Any = None,
    geometry: Any = None,
) -> Image.Image:
    """Blend a colored map over its image.

    $$O = (1 - \\alpha)\\, I + \\alpha\\, \\mathrm{cmap}(M)$$

    Grey images are shown as grey RGB under the colored map. The map must land where the
    model looked: overlay it on the model's input (``x[0]`` with its ``preset``), or on the
    original photo with the ``geometry`` the input was made with
    (``cnnlens.data.geometry(img, size=224, crop=True)``); photo pixels outside a centre crop
    are faded to grey. A map stretched over an image of another aspect ratio without
    ``geometry`` gives a :class:`GeometryWarning`.

    Args:
        image: the input image (PIL, tensor ``(C, H, W)``/``(H, W)`` or array).
        map: ``(H, W)`` in [0, 1]; resized bilinearly to the image when sizes differ.
        cmap: matplotlib colormap name (``"jet"`` by default) or object.
        alpha: weight of the colored map, in [0, 1] (0 gives the image, 1 the heatmap).
        preset: normalization the image tensor carries (name or object with mean/std).
        geometry: where the model input lies on ``image`` (:class:`cnnlens.data.Geometry`).

    Returns:
        An RGB PIL image of the image's size.

    Example:
        >>> overlay(x[0], exp.maps[0], preset="imagenet").save("cat_gradcam.png")  # doctest: +SKIP
        >>> geo = cnnlens.data.geometry(img, size=224, crop=True)                  # doctest: +SKIP
        >>> overlay(img, exp.maps[0], geometry=geo).save("cat_on_photo.png")       # doctest: +SKIP
    """
    _check_alpha(alpha)
    img = to_rgb(to_display(image, preset))
    m, inside = map_on_image(map, img.shape[:2], geometry)
    return blend(img, m, inside, cmap=cmap, alpha=alpha)


def masked(image: Any, map: Any, *, preset: Any = None, geometry: Any = None) -> Image.Image:
    """The image multiplied by the map: what the explanation keeps, on a black background.

    $$O_{ij} = I_{ij} \\cdot M_{ij}$$

    ``geometry`` places a map of the model input's size on the photo (see :func:`overlay`);
    outside the model's input the result is black.

    Returns:
        A PIL image in the image's mode (L for grey, RGB for color).
    """
    img = to_display(image, preset)
    m, inside = map_on_image(map, img.shape[:2], geometry, what="masked")
    if inside is not None:
        m = np.where(inside, m, 0.0)
    return to_pil(img * (m[..., None] if img.ndim == 3 else m))


def _reduce_attribution(attr: Any) -> np.ndarray:
    if isinstance(attr, torch.Tensor):
        a = attr.detach().to("cpu", torch.float64).numpy()
        chw = True
    elif isinstance(attr, np.ndarray):
        a = np.asarray(attr, dtype=np.float64)
        chw = False
    else:
        raise InputError(
            f"attribution must be a torch tensor or numpy array; got {type(attr).__name__}"
        )
    while a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        if not chw and a.shape[0] not in (1, 3) and a.shape[-1] in (1, 3):
            a = np.moveaxis(a, -1, 0)
        a = a.sum(axis=0)
    if a.ndim != 2:
        raise InputError(
            f"attribution must be (C, H, W) or (H, W) for one image; got shape {tuple(a.shape)}"
        )
    if not np.isfinite(a).all():
        raise InputError("attribution contains NaN or infinite values")
    return a


def attribution_values(
    attr: Any, *, view: View = "all", percentile: float = 99.0
) -> tuple[np.ndarray, float]:
    """Reduce a pixel attribution to one value per pixel, clip outliers and scale.

    Channels are summed (signed), then the view is taken: ``"all"`` keeps the sign,
    ``"positive"`` keeps $\\max(s, 0)$, ``"negative"`` keeps $\\max(-s, 0)$, ``"absolute"``
    keeps $|s|$. The scale $t$ is the ``percentile`` of the view's magnitudes over all pixels;
    values are divided by $t$ and clipped:

    $$v = \\mathrm{clip}(s / t, -1, 1), \\quad t = P_{p}(|s|)$$

    Args:
        attr: ``(C, H, W)`` or ``(H, W)`` raw attribution (saliency, integrated gradients...).
        view: ``"all"`` (signed), ``"positive"``, ``"negative"`` or ``"absolute"``.
        percentile: outlier clipping percentile in (0, 100]; 100 scales by the maximum.

    Returns:
        ``(values, t)``: values in [-1, 1] for ``"all"``, else in [0, 1]; and the scale
        ``t`` (0 when the attribution is zero everywhere).
    """
    check_choice("view", view, VIEWS)
    check_float("percentile", percentile, minimum=0.0, strict_minimum=True, maximum=100.0)
    s = _reduce_attribution(attr)
    if view == "positive":
        s = np.maximum(s, 0.0)
    elif view == "negative":
        s = np.maximum(-s, 0.0)
    elif view == "absolute":
        s = np.abs(s)
    mag = np.abs(s)
    t = float(np.percentile(mag, percentile))
    if t <= 0.0:
        t = float(mag.max())
    if t <= 0.0:
        return np.zeros_like(s), 0.0
    lo = -1.0 if view == "all" else 0.0
    return np.clip(s / t, lo, 1.0), t


def attribution(
    attr: Any,
    *,
    view: View = "all",
    percentile: float = 99.0,
    cmap: str | Colormap | None = None,
    image: Any = None,
    alpha: float = 0.5,
    preset: Any = None,
) -> Image.Image:
    """Color a signed pixel attribution, optionally blended over its image.

    The signed view uses a diverging colormap centred at 0 (``"bwr"``: blue negative, white
    zero, red positive); the value at the ``percentile`` of the magnitudes reaches the end of
    the colormap and larger outliers are clipped (see :func:`attribution_values`).

    Args:
        attr: ``(C, H, W)`` or ``(H, W)`` raw attribution.
        view: ``"all"``, ``"positive"``, ``"negative"`` or ``"absolute"``.
        percentile: outlier clipping percentile (default 99).
        cmap: colormap; default per view from :data:`DEFAULT_VIEW_CMAPS`.
        image: optional image to blend under the colored attribution.
        alpha: weight of the attribution when ``image`` is given.
        preset: normalization of ``image``.

    Returns:
        An RGB PIL image.
    """
    values, _ = attribution_values(attr, view=view, percentile=percentile)
    cm = get_cmap(cmap if cmap is not None else DEFAULT_VIEW_CMAPS[view])
    colored = colorize((values + 1.0) / 2.0 if view == "all" else values, cm)
    if image is None:
        return to_pil(colored)
    a = _check_alpha(alpha)
    img = to_rgb(to_display(image, preset))
    if img.shape[:2] != colored.shape[:2]:
        colored = np.stack([to_map(colored[..., c], img.shape[:2]) for c in range(3)], axis=-1)
    return to_pil((1.0 - a) * img + a * colored)


def show_image(image: Any, *, preset: Any = None) -> Image.Image:
    """The input image as it looks to a person: un-normalized with ``preset``, as PIL."""
    return to_pil(to_display(image, preset))
