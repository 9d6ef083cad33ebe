"""The Ray engine: the same job on Ray Data, one actor per model copy.

``ray.data.from_items(items).map_batches(_Worker, compute=ActorPoolStrategy(size=n))``: each actor
receives the job once (the model travels once through Ray's object store), calls
``job.setup()`` on its own device, and for each batch loads the images, computes the rows
and writes them **itself** as one atomic part file of the store (the store folder must be
reachable from every worker: a local run, or a shared filesystem on a cluster). It returns
only a small summary per batch (keys, rows, errors), which the driver counts. Same schema,
same resume rule and same part files as :func:`cnnlens.dataset.local.run_local`.

Ray is an optional extra (``pip install 'cnnlens[ray]'``) imported only here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cnnlens.dataset.jobs import BatchDone, Job, RunStats, check_positive, errors_in
from cnnlens.dataset.store import Store
from cnnlens.errors import InputError

__all__ = ["import_ray", "run_ray"]

logger = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ``ray`` module, or an :class:`InputError` saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise InputError(
            f"engine='ray' needs Ray Data, which is not installed ({err}); "
            "install it with: pip install 'cnnlens[ray]'"
        ) from None
    return ray


class _Worker:
    """One Ray actor: holds the job (and its model) and writes one part file per batch."""

    def __init__(self, refs: list[Any], store: Store, threads: int) -> None:
        import ray

        self.job: Job
        self.job, self.items, self.done = ray.get(refs)
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cnnlens-load")
        self.job.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # rows carry only an index into the items (no None/NaN conversions of item fields)
        n = len(batch["i"])
        items = [self.items[int(i)] for i in batch["i"]]
        # the actor's CPUs load (read, hash, decode, preprocess) the batch's images in threads
        done = self.pool.map(lambda it: self.job.load(it, self.done), items)
        loaded = [x for x in done if x is not None]
        rows = errors = 0
        if loaded:
            table = self.job.run(loaded)
            self.store.write_part(table)
            rows, errors = table.num_rows, errors_in(table)
        return {
            "items": np.array([n], dtype=np.int64),
            "computed": np.array([len(loaded)], dtype=np.int64),
            "rows": np.array([rows], dtype=np.int64),
            "errors": np.array([errors], dtype=np.int64),
        }


def run_ray(
    job: Job,
    items: Sequence[Mapping[str, Any]],
    store: Store,
    *,
    batch_size: int = 32,
    actors: int = 2,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = False,
    on_batch: Callable[[BatchDone], None] | None = None,
) -> RunStats:
    """Map ``job`` over ``items`` with Ray Data and an actor pool of ``actors`` workers.

    Args:
        job: the :class:`~cnnlens.dataset.jobs.Job` (pickled once to the actors).
        items: the items.
        store: where each actor writes its part files.
        batch_size: items per actor batch (and per part file).
        actors: model copies (Ray actors).
        cpus_per_actor: CPUs reserved per actor (and threads loading its images).
        gpus_per_actor: GPUs per actor (the job then runs on ``cuda``).
        address: a running cluster (``"ray://host:10001"``, ``"auto"``); None starts a
            local Ray instance, shut down at the end.
        num_cpus: CPUs of a local instance (default: all).
        progress: Ray Data's own progress bars.
        on_batch: called for each finished batch, as the driver learns of it.

    Returns:
        The :class:`~cnnlens.dataset.jobs.RunStats`.
    """
    ray = import_ray()
    check_positive("batch_size", batch_size)
    check_positive("actors", actors)
    t0 = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    stats = RunStats(total=len(items))
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(progress)
        done = store.done_keys()
        refs = [ray.put(job), ray.put([dict(it) for it in items]), ray.put(done)]
        batches = -(-len(items) // batch_size)
        blocks = max(1, min(len(items), max(actors, min(batches, 8 * actors))))
        # in-memory items (no read tasks competing with the actors for CPUs)
        ds = ray.data.from_items([{"i": i} for i in range(len(items))], override_num_blocks=blocks)
        out = ds.map_batches(
            _Worker,
            fn_constructor_kwargs={
                "refs": refs,
                "store": store,
                "threads": max(1, round(cpus_per_actor)),
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor or None,
        )
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["items"])):
                n, computed = int(batch["items"][i]), int(batch["computed"][i])
                rows, errors = int(batch["rows"][i]), int(batch["errors"][i])
                stats.skipped += n - computed
                if computed:
                    info = BatchDone(stats.batches, computed, rows, errors, None)
                    stats.batches += 1
                    stats.computed += computed
                    stats.rows += rows
                    stats.errors += errors
                    if on_batch is not None:
                        on_batch(info)
    finally:
        if started:
            ray.shutdown()
    stats.seconds = time.perf_counter() - t0
    return stats
