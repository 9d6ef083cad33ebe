"""The assessment as a dataset job: one Parquet row per (method, image, class), scored.

:class:`AssessJob` is a :class:`cnnlens.dataset.jobs.Job` of kind ``"assessment"``, so
``cnnlens assess`` runs on the same machinery as ``cnnlens explain --format parquet``: its
resume store is a :class:`cnnlens.dataset.Store` (``OUT/rows/``: atomic part files, the
rows already there skipped, other settings refused unless ``fresh``), mapped in-process by
:func:`cnnlens.dataset.run_local` or on Ray Data by
:func:`cnnlens.dataset.ray_engine.run_ray`.

An item is ``{"key", "method", "i"}`` (``i`` indexes the run's rows); the job holds the
model, the images, targets and masks, so an item carries no tensor and a Ray actor receives
the data once. ``run`` groups a batch by method, explains each group (or draws a baseline),
scores it with every metric and returns one row per item (:data:`SCHEMA`). A method that
does not apply to the model (a :class:`~cnnlens.errors.ModelError`) gives rows with its
``error``; the run then lists the method as skipped.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
import zlib
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
from torch import Tensor, nn

from cnnlens.assess.protocol import BASELINES
from cnnlens.assess.store import finite
from cnnlens.errors import ModelError

__all__ = ["CURVES", "KIND", "SCHEMA", "SCHEMA_VERSION", "AssessJob", "row_key"]

logger = logging.getLogger(__name__)

#: The kind of an assessment store.
KIND = "assessment"
SCHEMA_VERSION = 1
#: The metrics whose per-row curves are kept (for the curves figure).
CURVES = ("deletion", "insertion")

#: One row per (method, image, class): the scores of every metric of the run.
SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # sha256 of method, row id, image hash, target, options
        ("method", pa.string()),  # method or baseline name
        ("row", pa.string()),  # the run's row id: "3", or "3.1" for an image's 2nd class
        ("image", pa.int32()),  # index of the image in the assessed data
        ("target", pa.int32()),  # the explained class
        ("image_hash", pa.string()),  # of the image's pixels
        ("options", pa.string()),  # hash of the method's options
        ("scores", pa.map_(pa.string(), pa.float64())),  # metric -> score (null: none)
        ("curves", pa.map_(pa.string(), pa.list_(pa.float32()))),  # deletion/insertion
        ("error", pa.string()),  # why the method could not run (else null)
    ]
)


def row_key(method: str, row: str, image_hash: str, target: int, options: str) -> str:
    """The resume key of one (method, row): what its scores depend on beyond the store's
    settings (model, dataset, metrics, seed)."""
    text = f"{method}\0{row}\0{image_hash}\0{int(target)}\0{options}"
    return hashlib.sha256(text.encode()).hexdigest()


def method_maps(
    model: nn.Module,
    method: str,
    x: Tensor,
    targets: Tensor,
    row_ids: Sequence[str],
    seed: int,
    options: Mapping[str, Any],
) -> Tensor:
    """(B, H, W) maps of one method (or baseline) for one batch of rows; the random
    baseline is seeded per row, so its maps do not depend on how the rows are batched."""
    from cnnlens.metrics import centre_maps, explainer, random_maps

    like = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
    if method == "random":
        return torch.cat(
            [random_maps(like[:1], seed=zlib.crc32(f"{seed}/{rid}".encode())) for rid in row_ids]
        )
    if method == "centre":
        return centre_maps(like)
    return explainer(model, method, options)(x, targets)


def finite_maps(method: str, maps: Tensor, ids: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Maps with NaN or infinite values zeroed (with a warning), and which they were."""
    bad = ~torch.isfinite(maps).flatten(1).all(1)
    if bool(bad.any()):
        shown = [ids[j] for j in bad.nonzero().flatten().tolist()][:10]
        warnings.warn(
            f"method {method} gave maps with NaN or infinite values for row(s) {shown}; "
            "their scores are left out",
            stacklevel=4,
        )
        maps = torch.where(bad.view(-1, 1, 1), torch.zeros_like(maps), maps)
    return maps, bad


@dataclass
class AssessJob:
    """Score batches of (method, row) items with every metric of a run.

    Built by :class:`cnnlens.assess.run.Run`; picklable (a Ray actor receives it once, with
    the model and the images).
    """

    model: nn.Module
    images: Tensor  # (N, C, H, W), the assessed images
    row_ids: list[str]
    row_image: list[int]  # the image of each row
    row_targets: list[int]
    row_hashes: list[str]
    masks: Tensor | None  # bool (R, H, W): each row's mask
    metrics: list[str]
    metric_options: dict[str, dict[str, Any]]
    method_options: dict[str, dict[str, Any]]
    option_keys: dict[str, str]
    activation: str | None  # None: the scores as they are (a task's region scores)
    eval_batch_size: int
    seed: int
    device: str = "cpu"
    schema: pa.Schema = SCHEMA
    kind: str = KIND
    version: int = SCHEMA_VERSION
    _failed: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def key(self, method: str, i: int) -> str:
        """The resume key of row ``i`` scored with ``method``."""
        return row_key(
            method,
            self.row_ids[i],
            self.row_hashes[i],
            self.row_targets[i],
            self.option_keys[method],
        )

    def setup(self) -> None:
        """Put the model on the job's device (once per process or actor)."""
        self.model.to(torch.device(self.device))

    def load(self, item: Mapping[str, Any], done: Container[str]) -> dict[str, Any] | None:
        """The item itself (the images are in memory), or None when its key is done."""
        if item["key"] in done:
            return None
        return {"key": str(item["key"]), "method": str(item["method"]), "i": int(item["i"])}

    def run(self, batch: Sequence[dict[str, Any]]) -> pa.Table:
        """The rows of a batch: each method's items explained and scored together."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for b in batch:
            groups.setdefault(b["method"], []).append(b)
        rows: list[dict[str, Any]] = []
        for method, items in groups.items():
            idx = [b["i"] for b in items]
            if method not in self._failed:
                try:
                    rows.extend(self._scored(method, idx))
                    continue
                except ModelError as err:  # the run names the method as skipped
                    self._failed[method] = str(err)
            rows.extend(self._row(method, i) | {"error": self._failed[method]} for i in idx)
        return pa.Table.from_pylist(rows, schema=self.schema)

    def _row(self, method: str, i: int) -> dict[str, Any]:
        return {
            "key": self.key(method, i),
            "method": method,
            "row": self.row_ids[i],
            "image": self.row_image[i],
            "target": self.row_targets[i],
            "image_hash": self.row_hashes[i],
            "options": self.option_keys[method],
        }

    def _batch(self, idx: Sequence[int]) -> tuple[Tensor, Tensor, Tensor | None]:
        from cnnlens.metrics._common import model_device

        dev = model_device(self.model, torch.device(self.device))
        sel = torch.tensor(list(idx), dtype=torch.long)
        x = self.images[torch.tensor([self.row_image[i] for i in idx])].to(dev)
        t = torch.tensor([self.row_targets[i] for i in idx], dtype=torch.long, device=dev)
        m = self.masks[sel].to(dev) if self.masks is not None else None
        return x, t, m

    def _scored(self, method: str, idx: Sequence[int]) -> list[dict[str, Any]]:
        from cnnlens.metrics import MetricInputs, explainer
        from cnnlens.metrics.evaluate import evaluate_inputs

        x, t, masks = self._batch(idx)
        ids = [self.row_ids[i] for i in idx]
        options = self.method_options.get(method, {})
        maps = method_maps(self.model, method, x, t, ids, self.seed, options)
        maps, bad = finite_maps(method, maps, ids)
        inputs = MetricInputs(
            model=self.model,
            x=x,
            maps=maps,
            target=t,
            masks=masks,
            activation=self.activation,
            batch_size=self.eval_batch_size,
            explain=None if method in BASELINES else explainer(self.model, method, options),
            method=method,
            seed=self.seed,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*empty ground-truth mask.*")
            scores = evaluate_inputs(inputs, self.metrics, self.metric_options)
        curves = {n: inputs.cache[n].scores for n in CURVES if n in inputs.cache}
        rows = []
        for j, i in enumerate(idx):
            ok = not bool(bad[j])
            rows.append(
                self._row(method, i)
                | {
                    "scores": {
                        k: finite(scores[k][j]) if ok and k in scores else None
                        for k in self.metrics
                    },
                    "curves": {
                        k: [round(float(p), 5) for p in c[j].tolist()]
                        for k, c in curves.items()
                        if ok
                    },
                }
            )
        return rows
