"""Figures of an assessment: mean deletion and insertion curves, and the sanity cascade of
every method. Built without pyplot (a :class:`matplotlib.figure.Figure` to save).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["curves_figure", "sanity_figure"]

_CURVES = ("deletion", "insertion")


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(max(n, 1))]


def curves_figure(
    curves: Mapping[str, Mapping[str, Tensor]], baselines: Sequence[str] = ("random", "centre")
) -> Any:
    """The mean deletion and insertion curve of every method, the area in each label.

    Args:
        curves: ``{method: {"deletion": (R, S) tensor, "insertion": ...}}``, one curve per
            row (NaN rows left out of the mean).
        baselines: methods drawn in black (``random`` dotted, the others dashed).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    methods = list(curves)
    cmap = _colours(len(methods))
    for ax, name in zip(axes, _CURVES):
        for i, method in enumerate(methods):
            c = curves[method].get(name)
            if c is None or c.numel() == 0:
                continue
            mean = torch.nanmean(c.double(), dim=0).numpy()
            xs = torch.linspace(0, 1, mean.shape[0]).numpy()
            auc = float(torch.nanmean(torch.trapezoid(c.double(), torch.as_tensor(xs), dim=1)))
            base = method in baselines
            ax.plot(
                xs,
                mean,
                color="black" if base else cmap[i],
                linestyle=(":" if method == "random" else "--") if base else "-",
                linewidth=1.6 if base else 1.1,
                label=f"{method} ({auc:.3f})",
            )
        ax.set_xlabel(f"fraction of pixels {'removed' if name == 'deletion' else 'inserted'}")
        ax.set_ylabel("probability of the explained class")
        ax.set_ylim(-0.02, 1.02)
        better = "lower" if name == "deletion" else "higher"
        ax.set_title(f"{name} (area in brackets, {better} is better)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, ncol=2, loc="best")
    return fig


def sanity_figure(
    curves: Mapping[str, Sequence[float]],
    steps: Sequence[str],
    labels: Mapping[str, str],
    threshold: float,
) -> Any:
    """Every method's mean |similarity| per cascade step; the verdict reads the shaded half.

    Args:
        curves: ``{method: similarity per step}`` (step 0 is the original model).
        steps: the step labels of the longest cascade.
        labels: ``{method: legend label}`` (the verdict and its value).
        threshold: the verdict's threshold, drawn as a dashed line.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax = fig.add_subplot()
    cols = _colours(len(curves))
    for i, (method, curve) in enumerate(curves.items()):
        ax.plot(
            range(len(curve)),
            list(curve),
            marker="o",
            markersize=3,
            color=cols[i],
            label=labels.get(method, method),
        )
    if steps:
        upper = math.ceil((len(steps) - 1) / 2)
        ax.axvspan(0.5, upper + 0.5, color="grey", alpha=0.12, label="upper half (verdict)")
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels(list(steps), rotation=60, ha="right", fontsize=7)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("|Spearman| to the original attributions")
    ax.set_xlabel("layers re-initialized, from the output down (cumulative)")
    ax.set_title("Cascading model randomization (Adebayo et al. 2018)")
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
