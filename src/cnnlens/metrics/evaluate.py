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
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.errors import InputError
from cnnlens.metrics._common import (
    Activation,
    ExplainFn,
    check_images,
    explainer,
    frozen_eval,
    model_device,
    resolve_class_targets,
)
from cnnlens.metrics.aggregate import aggregate
from cnnlens.metrics.baselines import centre_maps, random_maps
from cnnlens.metrics.registry import (
    MetricInfo,
    MetricInputs,
    get_metric,
    list_metrics,
    metric_infos,
)

__all__ = [
    "BASELINES",
    "MetricInfo",
    "check_metric_options",
    "choose_metrics",
    "evaluate_inputs",
    "evaluate_maps",
    "explainer",
    "list_metrics",
    "metric_options",
    "score_methods",
    "summarize",
]

BASELINES: tuple[str, ...] = ("random", "centre")


def choose_metrics(
    metrics: Sequence[str] | str | None,
    has_masks: bool,
    has_explain: bool = True,
    can_rebind: bool = True,
) -> list[str]:
    """Registry names from ``metrics`` (None: every metric that applies).

    Without masks the localization metrics do not apply; without an ``explain`` callable
    (fixed maps, the baselines) the metrics that re-explain their inputs do not; without
    one that can be re-bound to another model (``can_rebind``: made by :func:`explainer`
    from a registry name) the randomization metrics, which re-explain a randomized copy,
    do not.

    Raises:
        InputError: an unknown name, a metric that needs masks when there are none, or an
            empty list.
    """
    infos = metric_infos()
    if metrics is None:
        return [
            n
            for n, info in infos.items()
            if (has_masks or not info.needs_masks)
            and (has_explain or not info.needs_explain)
            and (can_rebind or not (info.needs_explain and info.family == "randomization"))
        ]
    names = list(dict.fromkeys([metrics] if isinstance(metrics, str) else metrics))
    unknown = [n for n in names if n not in infos]
    if unknown:
        raise InputError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; available: {', '.join(infos)}"
        )
    if not has_masks:
        needing = [n for n in names if infos[n].needs_masks]
        if needing:
            raise InputError(f"metric(s) {', '.join(needing)} need ground-truth masks (masks=)")
    if not names:
        raise InputError(f"metrics is empty; choose from {', '.join(infos)}")
    return names


def metric_options(name: str, options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The options ``name`` is called with: those of its option group (``road`` for the
    three ROAD scores), then its own."""
    info = get_metric(name)
    opts = options or {}
    group = dict(opts.get(info.option_group, {})) if info.option_group else {}
    return {**group, **dict(opts.get(name, {}))}


def check_metric_options(options: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Refuse options for an unknown metric, or one a metric does not take (naming those
    it takes).

    Raises:
        InputError: the first bad name or option.
    """
    infos = metric_infos()
    for name, opts in (options or {}).items():
        if name not in infos:
            raise InputError(f"options for unknown metric {name!r}; known: {', '.join(infos)}")
        takes = infos[name].option_names()
        bad = [k for k in opts if takes is not None and k not in takes]
        if bad:
            known = ", ".join(takes or []) or "none"
            raise InputError(f"metric {name} takes no option {bad[0]!r}; it takes: {known}")


def evaluate_inputs(
    inputs: MetricInputs,
    metrics: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Tensor]:
    """Per-image scores of one batch for the registered ``metrics``, each through its
    scorer; metrics that need ``explain`` are left out when ``inputs.explain`` is None.

    What the scorers share (a ROAD curve, the deletion curve) stays in ``inputs.cache``.
    """
    out: dict[str, Tensor] = {}
    for name in metrics:
        info = get_metric(name)
        if info.needs_explain and inputs.explain is None:
            continue
        out[name] = info.scorer(inputs, **metric_options(name, options))
    return out


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
    explain: ExplainFn | None = None,
    method: str | None = None,
    seed: int = 0,
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
        explain: ``explain(x, target) -> maps`` re-explains a batch with the method being
            scored, for the metrics registered with ``needs_explain``; None (fixed maps)
            leaves those metrics out. The randomization metrics re-explain a randomized
            copy of the model, so they need an ``explain`` made by :func:`explainer` from a
            registry name; by default they are left out for another callable.
        method: the method's (or baseline's) name, for the metrics that read it.
        seed: seed of the random draws of the metrics that make them.

    Returns:
        ``{metric: (B,) tensor}`` in the order asked.
    """
    rebind = callable(getattr(explain, "with_model", None))
    names = choose_metrics(metrics, masks is not None, explain is not None, rebind)
    check_metric_options(options)
    if explain is not None and any(get_metric(n).needs_explain for n in names):
        with frozen_eval(model):  # the re-explained maps need one class per image
            target = resolve_class_targets(target, model(x))
    inputs = MetricInputs(
        model=model,
        x=x,
        maps=maps,
        target=target,  # type: ignore[arg-type]
        masks=masks,
        activation=activation,
        batch_size=batch_size,
        explain=explain,
        method=method,
        seed=seed,
    )
    return evaluate_inputs(inputs, names, options)


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
    x = check_images(x).to(model_device(model, x.device))
    with frozen_eval(model):
        targets = resolve_class_targets(target, model(x))
    clash = [m for m in methods if m in BASELINES]
    if clash:
        raise InputError(f"method name(s) {', '.join(clash)} are reserved for the baselines")
    margs = {k: dict(v) for k, v in (method_options or {}).items()}
    explainers: dict[str, ExplainFn | None] = {
        m: explainer(model, m, margs.get(m, {})) for m in methods
    }
    all_maps: dict[str, Tensor] = {m: fn(x, targets) for m, fn in explainers.items() if fn}
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
            explain=explainers.get(name),
            method=name,
            seed=seed,
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
            info = metric_infos().get(metric)
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
