"""The in-process engine: a bounded prefetching loader (threads) feeding device batches.

The engines map a :class:`BatchJob` over a list of items into a :class:`~.store.Store`;
they know nothing about explanations. A job has three steps:

- ``job.load(item, done)``: read, hash and preprocess one item (runs in loader threads, no
  model); returns ``None`` when the item's key is in ``done`` (already in the store), else
  a dict holding at least ``"key"``. A bad input is returned as a loaded item carrying its
  error, never raised, so it becomes a row.
- ``job.setup()``: load the model onto the device, once per process (once per Ray actor).
- ``job.run(batch)``: compute the rows of a list of loaded items as one ``pyarrow.Table``
  with the job's ``schema``; every row of one item lands in the same part file.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Container, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from cnnlens.core.checks import check_int
from cnnlens.core.progress import progress_bar
from cnnlens.dataset.store import Store

__all__ = ["BatchDone", "BatchJob", "RunStats", "check_positive", "run_local"]

logger = logging.getLogger(__name__)


class BatchJob(Protocol):
    """What an engine maps over a dataset (see the module docstring)."""

    schema: pa.Schema

    def load(self, item: Mapping[str, Any], done: Container[str]) -> dict[str, Any] | None: ...

    def setup(self) -> None: ...

    def run(self, batch: Sequence[dict[str, Any]]) -> pa.Table: ...


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


def _errors_in(table: pa.Table) -> int:
    if "error" not in table.column_names:
        return 0
    return int(table.num_rows - table.column("error").null_count)


def run_local(
    job: BatchJob,
    items: Sequence[Mapping[str, Any]],
    store: Store,
    *,
    batch_size: int = 32,
    workers: int = 2,
    prefetch: int = 2,
    progress: bool = False,
    on_batch: Callable[[BatchDone], None] | None = None,
) -> RunStats:
    """Map ``job`` over ``items`` in this process, one part file per batch.

    ``workers`` threads load items ahead of the model, at most ``prefetch`` batches ahead
    (memory stays bounded however long the dataset is); the main thread computes each full
    batch on the job's device and writes it atomically. Items whose key is already in the
    store are skipped.

    Args:
        job: the :class:`BatchJob`.
        items: the items (small dicts; see the job).
        store: where the rows go.
        batch_size: items per device batch (and per part file).
        workers: loader threads.
        prefetch: batches loaded ahead of the one being computed.
        progress: show a progress bar with images/s and the time left.
        on_batch: called after each part file is written (a test can raise from it to
            simulate a killed run).

    Returns:
        The :class:`RunStats`.
    """
    check_positive("batch_size", batch_size)
    check_positive("workers", workers)
    check_positive("prefetch", prefetch)
    t0 = time.perf_counter()
    stats = RunStats(total=len(items))
    done = store.done_keys()
    job.setup()
    limit = batch_size * (prefetch + 1)
    pending: deque[Future[dict[str, Any] | None]] = deque()
    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnlens-load")

    def fill() -> None:
        while len(pending) < limit:
            item = next(source, None)
            if item is None:
                return
            pending.append(pool.submit(job.load, item, done))

    def flush(batch: list[dict[str, Any]]) -> None:
        table = job.run(batch)
        part = store.write_part(table)
        info = BatchDone(stats.batches, len(batch), table.num_rows, _errors_in(table), str(part))
        stats.batches += 1
        stats.computed += len(batch)
        stats.rows += info.rows
        stats.errors += info.errors
        if on_batch is not None:
            on_batch(info)

    try:
        with progress_bar(progress, len(items), "explaining") as bar:
            fill()
            batch: list[dict[str, Any]] = []
            while pending:
                loaded = pending.popleft().result()
                fill()
                if loaded is None:
                    stats.skipped += 1
                    bar.advance(1)
                    continue
                batch.append(loaded)
                if len(batch) == batch_size:
                    flush(batch)
                    bar.advance(len(batch))
                    rate = stats.computed / max(time.perf_counter() - t0, 1e-9)
                    bar.describe(f"explaining ({rate:.1f} images/s)")
                    batch = []
            if batch:
                flush(batch)
                bar.advance(len(batch))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    stats.seconds = time.perf_counter() - t0
    return stats
