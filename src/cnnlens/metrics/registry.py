"""One registry of trust metrics: a metric declares its facts where it is defined.

A metric module defines its public function (``deletion(model, x, maps, ...)``) and, beside
it, registers a *scorer*: a small function that takes the batch's :class:`MetricInputs` and
the metric's options and returns one float per image. :func:`cnnlens.metrics.evaluate_maps`,
``cnnlens assess``, the demo and the report read names, families, directions and labels from
here; nothing else keeps a list of metrics.

Example:
    >>> @register_metric("sparseness", family="complexity", higher_is_better=True,
    ...                  label="sparse", summary="Gini index")          # doctest: +SKIP
    ... def _sparseness(inputs: MetricInputs, **options) -> Tensor:
    ...     return sparseness(inputs.maps, **options)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from cnnlens.errors import InputError

__all__ = [
    "FAMILIES",
    "MetricInfo",
    "MetricInputs",
    "get_metric",
    "list_metrics",
    "metric_infos",
    "register_metric",
]

#: The metric families, in the order tables and reports show them.
FAMILIES: tuple[str, ...] = (
    "faithfulness",
    "localization",
    "robustness",
    "randomization",
    "axiomatic",
    "complexity",
)


@dataclass
class MetricInputs:
    """Everything a scorer may read for one batch.

    Attributes:
        model: the classifier (never changed by a metric).
        x: images (B, C, H, W) on the model's device.
        maps: (B, H, W) maps in [0, 1] of the method being scored.
        target: (B,) long tensor, the class explained per image.
        masks: (B, H, W) binary ground truth, or None.
        activation: ``"softmax"``, ``"sigmoid"`` or None, applied to the model's outputs.
        batch_size: most images per forward pass.
        explain: re-explains a batch for the same targets (``explain(x, target) -> maps``),
            for metrics that perturb the input or the model; None for fixed maps (baselines).
        method: the method's registry name, or the baseline's name.
        seed: seed of every random draw a metric makes for this batch.
        cache: results shared between scorers of one batch (e.g. ROAD's two orders).
    """

    model: nn.Module
    x: Tensor
    maps: Tensor
    target: Tensor | None = None
    masks: Tensor | None = None
    activation: str | None = "softmax"
    batch_size: int = 64
    explain: Callable[[Tensor, Tensor], Tensor] | None = None
    method: str | None = None
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)


Scorer = Callable[..., Tensor]


@dataclass(frozen=True)
class MetricInfo:
    """What a metric measures and how to read it.

    Attributes:
        name: registry name (``cnnlens assess --metrics NAME``).
        family: one of :data:`FAMILIES`.
        higher_is_better: the direction of improvement.
        needs_masks: whether ground-truth masks are required.
        binary: whether each per-image score is 0 or 1 (its interval is then a percentile
            bootstrap that never leaves [0, 1]).
        needs_explain: whether the scorer re-explains inputs (baselines cannot be scored).
        label: a short column label for terminal tables.
        summary: what the per-image number is, in a few words.
        scorer: ``scorer(inputs: MetricInputs, **options) -> (B,) tensor``.
        option_group: the name whose options the metric reads too (ROAD's MoRF, LeRF and
            combined scores share the options given under ``road``); None for its own only.
        options_of: the public function whose keyword arguments are the metric's options
            (when the scorer passes ``**options`` on); None: the scorer's own.
    """

    name: str
    family: str
    higher_is_better: bool
    needs_masks: bool
    binary: bool
    needs_explain: bool
    label: str
    summary: str
    scorer: Scorer
    option_group: str | None = None
    options_of: Callable[..., Any] | None = None

    def option_names(self) -> list[str] | None:
        """The options the metric takes (keyword arguments of :attr:`options_of` or of the
        scorer, less what :class:`MetricInputs` supplies); None when they cannot be known
        (a scorer that takes ``**options`` with no ``options_of``)."""
        import inspect

        fn = self.options_of or self.scorer
        params = list(inspect.signature(fn).parameters.values())
        if self.options_of is None and any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return [
            p.name
            for p in params[1 if self.options_of is None else 0 :]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _SUPPLIED
        ]


# arguments every metric function gets from MetricInputs (never options a user gives)
_SUPPLIED = ("model", "x", "maps", "masks", "target", "activation", "batch_size", "order")


_METRICS: dict[str, MetricInfo] = {}


def register_metric(
    name: str,
    *,
    family: str,
    higher_is_better: bool,
    label: str,
    summary: str,
    needs_masks: bool = False,
    binary: bool = False,
    needs_explain: bool = False,
    option_group: str | None = None,
    options_of: Callable[..., Any] | None = None,
) -> Callable[[Scorer], Scorer]:
    """Register ``scorer`` under ``name`` with the metric's facts; a name is taken once.

    Arguments as the attributes of :class:`MetricInfo`.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")

    def decorate(scorer: Scorer) -> Scorer:
        if name in _METRICS:
            raise ValueError(f"metric name {name!r} is already registered")
        _METRICS[name] = MetricInfo(
            name,
            family,
            higher_is_better,
            needs_masks,
            binary,
            needs_explain,
            label,
            summary,
            scorer,
            option_group,
            options_of,
        )
        return scorer

    return decorate


def _load_builtin_metrics() -> None:
    import cnnlens.metrics  # noqa: F401  (registers the built-in metrics)


def list_metrics(family: str | None = None) -> list[str]:
    """Registered metric names, by family (in :data:`FAMILIES` order) then registration."""
    _load_builtin_metrics()
    infos = sorted(_METRICS.values(), key=lambda m: FAMILIES.index(m.family))
    return [m.name for m in infos if family is None or m.family == family]


def metric_infos() -> dict[str, MetricInfo]:
    """Every registered metric's :class:`MetricInfo`, in :func:`list_metrics` order."""
    return {name: _METRICS[name] for name in list_metrics()}


def get_metric(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``name``; an InputError listing close names otherwise."""
    _load_builtin_metrics()
    if name in _METRICS:
        return _METRICS[name]
    close = difflib.get_close_matches(name, list(_METRICS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"unknown metric {name!r}{hint} (available: {', '.join(list_metrics())})")
