"""Pictures of explanations: overlays, signed attributions, figures and grids, PNG files.

numpy, PIL and matplotlib live here (never in ``core`` or ``methods``). Library calls return
PIL images or matplotlib Figures built without pyplot; nothing opens a window.

Example:
    >>> from cnnlens import viz
    >>> exp = cnnlens.explain(model, x, method="gradcam")                 # doctest: +SKIP
    >>> viz.overlay(x[0], exp.maps[0], preset="imagenet").save("o.png")   # doctest: +SKIP
    >>> fig = viz.explanation_figure(x[0], exp.maps[0], preset="imagenet")  # doctest: +SKIP
    >>> viz.save_png(fig, "run/cat_gradcam.png")                          # doctest: +SKIP
"""

from __future__ import annotations

from cnnlens.viz.figures import (
    Colorbar,
    Panel,
    atomic_write,
    attribution_figure,
    classes_grid,
    explanation_figure,
    grid,
    label_with_prob,
    layers_grid,
    methods_grid,
    save_png,
    to_png_bytes,
)
from cnnlens.viz.overlay import (
    DEFAULT_VIEW_CMAPS,
    VIEWS,
    attribution,
    attribution_values,
    colorize,
    get_cmap,
    heatmap,
    masked,
    overlay,
    show_image,
)
from cnnlens.viz.video import video_frames

__all__ = [
    "DEFAULT_VIEW_CMAPS",
    "VIEWS",
    "Colorbar",
    "Panel",
    "atomic_write",
    "attribution",
    "attribution_figure",
    "attribution_values",
    "classes_grid",
    "colorize",
    "explanation_figure",
    "get_cmap",
    "grid",
    "heatmap",
    "label_with_prob",
    "layers_grid",
    "masked",
    "methods_grid",
    "overlay",
    "save_png",
    "show_image",
    "to_png_bytes",
    "video_frames",
]
