"""The job interface every engine maps over a dataset, and what a run reports back.

A :class:`Job` is what :func:`cnnlens.dataset.run_local` and
:func:`cnnlens.dataset.ray_engine.run_ray` map over a list of items into a
:class:`~cnnlens.dataset.store.Store`; the engines and the store know nothing else about
it. Two jobs implement it: :class:`cnnlens.dataset.job.ExplainJob` (the explanation rows of
``cnnlens explain --format parquet``) and :class:`cnnlens.assess.job.AssessJob` (the metric
rows of ``cnnlens assess``). A job has:

- ``kind``, ``version``, ``schema``: what its store holds (the kind and schema version are
  recorded in the store and checked when it is reopened) and the rows' Arrow schema;
- ``load(item, done)``: read and prepare one item (runs in loader threads, no model);
  ``None`` when the item's key is in ``done`` (already in the store), else a dict holding
  at least ``"key"``. A bad input is returned as a loaded item carrying its error, never
  raised, so it becomes a row;
- ``setup()``: per-worker preparation (load the model onto the device), once per process
  or Ray actor, before the first batch;
- ``run(batch)``: the rows of a list of loaded items as one ``pyarrow.Table`` with the
  job's ``schema``; every row of one item lands in the same part file.

:func:`open_job_store` opens (or reopens, to resume) the store of a job.
"""

from __future__ import annotations

import os
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from cnnlens.core.checks import check_int
from cnnlens.dataset.store import Store

__all__ = ["BatchDone", "BatchJob", "Job", "RunStats", "check_positive", "open_job_store"]


class Job(Protocol):
    """What an engine maps over a dataset (see the module docstring)."""

    kind: str
    version: int
    schema: pa.Schema

    def load(self, item: Mapping[str, Any], done: Container[str]) -> dict[str, Any] | None: ...

    def setup(self) -> None: ...

    def run(self, batch: Sequence[dict[str, Any]]) -> pa.Table: ...


#: The older name of :class:`Job`.
BatchJob = Job


def open_job_store(
    path: str | os.PathLike[str],
    job: Job,
    *,
    settings: Mapping[str, Any],
    overwrite: bool = False,
    info: Mapping[str, Any] | None = None,
    overwrite_hint: str | None = None,
) -> Store:
    """The store of ``job`` at ``path``: created, or reopened to resume when it holds the same
    kind, schema version, schema and ``settings`` (see :meth:`Store.open`)."""
    return Store.open(
        path,
        kind=job.kind,
        settings=settings,
        schema=job.schema,
        version=job.version,
        overwrite=overwrite,
        info=info,
        overwrite_hint=overwrite_hint,
    )


@dataclass
class BatchDone:
    """What one finished batch wrote (passed to ``on_batch`` callbacks).

    Attributes:
        index: 0-based number of the batch in this run.
        items: items computed in the batch.
        rows: rows written.
        errors: rows that carry an error.
        part: the part file written (None when the batch had nothing to compute).
    """

    index: int
    items: int
    rows: int
    errors: int
    part: str | None


@dataclass
class RunStats:
    """What a run did.

    Attributes:
        total: items given.
        skipped: items already in the store (resumed).
        computed: items computed in this run.
        rows: rows written in this run.
        errors: rows written with an error (e.g. an image that does not decode).
        batches: part files written.
        seconds: wall time of the run (model loading included).
    """

    total: int = 0
    skipped: int = 0
    computed: int = 0
    rows: int = 0
    errors: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Items computed per second of wall time."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def check_positive(name: str, value: Any) -> int:
    """``value`` as a positive int, or an :class:`InputError` naming ``name``."""
    return check_int(name, value)


def errors_in(table: pa.Table) -> int:
    """Rows of ``table`` whose ``error`` is set (0 when it has no such column)."""
    if "error" not in table.column_names:
        return 0
    return int(table.num_rows - table.column("error").null_count)
