"""Pictures of whole results: what ``exp.show()``, ``exp.save()`` and Jupyter draw.

:class:`cnnlens.core.display.Displayable` asks :func:`result_figure` for a figure; the
builders are registered here by result type name (``@register_figure("Explanation")``), so
``core`` never imports ``viz`` at import time and results defined above ``viz`` (the
assessment) are drawn without ``viz`` importing them.

One-liners for pytorch-grad-cam and captum users live here too: :func:`overlay_batch` (an
overlay from a tensor image and a map in one call) and :func:`compare` (methods x images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn

from cnnlens.errors import InputError
from cnnlens.viz.figures import DPI, Colorbar, Panel, grid, label_with_prob
from cnnlens.viz.overlay import blend, map_on_image, show_image

_FIGURES: dict[str, Callable[..., Figure]] = {}


def register_figure(type_name: str) -> Callable[[Callable[..., Figure]], Callable[..., Figure]]:
    """Register the figure builder for results whose class (or a base class) is ``type_name``."""

    def deco(fn: Callable[..., Figure]) -> Callable[..., Figure]:
        _FIGURES[type_name] = fn
        return fn

    return deco


def result_figure(result: Any, **options: Any) -> Figure:
    """The figure of any result cnnlens can draw (an Explanation, an assessment, ...)."""
    for cls in type(result).__mro__:
        if cls.__name__ in _FIGURES:
            return _FIGURES[cls.__name__](result, **options)
    raise InputError(
        f"no picture for a {type(result).__name__}; drawable results: {', '.join(sorted(_FIGURES))}"
    )


def plot_into(fig: Figure, ax: Any = None) -> Any:
    """Draw a rendered figure into a matplotlib ``Axes`` (a new pyplot one when None)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    if ax is None:
        import matplotlib.pyplot as plt

        w, h = fig.get_size_inches()
        _, ax = plt.subplots(figsize=(w, h), dpi=fig.dpi)
    ax.imshow(rgba)
    ax.set_axis_off()
    return ax


def show_figure(fig: Figure) -> None:
    """Show a figure inline in Jupyter (IPython display), else in a pyplot window."""
    try:
        from IPython import get_ipython
        from IPython.display import Image as IPImage
        from IPython.display import display
    except ImportError:
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is not None and get_ipython() is not None:
        from cnnlens.viz.figures import to_png_bytes

        display(IPImage(data=to_png_bytes(fig)))
        return
    import matplotlib.pyplot as plt

    plot_into(fig)
    plt.show()


def _probs(scores: Any) -> Tensor | None:
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        return None
    return torch.softmax(scores.detach().float().cpu(), dim=1)


def _caption(c: int, probs: Tensor | None, b: int, names: Sequence[str] | None) -> str:
    if c < 0:
        return "custom target"
    name = names[c] if names and c < len(names) else f"class {c}"
    p = float(probs[b, c]) if probs is not None and c < probs.shape[1] else None
    return label_with_prob(name, p)


def _photo(image: Any, b: int) -> Any:
    if image is None:
        return None
    if isinstance(image, (list, tuple)):
        return image[b] if b < len(image) else None
    return image if b == 0 else None


@register_figure("Explanation")
def explanation_grid(
    exp: Any,
    *,
    image: Any = None,
    geometry: Any = None,
    preset: Any = None,
    class_names: Sequence[str] | None = None,
    max_images: int = 4,
    cmap: str = "jet",
    alpha: float = 0.5,
    dpi: int = DPI,
) -> Figure:
    """Each explained input with every map overlaid: one row per image, one column per class.

    Args:
        exp: an :class:`cnnlens.Explanation`.
        image: the photo (or a list, one per row) to draw on instead of ``exp.inputs``; with
            ``geometry`` the maps are put back where the model's input lies on it.
        geometry: a :class:`cnnlens.data.Geometry` (or a list, one per row).
        preset: normalization of ``exp.inputs`` (default ``exp.preset``).
        class_names: class names (default ``exp.class_names``; indices when unknown).
        max_images: rows drawn at most.
        cmap: colormap of the maps.
        alpha: weight of the map in the overlay.
        dpi: figure resolution.

    Returns:
        A figure titled with the method and the layer, captions ``"class · p = 0.93"``.
    """
    maps = exp.maps.detach().float().cpu()
    if maps.dim() == 3:
        maps = maps[:, None]
    targets = exp.targets.detach().cpu().reshape(maps.shape[0], -1)
    preset = exp.preset if preset is None else preset
    names = list(class_names) if class_names is not None else exp.class_names
    probs = _probs(exp.scores)
    inputs = exp.inputs
    if inputs is not None and inputs.dim() == 3:
        inputs = inputs[None]
    rows, labels = [], []
    for b in range(min(maps.shape[0], max(1, int(max_images)))):
        photo = _photo(image, b)
        geo = geometry[b] if isinstance(geometry, (list, tuple)) else geometry
        base = photo if photo is not None else (inputs[b] if inputs is not None else None)
        if base is None:
            raise InputError(
                "this explanation holds no input image; pass image= (the photo or the input)"
            )
        shown = show_image(base, preset=None if photo is not None else preset)
        disp = np.asarray(shown.convert("RGB"), dtype=np.float64) / 255.0
        row = [Panel(shown, caption="input")]
        for k in range(maps.shape[1]):
            values, inside = map_on_image(
                maps[b, k], disp.shape[:2], geo if photo is not None else None
            )
            cap = _caption(int(targets[b, k]), probs, b, names)
            row.append(Panel(blend(disp, values, inside, cmap=cmap, alpha=alpha), caption=cap))
        rows.append(row)
        labels.append(f"image {b}")
    title = exp.method + (f" · layer {exp.layer}" if exp.layer else "")
    if maps.shape[0] > len(rows):
        title += f" (first {len(rows)} of {maps.shape[0]} images)"
    return grid(
        rows,
        row_labels=labels if len(rows) > 1 else None,
        title=title,
        colorbar=Colorbar(cmap, 0.0, 1.0, "relevance"),
        dpi=dpi,
    )


def overlay_batch(
    x: Tensor, maps: Tensor, *, preset: Any = None, cmap: str = "jet", alpha: float = 0.5
) -> list[Image.Image]:
    """Overlays of a batch in one call: ``x`` (B, C, H, W) or (C, H, W), maps (B[, K], H, W).

    Returns:
        One RGB PIL image per image (and per class when maps are (B, K, H, W)), row-major.

    Example:
        >>> viz.overlay_batch(x, exp.maps, preset="imagenet")[0].save("o.png")  # doctest: +SKIP
    """
    if x.dim() == 3:
        x = x[None]
    m = maps.detach().float().cpu()
    if m.dim() == 2:
        m = m[None]
    if m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[0] != x.shape[0]:
        raise InputError(
            f"maps must be (B, H, W) or (B, K, H, W) for x of batch {x.shape[0]}; "
            f"got {tuple(maps.shape)}"
        )
    out = []
    for b in range(x.shape[0]):
        disp = np.asarray(show_image(x[b], preset=preset).convert("RGB"), np.float64) / 255.0
        for k in range(m.shape[1]):
            values, inside = map_on_image(m[b, k], disp.shape[:2])
            out.append(blend(disp, values, inside, cmap=cmap, alpha=alpha))
    return out


def compare(
    model: nn.Module,
    x: Tensor,
    methods: Sequence[str],
    *,
    target: Any = None,
    preset: Any = None,
    class_names: Sequence[str] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    dpi: int = DPI,
    **options: Any,
) -> Figure:
    """Explain ``x`` with each method and draw images (rows) x methods (columns) in one call.

    Args:
        model: the CNN.
        x: (B, C, H, W) or (C, H, W) input, normalized with ``preset``.
        methods: registry names (``cnnlens.list_methods()``).
        target: as for :func:`cnnlens.explain` (None: each image's top class).
        preset: the input's normalization, for display.
        class_names: for the captions.
        cmap, alpha, dpi: drawing options.
        **options: passed to every :func:`cnnlens.explain` call (e.g. ``layer=``).

    Example:
        >>> fig = viz.compare(model, x, ["gradcam", "rise"], preset="imagenet")  # doctest: +SKIP
    """
    import cnnlens

    if isinstance(methods, str) or not methods:
        raise InputError(f"methods must be a non-empty list of method names; got {methods!r}")
    if x.dim() == 3:
        x = x[None]
    exps = [cnnlens.explain(model, x, method=m, target=target, **options) for m in methods]
    probs = _probs(exps[0].scores)
    rows = []
    for b in range(x.shape[0]):
        disp = np.asarray(show_image(x[b], preset=preset).convert("RGB"), np.float64) / 255.0
        c = int(exps[0].targets.reshape(x.shape[0], -1)[b, 0])
        row = [Panel(disp, caption=_caption(c, probs, b, class_names))]
        for e in exps:
            m = e.maps[b] if e.maps.dim() == 3 else e.maps[b, 0]
            values, _ = map_on_image(m.detach().float().cpu(), disp.shape[:2])
            row.append(Panel(blend(disp, values, None, cmap=cmap, alpha=alpha)))
        rows.append(row)
    return grid(
        rows,
        col_labels=["input", *methods],
        colorbar=Colorbar(cmap, 0.0, 1.0, "relevance"),
        dpi=dpi,
    )


def _bound(row: Any, key: str, default: float) -> float:
    v = row.get(key) if row else None
    return default if v is None or not math.isfinite(v) else float(v)


@register_figure("AssessResult")
def assessment_figure(result: Any, *, dpi: int = DPI) -> Figure:
    """One panel per metric: each method's mean with its 95 % interval, best direction named.

    Args:
        result: a :class:`cnnlens.assess.AssessResult` (anything with ``rows`` of dicts with
            ``method``, ``metric``, ``mean``, ``low``, ``high`` and ``higher_is_better``).
    """
    rows = [r for r in result.rows if r.get("mean") is not None and math.isfinite(r["mean"])]
    if not rows:
        raise InputError("the assessment has no finite values to draw")
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cols = min(3, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig = Figure(
        figsize=(4.0 * cols, 0.35 * len(methods) * nrows + 1.2 * nrows),
        dpi=dpi,
        layout="constrained",
    )
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        by = {r["method"]: r for r in rows if r["metric"] == metric}
        ys = list(range(len(methods)))
        mean = [by[m]["mean"] if m in by else np.nan for m in methods]
        lo = [
            by[m].get("low") if m in by and by[m].get("low") is not None else v
            for m, v in zip(methods, mean)
        ]
        hi = [
            by[m].get("high") if m in by and by[m].get("high") is not None else v
            for m, v in zip(methods, mean)
        ]
        err = np.array([np.subtract(mean, lo), np.subtract(hi, mean)]).clip(min=0)
        ax.barh(ys, mean, xerr=err, color="#4c78a8", ecolor="#333333", capsize=2)
        ax.set_yticks(ys, methods, fontsize=8)
        ax.invert_yaxis()
        hib = next((r.get("higher_is_better") for r in by.values()), None)
        arrow = {True: " (↑ better)", False: " (↓ better)"}.get(hib, "")
        ax.set_title(f"{metric}{arrow}", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_axis_off()
    fig.suptitle("assessment: mean and 95 % interval per method", fontsize=11)
    return fig
