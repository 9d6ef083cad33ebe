"""The in-process engine: a bounded prefetching loader (threads) feeding device batches.

The engines map a :class:`~cnnlens.dataset.jobs.Job` over a list of items into a
:class:`~cnnlens.dataset.store.Store`; they know nothing about explanations or
assessments (see :mod:`cnnlens.dataset.jobs` for the job's steps).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from cnnlens.core.progress import progress_bar
from cnnlens.dataset.jobs import BatchDone, BatchJob, Job, RunStats, check_positive, errors_in
from cnnlens.dataset.store import Store

__all__ = ["BatchDone", "BatchJob", "Job", "RunStats", "check_positive", "run_local"]

logger = logging.getLogger(__name__)


def run_local(
    job: Job,
    items: Sequence[Mapping[str, Any]],
    store: Store,
    *,
    batch_size: int = 32,
    workers: int = 2,
    prefetch: int = 2,
    progress: bool = False,
    on_batch: Callable[[BatchDone], None] | None = None,
    label: str = "explaining",
) -> RunStats:
    """Map ``job`` over ``items`` in this process, one part file per batch.

    ``workers`` threads load items ahead of the model, at most ``prefetch`` batches ahead
    (memory stays bounded however long the dataset is); the main thread computes each full
    batch on the job's device and writes it atomically. Items whose key is already in the
    store are skipped.

    Args:
        job: the :class:`~cnnlens.dataset.jobs.Job`.
        items: the items (small dicts; see the job).
        store: where the rows go.
        batch_size: items per device batch (and per part file).
        workers: loader threads.
        prefetch: batches loaded ahead of the one being computed.
        progress: show a progress bar with images/s and the time left.
        on_batch: called after each part file is written (a test can raise from it to
            simulate a killed run).
        label: the progress bar's word (``"explaining"``, ``"assessing"``).

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
        info = BatchDone(stats.batches, len(batch), table.num_rows, errors_in(table), str(part))
        stats.batches += 1
        stats.computed += len(batch)
        stats.rows += info.rows
        stats.errors += info.errors
        if on_batch is not None:
            on_batch(info)

    try:
        with progress_bar(progress, len(items), label) as bar:
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
                    bar.describe(f"{label} ({rate:.1f} items/s)")
                    batch = []
            if batch:
                flush(batch)
                bar.advance(len(batch))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    stats.seconds = time.perf_counter() - t0
    return stats
