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

from cnnlens.viz._convert import GeometryWarning
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
    maps_grid,
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
    map_on_image,
    masked,
    overlay,
    show_image,
)
from cnnlens.viz.render import render_map, show_input, signed_view, slug
from cnnlens.viz.results import (
    assessment_figure,
    compare,
    explanation_grid,
    overlay_batch,
    plot_into,
    register_figure,
    result_figure,
    show_figure,
)
from cnnlens.viz.video import video_frames

__all__ = [
    "DEFAULT_VIEW_CMAPS",
    "VIEWS",
    "Colorbar",
    "GeometryWarning",
    "Panel",
    "assessment_figure",
    "atomic_write",
    "attribution",
    "attribution_figure",
    "attribution_values",
    "classes_grid",
    "colorize",
    "compare",
    "explanation_figure",
    "explanation_grid",
    "get_cmap",
    "grid",
    "heatmap",
    "label_with_prob",
    "layers_grid",
    "map_on_image",
    "maps_grid",
    "masked",
    "methods_grid",
    "overlay",
    "overlay_batch",
    "plot_into",
    "register_figure",
    "render_map",
    "result_figure",
    "save_png",
    "show_figure",
    "show_image",
    "show_input",
    "signed_view",
    "slug",
    "to_png_bytes",
    "video_frames",
]
