"""The sanity checks of an assessment: cascading model-parameter randomization (Adebayo et
al., NeurIPS 2018, arXiv:1810.03292) for several methods on the same images, and their
verdicts in the one rule of :func:`cnnlens.metrics.sanity.cascade_verdict`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from cnnlens.errors import ModelError
from cnnlens.metrics.sanity import (
    VERDICT_CRITERION,
    VERDICT_THRESHOLD,
    CascadeVerdict,
    SanityResult,
    cascade_verdict,
)

logger = logging.getLogger(__name__)

__all__ = ["report_verdict", "run_cascade", "sanity_checks", "sanity_verdicts"]


def run_cascade(
    model: nn.Module,
    x: Tensor,
    targets: Tensor | Sequence[int] | int | None,
    method: str,
    *,
    seed: int,
    threshold: float,
    options: Mapping[str, Any],
) -> SanityResult:
    """The cascading randomization of one method, read as the verdict reads it (signed
    Spearman, :data:`cnnlens.metrics.sanity.VERDICT_CRITERION`)."""
    from cnnlens.metrics import cascading_randomization

    return cascading_randomization(
        model,
        x,
        method,
        target=targets,
        seed=seed,
        threshold=threshold,
        criterion=VERDICT_CRITERION,
        **dict(options),
    )


def report_verdict(verdict: CascadeVerdict) -> Any:
    """A :class:`cnnlens.report.SanityVerdict` (method, check, passed, detail) for a report;
    ``passed`` is None when the verdict is inconclusive."""
    from cnnlens.report import SanityVerdict

    return SanityVerdict(verdict.method, verdict.check, verdict.passed, verdict.detail)


def sanity_checks(
    model: nn.Module,
    x: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    methods: Sequence[str] | str | None = None,
    *,
    seed: int = 0,
    threshold: float = VERDICT_THRESHOLD,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> dict[str, SanityResult]:
    """Cascading model-parameter randomization for several methods on the same images.

    Layers are re-initialized from the output towards the input, and each method's maps
    are compared with the original ones after every step (the results' ``criterion`` is
    :data:`cnnlens.metrics.sanity.VERDICT_CRITERION`). :func:`sanity_verdicts` turns the
    results into verdicts.

    Methods that do not apply to the model (e.g. CAM without a GAP head) are left out with
    a warning in the log.

    Args:
        model: the trained classifier (never changed: a copy is randomized).
        x: a few images (B, C, H, W).
        targets: the classes to explain (default each image's top class).
        methods: registry names or ``"all"`` (default: every registered method).
        seed: seed of the re-initialization.
        threshold: $\\tau$.
        method_options: per-method keyword arguments (e.g. fewer steps for slow methods);
            entries for methods not checked are ignored.
        progress: show a progress bar.

    Returns:
        ``{method: SanityResult}``.
    """
    from cnnlens.assess.protocol import resolve_methods
    from cnnlens.core.progress import progress_bar

    names = resolve_methods(methods if methods is not None else "all")
    opts = {k: dict(v) for k, v in (method_options or {}).items() if k in names}
    out: dict[str, SanityResult] = {}
    with progress_bar(progress, len(names), "sanity checks") as bar:
        for name in names:
            bar.describe(f"sanity check: {name}")
            try:
                out[name] = run_cascade(
                    model,
                    x,
                    targets,
                    name,
                    seed=seed,
                    threshold=threshold,
                    options=opts.get(name, {}),
                )
            except ModelError as err:
                logger.warning("sanity check of %s skipped: %s", name, err)
            bar.advance()
    return out


def sanity_verdicts(
    model: nn.Module,
    x: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    methods: Sequence[str] | str | None = None,
    *,
    seed: int = 0,
    threshold: float = VERDICT_THRESHOLD,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> list[Any]:
    """The sanity-check verdicts for a report: :func:`sanity_checks` read by
    :func:`cnnlens.metrics.sanity.cascade_verdict`, as :class:`cnnlens.report.SanityVerdict`
    objects (method, check, passed, detail).

    A method passes when its maps lose the likeness to the original ones while the upper
    half of the layers is re-initialized, the whole interval of the mean below $\\tau$;
    ``passed`` is None (inconclusive) when the interval spans $\\tau$.

    Arguments as in :func:`sanity_checks`.

    Example:
        >>> verdicts = sanity_verdicts(net, x[:4], None, ["gradcam", "guided_backprop"])
        ... # doctest: +SKIP
        >>> cnnlens.report.write_report("r.html", model_card=card, images=[], sanity=verdicts)
    """
    results = sanity_checks(
        model,
        x,
        targets,
        methods,
        seed=seed,
        threshold=threshold,
        method_options=method_options,
        progress=progress,
    )
    return [report_verdict(cascade_verdict(r, seed=seed)) for r in results.values()]
