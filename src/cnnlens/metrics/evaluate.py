"""Run several metrics on several methods at once, with the random and centre baselines.

The building blocks for a command that assesses methods over a dataset:

* :func:`evaluate_maps`: per-image scores of one batch of maps for the chosen metrics;
* :func:`score_methods`: explain a batch with each method (and add the baselines), then
  :func:`evaluate_maps` each; concatenate the per-image tensors over batches;
* :func:`summarize`: one row per (method, metric) with the mean and its confidence interval.

Example:
    >>> scores = score_methods(model, x, ["gradcam", "saliency"], masks=masks)  # doctest: +SKIP
    >>> for row in summarize(scores): print(row["method"], row["metric"], row["mean"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.errors import InputError
from cnnlens.metrics import complexity, faithfulness, localization
from cnnlens.metrics._common import (
    Activation,
    check_images,
    frozen_eval,
    model_device,
    resolve_class_targets,
)
from cnnlens.metrics.aggregate import aggregate
from cnnlens.metrics.baselines import centre_maps, random_maps

__all__ = [
    "BASELINES",
    "METRICS",
    "MetricInfo",
    "evaluate_maps",
    "list_metrics",
    "score_methods",
    "summarize",
]


@dataclass(frozen=True)
class MetricInfo:
    """What a metric measures and which way is better.

    Attributes:
        name: the metric's name in :data:`METRICS`.
        family: ``"faithfulness"``, ``"localization"`` or ``"complexity"``.
        higher_is_better: the direction of improvement.
        needs_masks: whether ground-truth masks are required.
        summary: what the per-image number is.
    """

    name: str
    family: str
    higher_is_better: bool
    needs_masks: bool
    summary: str


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("deletion", "faithfulness", False, False, "area under the deletion curve"),
        MetricInfo("insertion", "faithfulness", True, False, "area under the insertion curve"),
        MetricInfo("average_drop", "faithfulness", False, False, "relative confidence drop"),
        MetricInfo("increase_in_confidence", "faithfulness", True, False, "confidence rises (0/1)"),
        MetricInfo("road_morf", "faithfulness", False, False, "mean ROAD MoRF probability"),
        MetricInfo("road_lerf", "faithfulness", True, False, "mean ROAD LeRF probability"),
        MetricInfo("road", "faithfulness", True, False, "(LeRF - MoRF) / 2"),
        MetricInfo("pointing_game", "localization", True, True, "maximum inside the mask"),
        MetricInfo("energy_pointing_game", "localization", True, True, "mass inside the mask"),
        MetricInfo("relevance_rank_accuracy", "localization", True, True, "top-|S| in mask"),
        MetricInfo("iou", "localization", True, True, "IoU of the thresholded map"),
        MetricInfo("sparseness", "complexity", True, False, "Gini index"),
        MetricInfo("entropy", "complexity", False, False, "entropy of the map (nats)"),
    )
}

BASELINES: tuple[str, ...] = ("random", "centre")


def list_metrics() -> list[str]:
    """Names of the metrics :func:`evaluate_maps` computes, in a stable order."""
    return list(METRICS)


def _choose(metrics: Sequence[str] | None, has_masks: bool) -> list[str]:
    if metrics is None:
        return [n for n, info in METRICS.items() if has_masks or not info.needs_masks]
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(dict.fromkeys(metrics))
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise InputError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; available: {', '.join(METRICS)}"
        )
    if not has_masks:
        needing = [n for n in names if METRICS[n].needs_masks]
        if needing:
            raise InputError(f"metric(s) {', '.join(needing)} need ground-truth masks (masks=)")
    if not names:
        raise InputError(f"metrics is empty; choose from {', '.join(METRICS)}")
    return names


def evaluate_maps(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    target: object = None,
    masks: Tensor | None = None,
    metrics: Sequence[str] | None = None,
    activation: Activation = "softmax",
    batch_size: int = 64,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Tensor]:
    """Per-image scores of one batch of maps, float (B,) per metric.

    Args:
        model: the classifier (left unchanged).
        x: images (B, C, H, W).
        maps: (B, H, W) maps in [0, 1].
        target: None (top class), an int or one class per image.
        masks: binary ground truth for the localization metrics, or None to skip them.
        metrics: names from :func:`list_metrics`; default all that apply.
        activation: ``"softmax"``, ``"sigmoid"`` or None.
        batch_size: most images per forward pass.
        options: per-metric keyword arguments, e.g. ``{"deletion": {"step": 64}}``; ROAD's
            options go under ``"road"`` and serve ``road_morf`` and ``road_lerf`` too.

    Returns:
        ``{metric: (B,) tensor}`` in the order asked.
    """
    names = _choose(metrics, masks is not None)
    opts = {k: dict(v) for k, v in (options or {}).items()}
    unknown = [k for k in opts if k not in METRICS]
    if unknown:
        raise InputError(f"options for unknown metric(s) {', '.join(map(repr, unknown))}")
    common = {"target": target, "activation": activation, "batch_size": batch_size}
    out: dict[str, Tensor] = {}
    roads: dict[str, faithfulness.CurveResult] = {}

    def road(order: str) -> faithfulness.CurveResult:
        if order not in roads:
            roads[order] = faithfulness.road(
                model, x, maps, order=order, **common, **opts.get("road", {})
            )
        return roads[order]

    for name in names:
        kw = opts.get(name, {})
        if name in ("deletion", "insertion"):
            fn = faithfulness.deletion if name == "deletion" else faithfulness.insertion
            out[name] = fn(model, x, maps, **common, **kw).auc
        elif name == "average_drop":
            out[name] = faithfulness.average_drop(model, x, maps, **common, **kw)
        elif name == "increase_in_confidence":
            out[name] = faithfulness.increase_in_confidence(model, x, maps, **common, **kw)
        elif name == "road_morf":
            out[name] = road("morf").mean
        elif name == "road_lerf":
            out[name] = road("lerf").mean
        elif name == "road":
            out[name] = faithfulness.road_combined(road("morf"), road("lerf"))
        elif name in ("sparseness", "entropy"):
            out[name] = getattr(complexity, name)(maps, **kw)
        else:
            out[name] = getattr(localization, name)(maps, masks, **kw)
    return out


def score_methods(
    model: nn.Module,
    x: Tensor,
    methods: Sequence[str],
    *,
    target: object = None,
    masks: Tensor | None = None,
    metrics: Sequence[str] | None = None,
    baselines: bool = True,
    seed: int = 0,
    activation: Activation = "softmax",
    batch_size: int = 64,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Explain one batch with each method and score the maps; baselines added.

    Every method (and baseline) explains the same class per image: ``target``, or the
    model's top class when None. ``"random"`` maps come from :func:`random_maps` with
    ``seed``, ``"centre"`` maps from :func:`centre_maps`.

    Args:
        methods: registry names for :func:`cnnlens.explain`.
        method_options: per-method keyword arguments for :func:`cnnlens.explain`, e.g.
            ``{"gradcam": {"layer": "layer4"}}``.
        Others: as in :func:`evaluate_maps`.

    Returns:
        ``{method_or_baseline: {metric: (B,) tensor}}``.
    """
    from cnnlens.api import explain

    x = check_images(x).to(model_device(model, x.device))
    with frozen_eval(model):
        targets = resolve_class_targets(target, model(x))
    clash = [m for m in methods if m in BASELINES]
    if clash:
        raise InputError(f"method name(s) {', '.join(clash)} are reserved for the baselines")
    margs = {k: dict(v) for k, v in (method_options or {}).items()}
    all_maps: dict[str, Tensor] = {}
    for method in methods:
        exp = explain(model, x, method=method, target=targets, **margs.get(method, {}))
        all_maps[method] = exp.maps
    if baselines:
        like = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
        all_maps["random"] = random_maps(like, seed=seed)
        all_maps["centre"] = centre_maps(like)
    return {
        name: evaluate_maps(
            model,
            x,
            maps,
            target=targets,
            masks=masks,
            metrics=metrics,
            activation=activation,
            batch_size=batch_size,
            options=options,
        )
        for name, maps in all_maps.items()
    }


def summarize(
    scores: Mapping[str, Mapping[str, Tensor]],
    *,
    confidence: float = 0.95,
    interval: str = "t",
    n_boot: int = 10000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (method, metric): mean, confidence interval and direction.

    Args:
        scores: ``{method: {metric: per-image tensor}}`` (from :func:`score_methods`,
            concatenated over batches).
        confidence: the interval's level.
        interval: ``"t"`` or ``"bootstrap"`` (see :func:`cnnlens.metrics.aggregate`).
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        Rows with keys method, metric, family, higher_is_better, mean, low, high, std, n,
        n_missing, confidence, interval.
    """
    rows = []
    for method, per_metric in scores.items():
        for metric, values in per_metric.items():
            s = aggregate(values, confidence=confidence, method=interval, n_boot=n_boot, seed=seed)
            info = METRICS.get(metric)
            rows.append(
                {
                    "method": method,
                    "metric": metric,
                    "family": info.family if info else None,
                    "higher_is_better": info.higher_is_better if info else None,
                    "mean": s.mean,
                    "low": s.low,
                    "high": s.high,
                    "std": s.std,
                    "n": s.n,
                    "n_missing": s.n_missing,
                    "confidence": s.confidence,
                    "interval": s.method,
                }
            )
    return rows
