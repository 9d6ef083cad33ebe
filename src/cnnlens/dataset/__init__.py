"""Dataset-scale explanation into a resumable Parquet store, in-process or on Ray.

>>> import cnnlens.dataset as cd
>>> s = cd.explain("val/", "resnet18", weights="DEFAULT", out="runs/val.store")  # doctest: +SKIP
>>> print(s.line())                                                             # doctest: +SKIP
>>> df = cd.load(s.store).to_pandas()                                           # doctest: +SKIP
>>> maps = cd.maps_of(s.store, "cat/001.jpg")                                   # doctest: +SKIP

Layers (each usable on its own): :mod:`.store` (settings, atomic part files, resume keys),
:mod:`.jobs` (the :class:`Job` interface that explanation and assessment implement),
:mod:`.local` and :mod:`.ray_engine` (map a job over items into a store),
:mod:`.job` (the explanation rows and their schema), :mod:`.sources` (folder, glob, list
file, dataset name), :mod:`.read` (load and decode), :mod:`.report` (the HTML report).
"""

from __future__ import annotations

from cnnlens.dataset.api import ENGINES, ExplainSummary, explain
from cnnlens.dataset.job import SCHEMA, SCHEMA_VERSION, map_statistics, model_hash
from cnnlens.dataset.jobs import BatchDone, BatchJob, Job, RunStats, open_job_store
from cnnlens.dataset.local import run_local
from cnnlens.dataset.read import (
    StoredMap,
    decode_map,
    info,
    load,
    maps_of,
    open_store,
    scan,
    stack_maps,
)
from cnnlens.dataset.report import build_store_report
from cnnlens.dataset.sources import Source, resolve_source
from cnnlens.dataset.store import Store, StoreError

__all__ = [
    "ENGINES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "BatchDone",
    "BatchJob",
    "ExplainSummary",
    "Job",
    "RunStats",
    "Source",
    "Store",
    "StoreError",
    "StoredMap",
    "build_store_report",
    "decode_map",
    "explain",
    "info",
    "load",
    "map_statistics",
    "maps_of",
    "model_hash",
    "open_job_store",
    "open_store",
    "resolve_source",
    "run_local",
    "scan",
    "stack_maps",
]
