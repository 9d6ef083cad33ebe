"""The ``assess`` pipeline: check the arguments, prepare the run, compute the missing rows
and sanity checks, write the outputs."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from cnnlens.assess.data import AssessData, load_data
from cnnlens.assess.outputs import write_outputs
from cnnlens.assess.protocol import (
    BASELINES,
    protocol_metric_options,
    resolve_methods,
    resolve_metrics,
    split_options,
)
from cnnlens.assess.run import Run
from cnnlens.assess.tables import AssessResult
from cnnlens.assess.tasks import prepare_task
from cnnlens.core.checks import check_float, check_int, check_optional_int
from cnnlens.errors import DataError, InputError, ModelError

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "assess"]

#: The engines an assessment runs on (those of :mod:`cnnlens.dataset`).
ENGINES = ("local", "ray")


def assess(
    model: nn.Module,
    data: AssessData | str,
    out: str | os.PathLike[str],
    *,
    methods: Sequence[str] | str = "all",
    metrics: Sequence[str] | str = "all",
    n: int | None = 200,
    target: str = "label",
    batch_size: int = 16,
    eval_batch_size: int = 128,
    seed: int = 0,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    sanity_images: int = 8,
    sanity_threshold: float = 0.5,
    examples: int = 3,
    model_info: Any = None,
    title: str | None = None,
    progress: bool = False,
    fresh: bool = False,
    echo: Callable[[str], Any] | None = None,
    engine: str = "local",
    actors: int = 2,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    ray_address: str | None = None,
    ray_num_cpus: int | None = None,
    task: str = "classification",
) -> AssessResult:
    """Benchmark explanation methods on a dataset: every method x metric, with 95% CIs.

    Each image contributes one row per class to explain (two for ``shapes-pair``). A row
    is explained by every method and by the ``random`` and ``centre`` baselines, and each
    map is scored with every registered metric (:func:`cnnlens.metrics.list_metrics`; the
    localization metrics against the row's own mask). The table gives the mean over rows
    with its 95% Student-t interval,

    $$\\bar s \\pm t_{0.975,\\,n-1} \\frac{s}{\\sqrt n},$$

    the percentile bootstrap for the 0/1 metrics and the sanity column.

    The rows go to a Parquet store, ``out/rows/`` (:class:`cnnlens.dataset.Store`, one
    atomic part file per batch of ``batch_size`` rows), through the dataset engines: in this
    process (``engine="local"``) or on Ray Data (``engine="ray"``: ``actors`` actors each
    holding the model and the images; ``pip install 'cnnlens[ray]'``), with the same rows.
    The run resumes: rows already in the store (same model, metrics and options, same image
    and class) are read back instead of computed, a run with other settings is refused
    unless ``fresh``, and an interrupted run keeps every batch it finished. The
    ``rows.jsonl`` of an earlier cnnlens is imported when its settings match.

    Args:
        model: the classifier (never changed).
        data: an :class:`AssessData` (see :func:`load_data`) or a dataset name.
        out: the output folder.
        methods: registry names, comma lists or ``"all"``.
        metrics: names from :func:`cnnlens.assess.assess_metrics` or ``"all"`` (every
            metric that applies: the localization metrics only with masks).
        n: images to assess (the first ``n``; all when None). More than the dataset holds
            gives a warning and uses all.
        target: ``"label"`` (the ground-truth class, the one the mask shows) or
            ``"predicted"`` (the model's top class).
        batch_size: rows explained together.
        eval_batch_size: perturbed images per forward pass in the metrics.
        seed: seed of the random baseline, the sanity check and its bootstrap interval.
        method_options: per-method options (e.g.
            ``cnnlens.core.registry.preset_options(methods, "light")``).
        metric_options: per-metric options, e.g. ``{"deletion": {"step": 64}}``. The
            pointing game's ``tolerance`` defaults to
            :data:`cnnlens.assess.POINTING_TOLERANCE` times the shorter image side (the
            protocol of Zhang et al.; give 0 for none), the deletion's ``substrate`` to
            :data:`cnnlens.assess.DELETION_SUBSTRATE`.
        sanity_images: images for the sanity check (0 skips it).
        sanity_threshold: the sanity verdict's threshold $\\tau$.
        examples: rows shown with every method's map in ``figures/examples.png``.
        model_info: the model's ``ModelInfo`` (for the report's model card).
        title: the report's title.
        progress: show a progress bar.
        fresh: discard the rows of an earlier run in ``out``.
        echo: called with one line per stage (the CLI prints them).
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data).
        actors: Ray actors (model copies).
        cpus_per_actor: CPUs per Ray actor.
        gpus_per_actor: GPUs per Ray actor (the model then runs on ``cuda``).
        ray_address: a Ray cluster to join; None starts a local instance.
        ray_num_cpus: CPUs of a local Ray instance (default: all of the machine).
        task: ``"classification"``, or ``"segmentation"`` on a dataset of objects
            (``shapes-objects``): ``model`` is a segmenter, each row an (image, object)
            scored through the object's class over the predicted region
            (:mod:`cnnlens.assess.tasks`).

    Returns:
        An :class:`AssessResult`.

    Raises:
        InputError: unknown method or metric, unknown engine, ``out`` holding a run with
            other settings (a :class:`cnnlens.dataset.StoreError`).
        ModelError: a model that does not take the images.
        TargetError: labels the model has no output for.
    """
    t0 = time.perf_counter()
    say = echo or (lambda _msg: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out {str(out)!r} exists and is not a folder")
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    check_int("batch_size", batch_size)
    check_int("eval_batch_size", eval_batch_size)
    check_int("sanity_images", sanity_images, minimum=0)
    check_int("examples", examples, minimum=0)
    check_optional_int("n", n)
    check_float("sanity_threshold", sanity_threshold, minimum=0, maximum=1)
    method_names = resolve_methods(methods)
    model, data, method_options = prepare_task(task, model, data, method_names, method_options, n)
    data = _select(data, n, model_info)
    run = Run(
        model,
        data,
        out,
        methods=method_names,
        metrics=resolve_metrics(metrics, data.masks is not None, sanity_images > 0),
        target=target,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        method_options=split_options(method_options, method_names, "method"),
        metric_options=protocol_metric_options(metric_options, min(data.images.shape[-2:])),
        sanity_images=sanity_images,
        sanity_threshold=sanity_threshold,
        task=task,
    )
    _warn_empty_masks(run)
    pending = run.resume(fresh)
    rows = len(run.rows.ids)
    reused = rows * (len(method_names) + len(BASELINES)) - len(pending)
    say(
        f"assessing {len(method_names)} methods + {len(BASELINES)} baselines on {rows} rows "
        f"of {data.name} ({len(run.metrics)} metrics"
        + (", sanity check" if run.sanity_methods else "")
        + ")"
        + (f"; {reused} rows read back from {run.store.path}" if reused else "")
    )
    ray = {"actors": actors, "cpus_per_actor": cpus_per_actor, "address": ray_address}
    ray |= {"gpus_per_actor": gpus_per_actor, "num_cpus": ray_num_cpus}
    _compute(run, pending, progress, engine, ray)
    table, columns, verdicts, files = write_outputs(
        run, examples=examples, model_info=model_info, title=title
    )
    result = AssessResult(
        out=out,
        rows=table,
        sanity=verdicts,
        methods=[m for m in method_names if m not in run.skipped],
        metrics=columns,
        methods_skipped=dict(run.skipped),
        computed=run.computed,
        reused=reused,
        files=files,
        seconds=time.perf_counter() - t0,
    )
    say(f"{run.computed} rows computed, {reused} read back, in {result.seconds:.1f} s")
    return result


def _select(data: AssessData | str, n: int | None, model_info: Any) -> AssessData:
    """The data (loaded when a name is given), cut to its first ``n`` images."""
    if isinstance(data, str):
        data = load_data(data, model_info=model_info, n=n)
    if len(data) == 0:
        raise DataError(f"dataset {data.name!r} holds no images")
    if n is not None and n > len(data):
        warnings.warn(
            f"n={n} is larger than the {data.name} dataset ({len(data)} images); "
            f"assessing all {len(data)}",
            stacklevel=3,
        )
    return data.head(n) if n is not None else data


def _warn_empty_masks(run: Run) -> None:
    if run.rows.masks is None:
        return
    empty = ~run.rows.masks.flatten(1).any(1)
    if bool(empty.any()):
        ids = [run.rows.ids[i] for i in empty.nonzero().flatten().tolist()]
        warnings.warn(
            f"{len(ids)} of {len(run.rows.ids)} rows have an empty ground-truth mask "
            f"({ids[:10]}); their localization scores are left out",
            stacklevel=3,
        )


def _compute(
    run: Run,
    pending: list[dict[str, Any]],
    progress: bool,
    engine: str,
    ray: Mapping[str, Any],
) -> None:
    """Score the pending items on the engine (one part file per batch), read them back,
    then run the sanity checks; a method that does not apply to the model is skipped (and
    named in the report)."""
    from cnnlens.core.progress import progress_bar
    from cnnlens.dataset import run_local

    if pending:
        job = run.job()
        with run.store.writing():
            run.store.remove_stale_temporaries()
            if engine == "local":
                stats = run_local(
                    job,
                    pending,
                    run.store,
                    batch_size=run.batch_size,
                    workers=1,
                    prefetch=1,
                    progress=progress,
                    label="assessing",
                )
            else:
                from cnnlens.dataset.ray_engine import run_ray

                if ray["gpus_per_actor"]:
                    job.device = "cuda"
                stats = run_ray(job, pending, run.store, batch_size=run.batch_size, **ray)
        run.computed = stats.computed
        run.read_back()
    for method, err in run.skipped.items():
        logger.warning("method %s skipped: %s", method, err)
    if not run.sanity_methods:
        return
    with progress_bar(progress, len(run.sanity_methods), "sanity check") as bar:
        x, t = run.sanity_inputs()
        for method in run.sanity_methods:
            bar.describe(f"sanity check: {method}")
            if method not in run.skipped:
                try:
                    run.check(method, x, t)
                except ModelError as err:
                    logger.warning("sanity check of %s skipped: %s", method, err)
                    run.skipped[method] = str(err)
            bar.advance()
