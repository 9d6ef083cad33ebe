"""One picture to compare methods on every trust metric: a radar or grouped bar chart.

Metrics differ in scale and direction (deletion AUC: lower is better, pointing game: higher),
so each metric is rescaled across the methods shown: 1 for the best method, 0 for the worst,
direction given by the caller (the metric registry knows it:
``cnnlens.metrics.get_metric(name).higher_is_better``). The chart says which method wins
where; the tables keep the raw numbers.

Example:
    >>> means = {"gradcam": {"pointing_game": 0.89, "deletion": 0.12},
    ...          "saliency": {"pointing_game": 0.58, "deletion": 0.20}}
    >>> up = {"pointing_game": True, "deletion": False}
    >>> fig = summary_chart(means, kind="bars", higher_is_better=up)  # doctest: +SKIP
    >>> save_png(fig, "summary.png")                        # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from matplotlib.figure import Figure

from cnnlens.errors import InputError

__all__ = ["family_scores", "relative_scores", "summary_chart"]


def _direction(metric: str, higher_is_better: Mapping[str, bool]) -> bool:
    if metric not in higher_is_better:
        raise InputError(
            f"metric {metric!r} has no direction; give it in higher_is_better "
            "(cnnlens.metrics.get_metric(name).higher_is_better)"
        )
    return bool(higher_is_better[metric])


def relative_scores(
    means: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool],
) -> tuple[list[str], list[str], list[list[float]]]:
    """Per-metric scores rescaled across methods: 1 = best method, 0 = worst.

    $$s'_{m,k} = \\frac{s_{m,k} - \\mathrm{worst}_k}{\\mathrm{best}_k - \\mathrm{worst}_k}$$

    A metric on which every method scores the same gets 1 for all; a missing or NaN score
    stays NaN (drawn as a gap).

    Args:
        means: method -> metric -> mean score.
        higher_is_better: metric -> True when higher is better, for every metric shown.

    Returns:
        methods, metrics (in first-seen order), and the rescaled scores [method][metric].
    """
    if not means:
        raise InputError("means must map at least one method to its metric means, got none")
    methods = list(means)
    metrics: list[str] = []
    for row in means.values():
        metrics += [k for k in row if k not in metrics]
    table = [[float(means[m].get(k, math.nan)) for k in metrics] for m in methods]
    for j, metric in enumerate(metrics):
        col = [row[j] for row in table if not math.isnan(row[j])]
        if not col:
            continue
        best_high = _direction(metric, higher_is_better)
        best, worst = (max(col), min(col)) if best_high else (min(col), max(col))
        for row in table:
            if not math.isnan(row[j]):
                row[j] = 1.0 if best == worst else (row[j] - worst) / (best - worst)
    return methods, metrics, table


def family_scores(
    means: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool],
    families: Mapping[str, str],
) -> dict[str, dict[str, float]]:
    """Per method, the mean of its :func:`relative_scores` over each family's metrics.

    $$F_{m,f} = \\frac{1}{|K_f|} \\sum_{k \\in K_f} s'_{m,k}$$

    over the metrics $K_f$ of family $f$ the method has a score for (a family it has none
    for is left out of its row). Every family score is then "higher is better", 1 when the
    method is the best shown on every metric of the family.

    Args:
        means: method -> metric -> mean score.
        higher_is_better: metric -> direction, for every metric in ``means``.
        families: metric -> family name (the metric registry's ``family``).
    """
    methods, metrics, table = relative_scores(means, higher_is_better)
    out: dict[str, dict[str, float]] = {}
    for method, row in zip(methods, table, strict=True):
        groups: dict[str, list[float]] = {}
        for metric, value in zip(metrics, row, strict=True):
            if not math.isnan(value):
                groups.setdefault(families.get(metric, metric), []).append(value)
        out[method] = {f: sum(v) / len(v) for f, v in groups.items()}
    return out


def summary_chart(
    means: Mapping[str, Mapping[str, float]],
    *,
    kind: str = "radar",
    higher_is_better: Mapping[str, bool],
    short_labels: Mapping[str, str] | None = None,
    title: str | None = None,
    size: float = 5.0,
) -> Figure:
    """A radar (one polygon per method) or grouped bar chart of :func:`relative_scores`.

    Args:
        means: method -> metric -> mean score (baselines such as ``random`` may be rows).
        kind: ``"radar"`` (needs at least 3 metrics) or ``"bars"``.
        short_labels: metric -> axis label (default the metric's name).
        higher_is_better: metric -> True when higher is better, for every metric shown.
        title: the figure's title.
        size: height in inches.

    Returns:
        A matplotlib Figure (no pyplot, no window).
    """
    if kind not in ("radar", "bars"):
        raise InputError(f"kind must be 'radar' or 'bars', got {kind!r}")
    methods, metrics, table = relative_scores(means, higher_is_better)
    labels = [(short_labels or {}).get(k, k) for k in metrics]
    if kind == "radar" and len(metrics) < 3:
        raise InputError(f"a radar chart needs at least 3 metrics, got {len(metrics)}; use bars")
    if kind == "radar":
        # the polar axes on the left, room around it for the axis labels, the legend right
        legend_in = 0.6 + 0.075 * max(len(m) for m in methods)
        width = size * 1.06 + legend_in
        fig = Figure(figsize=(width, size), dpi=100)
        ax = fig.add_axes(
            (0.16 * size / width, 0.09, 0.72 * size / width, 0.72), projection="polar"
        )
        ax.tick_params(axis="x", pad=6)
        angles = [2 * math.pi * i / len(metrics) for i in range(len(metrics))]
        for name, row in zip(methods, table, strict=True):
            ax.plot([*angles, angles[0]], [*row, row[0]], label=name, linewidth=1.5)
            ax.fill([*angles, angles[0]], [*row, row[0]], alpha=0.08)
        ax.set_xticks(angles, labels)
        ax.set_ylim(0, 1.05)
        ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "", "", "best"], fontsize=7)
        ax.legend(loc="upper left", bbox_to_anchor=(1.15, 1.1), fontsize=8, frameon=False)
    else:
        width = size * max(1.2, 0.35 * len(metrics) * len(methods) / 3)
        fig = Figure(figsize=(width, size), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        step = 0.8 / len(methods)
        for i, (name, row) in enumerate(zip(methods, table, strict=True)):
            xs = [j - 0.4 + step * (i + 0.5) for j in range(len(metrics))]
            ax.bar(xs, row, width=step, label=name)
        ax.set_xticks(range(len(metrics)), labels, rotation=30, ha="right")
        # headroom above the bars for the legend's rows
        ax.set_ylim(0, 1.08 + 0.09 * math.ceil(len(methods) / 4))
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel("relative score (1 = best shown)")
        ax.legend(fontsize=8, frameon=False, ncols=min(4, len(methods)))
    ax.set_title(
        title or "methods compared on each metric (1 = best, 0 = worst)",
        fontsize=10,
        pad=22 if kind == "radar" else 6,
    )
    return fig
