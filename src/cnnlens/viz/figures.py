"""Matplotlib figures: one explanation, and grids of methods / layers / classes x images.

Figures are built with :class:`matplotlib.figure.Figure` and an Agg canvas directly, never
through pyplot, so they neither touch the caller's pyplot state nor open windows. Save them
with :func:`save_png` (atomic) or turn them into bytes with :func:`to_png_bytes`.

Every grid is drawn by :func:`grid`; the specific figures only arrange their cells.
"""

from __future__ import annotations

import io
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from PIL import Image

from cnnlens.errors import InputError
from cnnlens.viz._convert import to_display
from cnnlens.viz.overlay import (
    DEFAULT_VIEW_CMAPS,
    View,
    attribution_values,
    get_cmap,
    heatmap,
    masked,
    overlay,
    show_image,
)

DPI = 100
"""Default resolution: one cell of 2.4 inches is 240 pixels, text stays legible at 100%."""
CELL_INCHES = 2.4
TITLE_SIZE = 11
LABEL_SIZE = 9
CAPTION_SIZE = 8

# Extra room (inches) the grid reserves around the cells; see grid() for the formula.
_ROW_LABEL_IN = 0.45
_COL_LABEL_IN = 0.40
_TITLE_IN = 0.45
_CAPTION_IN = 0.28
_COLORBAR_IN = 0.85


@dataclass
class Panel:
    """One cell of a :func:`grid`.

    Attributes:
        image: what to draw: a PIL image, a numpy array ``(H, W)`` / ``(H, W, 3)`` (float in
            [0, 1] or uint8), a torch tensor ``(C, H, W)`` / ``(H, W)``, or None for an empty
            cell. With ``cmap`` set, ``image`` is a 2-D array of scalar values instead.
        caption: small text under the cell (e.g. ``"cat · p = 0.93"``).
        cmap: colormap for scalar values (draws ``image`` with ``vmin``/``vmax``).
        vmin: value drawn with the first color of ``cmap``.
        vmax: value drawn with the last color of ``cmap``.
    """

    image: Any
    caption: str | None = None
    cmap: str | Colormap | None = None
    vmin: float = 0.0
    vmax: float = 1.0


@dataclass
class Colorbar:
    """A colorbar shared by all cells of a grid (``cmap`` from ``vmin`` to ``vmax``)."""

    cmap: str | Colormap = "jet"
    vmin: float = 0.0
    vmax: float = 1.0
    label: str = ""


def label_with_prob(name: str, prob: float | None = None) -> str:
    """``"cat · p = 0.93"``: a class name with its probability, for titles and captions."""
    return name if prob is None else f"{name} · p = {float(prob):.2f}"


def _new_figure(width: float, height: float, dpi: int) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _cell_array(cell: Panel) -> tuple[np.ndarray, dict[str, Any]]:
    if cell.cmap is not None:
        arr = cell.image
        if isinstance(arr, torch.Tensor):
            arr = arr.detach().to("cpu", torch.float64).numpy()
        arr = np.asarray(arr, dtype=np.float64)
        while arr.ndim > 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise InputError(f"a Panel with a cmap needs a 2-D array; got shape {arr.shape}")
        return arr, {"cmap": get_cmap(cell.cmap), "vmin": cell.vmin, "vmax": cell.vmax}
    arr = to_display(cell.image)
    if arr.ndim == 2:
        return arr, {"cmap": get_cmap("gray"), "vmin": 0.0, "vmax": 1.0}
    return arr, {}


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width=max(width, 8))) or text


def grid(
    cells: Sequence[Sequence[Any]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    colorbar: Colorbar | str | None = None,
    cell_inches: float = CELL_INCHES,
    dpi: int = DPI,
) -> Figure:
    """Draw a rows x columns grid of pictures with labels, captions and a shared colorbar.

    The figure measures, in inches,

    $$W = n_{cols} c + 0.45 [\\text{row labels}] + 0.85 [\\text{colorbar}]$$
    $$H = n_{rows} c + 0.40 [\\text{col labels}] + 0.45 [\\text{title}]
        + 0.28\\, n_{\\text{rows with captions}}$$

    with $c$ = ``cell_inches``, so a PNG saved at ``dpi`` is ``round(W * dpi)`` pixels wide.

    Args:
        cells: rows of cells; a cell is a :class:`Panel`, a PIL image, an array, a tensor or
            None (left empty). Rows may be ragged; missing cells are empty.
        row_labels: one label per row, written vertically on the left.
        col_labels: one label per column, written above the first row.
        title: figure title.
        colorbar: a :class:`Colorbar` or a colormap name (range [0, 1]) drawn on the right.
        cell_inches: side of one cell.
        dpi: resolution of the figure (and of PNGs saved from it).

    Returns:
        A matplotlib Figure with an Agg canvas.
    """
    rows = [[c if isinstance(c, Panel) or c is None else Panel(c) for c in r] for r in cells]
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise InputError("cells must hold at least one row with one cell; got an empty grid")
    if row_labels is not None and len(row_labels) != n_rows:
        raise InputError(
            f"row_labels must have {n_rows} entries (one per row); got {len(row_labels)}"
        )
    if col_labels is not None and len(col_labels) != n_cols:
        raise InputError(
            f"col_labels must have {n_cols} entries (one per column); got {len(col_labels)}"
        )
    if isinstance(colorbar, str):
        colorbar = Colorbar(colorbar)
    caption_rows = sum(any(c is not None and c.caption for c in r) for r in rows)
    width = n_cols * cell_inches + (_ROW_LABEL_IN if row_labels else 0.0)
    width += _COLORBAR_IN if colorbar is not None else 0.0
    height = n_rows * cell_inches + (_COL_LABEL_IN if col_labels else 0.0)
    height += (_TITLE_IN if title else 0.0) + _CAPTION_IN * caption_rows
    fig = _new_figure(width, height, dpi)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    chars = int(cell_inches * 11)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            cell = rows[i][j] if j < len(rows[i]) else None
            if cell is not None and cell.image is not None:
                arr, kw = _cell_array(cell)
                ax.imshow(arr, **kw)
            if cell is not None and cell.caption:
                ax.set_xlabel(_wrap(cell.caption, chars), fontsize=CAPTION_SIZE)
            if j == 0 and row_labels:
                ax.set_ylabel(_wrap(str(row_labels[i]), chars), fontsize=LABEL_SIZE)
            if i == 0 and col_labels:
                ax.set_title(_wrap(str(col_labels[j]), chars), fontsize=LABEL_SIZE)
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE)
    if colorbar is not None:
        sm = ScalarMappable(Normalize(colorbar.vmin, colorbar.vmax), get_cmap(colorbar.cmap))
        cb = fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.85, fraction=0.05, pad=0.02)
        cb.ax.tick_params(labelsize=CAPTION_SIZE)
        if colorbar.label:
            cb.set_label(colorbar.label, fontsize=LABEL_SIZE)
    return fig


def _title(method: str | None, class_name: str | None, prob: float | None) -> str | None:
    parts = [p for p in (method, label_with_prob(class_name, prob) if class_name else None) if p]
    return " — ".join(parts) or None


def explanation_figure(
    image: Any,
    map: Any,
    *,
    preset: Any = None,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    method: str | None = None,
    class_name: str | None = None,
    prob: float | None = None,
    dpi: int = DPI,
) -> Figure:
    """Original | heatmap | overlay for one image, with a colorbar and a title.

    Args:
        image: the input image (PIL, tensor or array; tensors un-normalized with ``preset``).
        map: ``(H, W)`` map in [0, 1] (resized to the image when needed).
        preset: the image's normalization preset (name or object with mean/std).
        cmap: colormap of the map.
        alpha: weight of the map in the overlay.
        method: method name for the title (e.g. ``"gradcam"``).
        class_name: explained class for the title.
        prob: its probability for the title.
        dpi: figure resolution.

    Returns:
        A 1 x 3 figure.
    """
    img = show_image(image, preset=preset)
    size = (img.height, img.width)
    cells = [
        [
            img,
            heatmap(map, cmap=cmap, size=size),
            overlay(image, map, cmap=cmap, alpha=alpha, preset=preset),
        ]
    ]
    return grid(
        cells,
        col_labels=["image", "heatmap", "overlay"],
        title=_title(method, class_name, prob),
        colorbar=Colorbar(cmap, 0.0, 1.0, "relevance"),
        dpi=dpi,
    )


def attribution_figure(
    image: Any,
    attr: Any,
    *,
    view: View = "all",
    percentile: float = 99.0,
    cmap: str | Colormap | None = None,
    preset: Any = None,
    method: str | None = None,
    class_name: str | None = None,
    prob: float | None = None,
    dpi: int = DPI,
) -> Figure:
    """Original | signed pixel attribution, with a colorbar in the attribution's units.

    The attribution is reduced and clipped as in :func:`cnnlens.viz.attribution_values`; the
    colorbar runs from $-t$ to $t$ (signed view) or 0 to $t$, $t$ the clipping percentile.
    """
    values, t = attribution_values(attr, view=view, percentile=percentile)
    cm = cmap if cmap is not None else DEFAULT_VIEW_CMAPS[view]
    lo = -t if view == "all" else 0.0
    hi = t if t > 0 else 1.0
    cells = [[show_image(image, preset=preset), Panel(values * t, cmap=cm, vmin=lo, vmax=hi)]]
    return grid(
        cells,
        col_labels=["image", f"attribution ({view}, clipped at p{percentile:g})"],
        title=_title(method, class_name, prob),
        colorbar=Colorbar(cm, lo, hi, "attribution"),
        dpi=dpi,
    )


def _as_list(maps: Any, n: int, key: str) -> list[Any]:
    if isinstance(maps, torch.Tensor | np.ndarray):
        if maps.ndim == 2 and n == 1:
            items = [maps]
        elif maps.ndim == 3:
            items = list(maps)
        else:
            raise InputError(
                f"maps[{key!r}] must be (N, H, W) with N = {n} images; got {tuple(maps.shape)}"
            )
    else:
        items = list(maps)
    if len(items) != n:
        raise InputError(f"maps[{key!r}] must hold one map per image ({n}); got {len(items)}")
    return items


def _maps_grid(
    images: Sequence[Any],
    maps: Mapping[str, Any],
    *,
    kind: str,
    preset: Any,
    cmap: str | Colormap,
    alpha: float,
    show_input: bool,
    image_labels: Sequence[str] | None,
    captions: Mapping[str, Sequence[str | None]] | None,
    title: str | None,
    dpi: int,
) -> Figure:
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    images = list(images)
    if not images:
        raise InputError("images must hold at least one image; got none")
    if not maps:
        raise InputError("maps must map at least one row label to its maps; got none")
    if kind not in ("overlay", "heatmap", "masked"):
        raise InputError(f"kind must be 'overlay', 'heatmap' or 'masked'; got {kind!r}")
    shown = [show_image(im, preset=preset) for im in images]
    rows: list[list[Any]] = []
    labels: list[str] = []
    if show_input:
        rows.append(shown)
        labels.append("input")
    for key, value in maps.items():
        row: list[Any] = []
        caps = list(captions.get(key, [])) if captions else []
        for j, m in enumerate(_as_list(value, len(images), str(key))):
            if m is None:
                row.append(None)
                continue
            if kind == "overlay":
                pic = overlay(images[j], m, cmap=cmap, alpha=alpha, preset=preset)
            elif kind == "heatmap":
                pic = heatmap(m, cmap=cmap, size=(shown[j].height, shown[j].width))
            else:
                pic = masked(images[j], m, preset=preset)
            row.append(Panel(pic, caps[j] if j < len(caps) else None))
        rows.append(row)
        labels.append(str(key))
    bar = Colorbar(cmap, 0.0, 1.0, "relevance") if kind != "masked" else None
    return grid(rows, labels, image_labels, title=title, colorbar=bar, dpi=dpi)


def methods_grid(
    images: Sequence[Any],
    maps: Mapping[str, Any],
    *,
    kind: str = "overlay",
    preset: Any = None,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    show_input: bool = True,
    image_labels: Sequence[str] | None = None,
    captions: Mapping[str, Sequence[str | None]] | None = None,
    title: str | None = None,
    dpi: int = DPI,
) -> Figure:
    """Methods x images: the same images explained by several methods, one row per method.

    Args:
        images: the input images (a list, or a tensor (N, C, H, W)); one column each.
        maps: method name -> the maps of every image: a tensor (N, H, W) or a list of (H, W)
            maps (None leaves a cell empty); one row each, in the mapping's order.
        kind: ``"overlay"`` (default), ``"heatmap"`` or ``"masked"`` (image x map).
        preset: normalization preset of image tensors.
        cmap: colormap of the maps.
        alpha: weight of the map in overlays.
        show_input: add a first row with the input images.
        image_labels: column titles, e.g. ``label_with_prob("cat", 0.93)``.
        captions: method name -> one caption per image, shown under the cells.
        title: figure title.
        dpi: figure resolution.

    Returns:
        A Figure with one row per method (after the input row) and one column per image, and
        a colorbar for the maps.

    Example:
        >>> maps = {m: cnnlens.explain(model, x, method=m).maps for m in ["gradcam", "rise"]}
        >>> methods_grid(list(x), maps, preset="imagenet")  # doctest: +SKIP
    """
    return _maps_grid(
        images,
        maps,
        kind=kind,
        preset=preset,
        cmap=cmap,
        alpha=alpha,
        show_input=show_input,
        image_labels=image_labels,
        captions=captions,
        title=title,
        dpi=dpi,
    )


def layers_grid(
    images: Sequence[Any],
    maps: Mapping[str, Any],
    *,
    kind: str = "overlay",
    preset: Any = None,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    show_input: bool = True,
    image_labels: Sequence[str] | None = None,
    captions: Mapping[str, Sequence[str | None]] | None = None,
    title: str | None = None,
    dpi: int = DPI,
) -> Figure:
    """Layers x images: one method at several depths (near the input, middle, last conv).

    Args:
        images: the input images (a list, or a tensor (N, C, H, W)); one column each.
        maps: layer name -> the maps of every image: a tensor (N, H, W) or a list of (H, W)
            maps (None leaves a cell empty); one row each, in the mapping's order.
        kind: ``"overlay"`` (default), ``"heatmap"`` or ``"masked"`` (image x map).
        preset: normalization preset of image tensors.
        cmap: colormap of the maps.
        alpha: weight of the map in overlays.
        show_input: add a first row with the input images.
        image_labels: column titles, e.g. ``label_with_prob("cat", 0.93)``.
        captions: layer name -> one caption per image, shown under the cells.
        title: figure title.
        dpi: figure resolution.

    Returns:
        A Figure with one row per layer (after the input row) and one column per image, and
        a colorbar for the maps.

    Example:
        >>> exp = cnnlens.explain(model, x, layer=["layer1", "layer3", "layer4"])
        >>> layers_grid(list(x), exp.per_layer, preset="imagenet")  # doctest: +SKIP
    """
    return _maps_grid(
        images,
        maps,
        kind=kind,
        preset=preset,
        cmap=cmap,
        alpha=alpha,
        show_input=show_input,
        image_labels=image_labels,
        captions=captions,
        title=title,
        dpi=dpi,
    )


def classes_grid(
    images: Sequence[Any],
    maps: Mapping[str, Any],
    *,
    probs: Mapping[str, Sequence[float]] | None = None,
    kind: str = "overlay",
    preset: Any = None,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    show_input: bool = True,
    image_labels: Sequence[str] | None = None,
    captions: Mapping[str, Sequence[str | None]] | None = None,
    title: str | None = None,
    dpi: int = DPI,
) -> Figure:
    """Classes x images: the same images explained for different classes, one row per class.

    ``probs`` (class name -> the probability of that class for each image) adds captions
    ``"p = 0.93"`` under the cells (``captions`` wins where both are given).

    Args:
        images: the input images (a list, or a tensor (N, C, H, W)); one column each.
        maps: class name -> the maps of every image: a tensor (N, H, W) or a list of (H, W)
            maps (None leaves a cell empty); one row each, in the mapping's order.
        probs: class name -> that class's probability for each image (captions).
        kind: ``"overlay"`` (default), ``"heatmap"`` or ``"masked"`` (image x map).
        preset: normalization preset of image tensors.
        cmap: colormap of the maps.
        alpha: weight of the map in overlays.
        show_input: add a first row with the input images.
        image_labels: column titles, e.g. ``label_with_prob("cat", 0.93)``.
        captions: class name -> one caption per image, shown under the cells.
        title: figure title.
        dpi: figure resolution.

    Returns:
        A Figure with one row per class (after the input row) and one column per image, and
        a colorbar for the maps.

    Example:
        >>> exp = cnnlens.explain(model, x, target=[[0, 1]] * len(x))  # maps (N, 2, H, W)
        >>> classes_grid(list(x), {"circle": exp.maps[:, 0], "square": exp.maps[:, 1]})
        ... # doctest: +SKIP
    """
    caps: dict[str, Sequence[str | None]] = {}
    if probs:
        caps.update({k: [f"p = {float(p):.2f}" for p in v] for k, v in probs.items()})
    if captions:
        caps.update(captions)
    return _maps_grid(
        images,
        maps,
        kind=kind,
        preset=preset,
        cmap=cmap,
        alpha=alpha,
        show_input=show_input,
        image_labels=image_labels,
        captions=caps or None,
        title=title,
        dpi=dpi,
    )


def to_png_bytes(obj: Figure | Image.Image, *, dpi: int | None = None) -> bytes:
    """PNG bytes of a matplotlib Figure (at ``dpi``, default the figure's) or a PIL image."""
    buf = io.BytesIO()
    if isinstance(obj, Figure):
        if not isinstance(obj.canvas, FigureCanvasAgg):
            FigureCanvasAgg(obj)
        obj.savefig(buf, format="png", dpi=dpi or obj.dpi, facecolor="white")
    elif isinstance(obj, Image.Image):
        img = (
            obj if obj.mode in ("1", "L", "LA", "RGB", "RGBA", "P", "I;16") else obj.convert("RGB")
        )
        img.save(buf, format="PNG")
    else:
        raise InputError(
            f"expected a matplotlib Figure or a PIL image to save as PNG; got {type(obj).__name__}"
        )
    return buf.getvalue()


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, then
    ``os.replace``. Missing parent folders are created; a reader never sees a partial file.

    Returns:
        The path written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def save_png(
    obj: Figure | Image.Image, path: str | os.PathLike[str], *, dpi: int | None = None
) -> Path:
    """Write a Figure or PIL image as a PNG, atomically (temp file + ``os.replace``).

    Args:
        obj: a matplotlib Figure (saved at ``dpi``, default its own) or a PIL image.
        path: destination; missing parent folders are created.
        dpi: resolution for figures.

    Returns:
        The path written.
    """
    return atomic_write(path, to_png_bytes(obj, dpi=dpi))
