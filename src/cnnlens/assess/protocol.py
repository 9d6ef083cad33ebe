"""The assessment protocol: what is compared, with which settings, and how names resolve.

The constants here are the choices that make the numbers of ``cnnlens assess`` comparable
with the papers (the pointing game's tolerance, the deletion's substrate); the functions
turn the names a user gives (methods, metrics, options) into registry names, refusing what
does not exist with one line that lists what does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cnnlens.errors import InputError
from cnnlens.metrics import BASELINES as _BASELINES
from cnnlens.metrics.sanity import VERDICT_CRITERION

__all__ = [
    "BASELINES",
    "DELETION_SUBSTRATE",
    "POINTING_TOLERANCE",
    "SANITY_CRITERION",
    "SANITY_LABEL",
    "SANITY_METRIC",
    "assess_metrics",
    "metric_direction",
    "metric_label",
    "protocol_metric_options",
    "resolve_methods",
    "resolve_metrics",
    "split_options",
]

#: The table's sanity column: the similarity of the maps to the original ones while the
#: upper half of the layers is re-initialized (:func:`cnnlens.metrics.sanity.upper_similarity`);
#: lower is better. It is computed on a few images per method, not per row.
SANITY_METRIC = "cascading_randomization"
#: The sanity column's short label in terminal tables.
SANITY_LABEL = "sanity"
#: The similarity the sanity verdict reads (:data:`cnnlens.metrics.sanity.VERDICT_CRITERION`).
SANITY_CRITERION = VERDICT_CRITERION
#: The pointing game's tolerance as a share of the image side: Zhang et al. (2016) count a
#: hit within 15 pixels of the object on 224-pixel images.
POINTING_TOLERANCE = 15 / 224
#: What deleted pixels become in the deletion metric: the blurred copy of the image that
#: insertion starts from, so the two curves walk the same path in opposite directions. RISE
#: (Petsiuk et al. 2018) deletes to a constant; pixels scattered at a constant colour are
#: out of distribution, and on ``shapes`` random maps then score a lower (better) deletion
#: area than Grad-CAM (see docs/evaluation.md).
DELETION_SUBSTRATE = "blur"
#: Maps every method is compared with (from :mod:`cnnlens.metrics.baselines`).
BASELINES: tuple[str, ...] = _BASELINES


def assess_metrics() -> list[str]:
    """Every column :func:`cnnlens.assess.assess` can compute, in table order: the
    registered metrics, then the sanity column."""
    from cnnlens.metrics import list_metrics

    return [*list_metrics(), SANITY_METRIC]


def metric_direction(metric: str) -> bool | None:
    """True when higher is better for ``metric``, False when lower is, None if unknown."""
    from cnnlens.metrics import metric_infos

    if metric == SANITY_METRIC:
        return False
    info = metric_infos().get(metric)
    return info.higher_is_better if info else None


def metric_label(metric: str) -> str:
    """The short label of a table column (the metric's registered ``label``)."""
    from cnnlens.metrics import metric_infos

    if metric == SANITY_METRIC:
        return SANITY_LABEL
    info = metric_infos().get(metric)
    return info.label if info else metric


def _names(values: str | Sequence[str]) -> list[str]:
    names = [values] if isinstance(values, str) else list(values)
    return [p.strip() for n in names for p in str(n).split(",") if p.strip()]


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """Registry names from names, comma lists and ``"all"`` (every registered method).

    Raises:
        MethodNotFoundError: an unknown name (close names listed).
        InputError: a baseline's name.
    """
    from cnnlens.core.registry import get_method, list_methods

    out: list[str] = []
    for name in _names(methods) or ["all"]:
        if name.lower() in BASELINES:
            raise InputError(
                f"method {name!r} is a baseline, added to every table; choose methods from "
                f"{', '.join(list_methods())}"
            )
        for m in list_methods(True) if name.lower() == "all" else [get_method(name).name]:
            if m not in out:
                out.append(m)
    return out


def resolve_metrics(metrics: str | Sequence[str], has_masks: bool, sanity: bool) -> list[str]:
    """Registry names (and the sanity column) from names, comma lists and ``"all"`` (every
    metric that applies: the localization metrics only with masks).

    Raises:
        InputError: an unknown name, a metric that needs masks the data has not, the sanity
            column without sanity images.
    """
    from cnnlens.metrics import metric_infos

    infos = metric_infos()
    names = _names(metrics)
    if not names or any(n.lower() == "all" for n in names):
        out = [m for m, info in infos.items() if has_masks or not info.needs_masks]
        return [*out, SANITY_METRIC] if sanity else out
    known = assess_metrics()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; available: all, {', '.join(known)}"
        )
    needing = [n for n in names if n in infos and infos[n].needs_masks]
    if needing and not has_masks:
        raise InputError(
            f"metric(s) {', '.join(needing)} need ground-truth masks, which this dataset has "
            "not (use shapes, shapes-pair or a folder with masks)"
        )
    if SANITY_METRIC in names and not sanity:
        raise InputError(f"metric {SANITY_METRIC} needs sanity_images >= 1")
    return list(dict.fromkeys(names))


def split_options(
    options: Mapping[str, Mapping[str, Any]] | None, valid: Sequence[str], what: str
) -> dict[str, dict[str, Any]]:
    """``{name: {option: value}}`` as plain dicts; names outside ``valid`` are refused."""
    out = {str(k): dict(v) for k, v in (options or {}).items()}
    bad = [k for k in out if k not in valid]
    if bad:
        raise InputError(
            f"{what} options for unknown name(s) {', '.join(map(repr, bad))}; "
            f"known: {', '.join(valid)}"
        )
    return out


def protocol_metric_options(
    options: Mapping[str, Mapping[str, Any]] | None, image_side: int
) -> dict[str, dict[str, Any]]:
    """The metric options of a run: the user's, checked against what each metric takes,
    with the protocol's defaults filled in (the pointing game's tolerance scaled to the
    images, the deletion's substrate)."""
    from cnnlens.metrics import list_metrics
    from cnnlens.metrics.evaluate import check_metric_options

    x_opts = split_options(options, list_metrics(), "metric")
    check_metric_options(x_opts)
    # the pointing game's protocol: 15 pixels at 224, scaled to the images
    x_opts.setdefault("pointing_game", {}).setdefault(
        "tolerance", round(POINTING_TOLERANCE * image_side, 2)
    )
    # deleted pixels become the blurred image, as inserted ones start from it
    x_opts.setdefault("deletion", {}).setdefault("substrate", DELETION_SUBSTRATE)
    return x_opts
