"""How to read the report's maps: colour bars of the two colormaps the maps are drawn with and
the meaning of every number printed under a map (issue 18: captions defined in the report)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["STAT_MEANINGS", "colour_bars", "map_legend"]

# the numbers under a map (cnnlens.metrics.describe.map_stats and the methods' extras)
STAT_MEANINGS: dict[str, str] = {
    "mean": "mean of the map, whose values run from 0 to 1",
    "coverage": "share of the image where the map is at 0.5 or above (0: a point, 1: all)",
    "peak_y": "height of the map's maximum as a share of the image height (0 top, 1 bottom)",
    "peak_x": "position of the map's maximum as a share of the image width (0 left, 1 right)",
    "sum": "total signed attribution over all pixels and channels (for integrated gradients "
    "and DeepLIFT about the target's score minus the baseline's)",
    "delta": "completeness gap: the attributions' sum minus the score difference they should "
    "add up to (near 0 when enough steps were taken)",
    "max": "largest value of the map",
    "min": "smallest value of the map",
}


def _gradient(cmap_name: str, stops: int = 11) -> str:
    """A CSS ``linear-gradient`` through ``stops`` colours of a matplotlib colormap."""
    from cnnlens.viz import get_cmap

    cmap = get_cmap(cmap_name)
    parts = []
    for i in range(stops):
        r, g, b, _ = cmap(i / (stops - 1))
        parts.append(f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)}) {i * 10}%")
    return f"linear-gradient(to right, {', '.join(parts)})"


def colour_bars() -> list[dict[str, str]]:
    """The two colour bars: heat overlays (jet, 0 to 1) and signed attributions (bwr)."""
    from cnnlens.viz.overlay import DEFAULT_VIEW_CMAPS

    signed = DEFAULT_VIEW_CMAPS["all"]
    return [
        {
            "name": "heat overlay (jet)",
            "css": _gradient("jet"),
            "low": "0",
            "mid": "0.5",
            "high": "1: the map's maximum",
        },
        {
            "name": f"signed pixel attribution ({signed})",
            "css": _gradient(signed),
            "low": "negative (against the class)",
            "mid": "0",
            "high": "positive (for the class)",
        },
    ]


def map_legend(stat_keys: Iterable[str]) -> dict[str, Any]:
    """The legend of a report with maps: the colour bars and the meaning of each statistic
    among ``stat_keys`` (in the order of :data:`STAT_MEANINGS`; unknown keys left out)."""
    keys = set(stat_keys)
    return {
        "bars": colour_bars(),
        "stats": [(k, v) for k, v in STAT_MEANINGS.items() if k in keys],
    }
