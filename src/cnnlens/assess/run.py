"""One assessment run: explain every row with every method, score it with every metric,
run the sanity checks, and keep what finished in the resumable store.

:class:`Run` holds a run's settings, rows and saved results; :func:`cnnlens.assess.assess`
drives it through named steps (:meth:`Run.resume` opens the Parquet store ``OUT/rows/``
and lists the items still to score, :meth:`Run.job` is the
:class:`~cnnlens.assess.job.AssessJob` an engine maps over them, :meth:`Run.read_back`
reads the scores, :meth:`Run.check` runs the sanity check per method) and writes its
outputs (:mod:`cnnlens.assess.outputs`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import Tensor, nn

from cnnlens.assess.data import AssessData, Rows, forward_all, make_rows
from cnnlens.assess.job import CURVES, SCHEMA, AssessJob, method_maps, row_key
from cnnlens.assess.protocol import BASELINES, SANITY_METRIC
from cnnlens.assess.sanity import run_cascade
from cnnlens.assess.store import (
    FORMAT,
    clear_sanity,
    finite,
    model_hash,
    read_json,
    read_jsonl,
    sha,
    write_json,
)
from cnnlens.dataset.jobs import open_job_store
from cnnlens.dataset.store import Store
from cnnlens.errors import CnnlensError, InputError
from cnnlens.viz.render import slug

logger = logging.getLogger(__name__)

__all__ = ["CURVES", "LEGACY_ROWS", "STORE", "Run"]

#: The run's resume store (a :class:`cnnlens.dataset.Store` folder) inside ``OUT``.
STORE = "rows"
#: The JSONL rows of cnnlens before the Parquet store; imported once when the settings match.
LEGACY_ROWS = "rows.jsonl"


class Run:
    """One assess run: its settings, rows, saved results and output folder."""

    def __init__(
        self,
        model: nn.Module,
        data: AssessData,
        out: Path,
        *,
        methods: list[str],
        metrics: list[str],
        target: str,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        method_options: dict[str, dict[str, Any]],
        metric_options: dict[str, dict[str, Any]],
        sanity_images: int,
        sanity_threshold: float,
        task: str = "classification",
    ) -> None:
        from cnnlens.metrics._common import model_device

        self.model, self.data, self.out = model, data, out
        self.methods = methods
        self.metrics = [m for m in metrics if m != SANITY_METRIC]
        self.sanity_methods = methods if SANITY_METRIC in metrics else []
        self.target, self.seed = target, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.m_opts, self.x_opts = method_options, metric_options
        self.sanity_images, self.threshold = sanity_images, sanity_threshold
        self.task = task
        # a task's region scores are sums of logits: no softmax over them
        self.activation = (
            None if task != "classification" else "sigmoid" if data.multilabel else "softmax"
        )
        self.device = model_device(model, torch.device("cpu"))
        self.model_key = model_hash(model)
        logits = forward_all(model, data, self.device, eval_batch_size)
        self.num_classes = int(logits.shape[1])
        self.rows: Rows = make_rows(logits, data, target)
        self.opt_keys = {m: sha(method_options.get(m, {})) for m in [*methods, *BASELINES]}
        self.done: dict[tuple[str, str], dict[str, Any]] = {}
        self.sanity: dict[str, dict[str, Any]] = {}
        self.skipped: dict[str, str] = {}
        self.computed = 0
        self.store: Store  # opened by resume()

    @property
    def settings(self) -> dict[str, Any]:
        """What every saved row depends on (a run with other settings is refused)."""
        task = {} if self.task == "classification" else {"task": self.task}
        return task | {
            "format": FORMAT,
            "model": self.model_key,
            "dataset": self.data.name,
            "metrics": self.metrics,
            "metric_options": self.x_opts,
            "activation": self.activation,
            "seed": int(self.seed),
            "target": self.target,
        }

    @property
    def active(self) -> list[str]:
        """Methods and baselines that apply to the model, in table order."""
        return [m for m in [*self.methods, *BASELINES] if m not in self.skipped]

    # ---- the rows

    def resume(self, fresh: bool) -> list[dict[str, Any]]:
        """Open the run's Parquet store (``OUT/rows/``), read its finished rows back, and
        return the items still to score (``{"key", "method", "i"}``, method by method).

        Raises:
            StoreError: ``OUT/rows`` holds rows of a run with other settings (and not
                ``fresh``).
            InputError: ``OUT/rows.jsonl`` of an earlier cnnlens holds rows of a run with
                other settings (and not ``fresh``).
        """
        self.out.mkdir(parents=True, exist_ok=True)
        legacy = self.out / LEGACY_ROWS
        if fresh:
            clear_sanity(self.out)
            legacy.unlink(missing_ok=True)
        elif legacy.is_file():
            self._check_legacy()  # before the store is created: a refusal leaves nothing
        self.store = open_job_store(
            self.out / STORE,
            self.job(),
            settings=self.settings,
            overwrite=fresh,
            info={"dataset": self.data.name, "methods": self.methods},
            overwrite_hint="use --fresh (fresh=True) to start over",
        )
        if legacy.is_file():
            self._import_jsonl(legacy)
        write_json(
            self.out / "run.json",
            {
                "settings": self.settings,
                "methods": self.methods,
                "method_options": self.m_opts,
                "n_images": len(self.data),
                "rows": len(self.rows.ids),
                "store": STORE,
            },
        )
        done = self.store.done_keys()
        self.read_back()
        job = self.job()
        return [
            {"key": key, "method": m, "i": i}
            for m in [*self.methods, *BASELINES]
            for i in range(len(self.rows.ids))
            if (key := job.key(m, i)) not in done
        ]

    def job(self) -> AssessJob:
        """The :class:`~cnnlens.assess.job.AssessJob` that scores this run's items."""
        return AssessJob(
            model=self.model,
            images=self.data.images,
            row_ids=list(self.rows.ids),
            row_image=[int(v) for v in self.rows.image.tolist()],
            row_targets=[int(v) for v in self.rows.targets.tolist()],
            row_hashes=list(self.rows.hashes),
            masks=self.rows.masks,
            metrics=list(self.metrics),
            metric_options=self.x_opts,
            method_options=self.m_opts,
            option_keys=self.opt_keys,
            activation=self.activation,
            eval_batch_size=self.eval_batch_size,
            seed=self.seed,
            device=str(self.device),
        )

    def read_back(self) -> int:
        """Read this run's rows from the store into :attr:`done` (a method whose rows carry
        an error is listed in :attr:`skipped`); return how many rows were read."""
        job = self.job()
        want = {
            job.key(m, i): (m, rid)
            for m in [*self.methods, *BASELINES]
            for i, rid in enumerate(self.rows.ids)
        }
        if not self.store.parts():
            return 0
        cols = ["key", "method", "row", "scores", "curves", "error"]
        n = 0
        for batch in self.store.dataset().to_batches(columns=cols):
            for rec in batch.to_pylist():
                if rec["key"] not in want:
                    continue  # a row of other method options
                if rec["error"]:
                    self.skipped.setdefault(rec["method"], rec["error"])
                    continue
                rec["scores"] = dict(rec["scores"] or [])
                rec["curves"] = dict(rec["curves"] or [])
                self.done[want[rec["key"]]] = rec
                n += 1
        return n

    def _check_legacy(self) -> None:
        """Refuse the JSONL rows of an earlier cnnlens computed with other settings."""
        old = (read_json(self.out / "run.json") or {}).get("settings")
        new = {k: v for k, v in json.loads(json.dumps(self.settings)).items() if k != "format"}
        if not isinstance(old, dict) or {k: v for k, v in old.items() if k != "format"} != new:
            raise InputError(
                f"--out {str(self.out)!r} holds {LEGACY_ROWS} of an earlier cnnlens assess run "
                "(before the Parquet store) with other or unknown settings; use another --out, "
                "or --fresh to start over"
            )

    def _import_jsonl(self, legacy: Path) -> None:
        """Rows of the JSONL store of an earlier cnnlens (checked by :meth:`_check_legacy`),
        written into the Parquet store once; the file is then renamed
        ``rows.jsonl.imported``."""
        fields = ("image_hash", "target", "options")
        records = [r for r in read_jsonl(legacy) if all(r.get(k) is not None for k in fields)]
        rows = [
            {
                "key": row_key(r["method"], r["row"], r["image_hash"], r["target"], r["options"]),
                **{k: r.get(k) for k in ("method", "row", "image", "target", "image_hash")},
                "options": r.get("options"),
                "scores": r.get("scores") or {},
                "curves": r.get("curves") or {},
                "error": None,
            }
            for r in records
        ]
        if rows:
            with self.store.writing():
                self.store.write_part(pa.Table.from_pylist(rows, schema=SCHEMA))
        legacy.replace(legacy.with_name(LEGACY_ROWS + ".imported"))
        logger.warning("imported %d row(s) of %s into %s", len(rows), legacy, self.store.path)

    def batch(self, idx: Sequence[int]) -> tuple[Tensor, Tensor, Tensor | None, list[str]]:
        """Images, targets, masks and ids of the rows ``idx``, on the model's device."""
        sel = torch.tensor(list(idx), dtype=torch.long)
        x = self.data.images[self.rows.image[sel]].to(self.device)
        t = self.rows.targets[sel].to(self.device)
        m = self.rows.masks[sel].to(self.device) if self.rows.masks is not None else None
        return x, t, m, [self.rows.ids[i] for i in idx]

    # ---- the sanity checks

    def sanity_inputs(self) -> tuple[Tensor, Tensor]:
        """The sanity check's images: the first ``sanity_images`` images, one class each."""
        first = [i for i in range(len(self.rows.ids)) if int(self.rows.slot[i]) == 0]
        x, t, _, _ = self.batch(first[: self.sanity_images])
        return x, t

    def check(self, method: str, x: Tensor, t: Tensor) -> None:
        """The cascading randomization of one method, read back when saved."""
        path = self.out / "sanity" / f"{slug(method)}.json"
        key = sha(x, t, self.seed, self.threshold, self.opt_keys[method], self.model_key, FORMAT)
        rec = read_json(path)
        if (
            not rec
            or rec.get("method") != method
            or rec.get("key") != key
            or not (self.out / rec.get("figure", "")).is_file()
        ):
            rec = self._new_check(method, x, t, key)
            write_json(path, rec)
        self.sanity[method] = rec

    def _new_check(self, method: str, x: Tensor, t: Tensor, key: str) -> dict[str, Any]:
        """Run the cascade of one method; its record (per-image $u_i$, curve, figure)."""
        from cnnlens.metrics.sanity import upper_similarity
        from cnnlens.viz import save_png

        res = run_cascade(
            self.model,
            x,
            t,
            method,
            seed=self.seed,
            threshold=self.threshold,
            options=self.m_opts.get(method, {}),
        )
        fig = f"figures/sanity_{slug(method)}.png"
        save_png(res.plot(), self.out / fig)
        upper = upper_similarity(res)
        curve = getattr(res, res.criterion).abs().mean(dim=1)
        return {
            "method": method,
            "key": key,
            "result": res.to_dict(),
            "upper_per_image": [finite(v) for v in upper.tolist()],
            "upper": float(upper.mean()),
            "curve": [round(float(v), 5) for v in curve.tolist()],
            "figure": fig,
        }

    def verdicts(self) -> list[Any]:
        """The sanity verdicts (:func:`cnnlens.metrics.sanity.verdict_from_upper` of the
        saved per-image values), one per method checked."""
        from cnnlens.metrics.sanity import verdict_from_upper

        return [
            verdict_from_upper(
                m,
                r["upper_per_image"],
                final=r["result"]["final"],
                threshold=r["result"]["threshold"],
                layers=len(r["result"]["steps"]) - 1,
                seed=self.seed,
            )
            for m, r in self.sanity.items()
        ]

    # ---- what the outputs read

    def per_method(self) -> dict[str, dict[str, Tensor]]:
        """``{method: {metric: per-row scores}}`` (NaN where missing), the sanity column
        from the per-image similarities."""
        out: dict[str, dict[str, Tensor]] = {}
        for method in self.active:
            recs = [self.done[(method, r)] for r in self.rows.ids if (method, r) in self.done]
            out[method] = {
                m: torch.tensor(
                    [float("nan") if r["scores"].get(m) is None else r["scores"][m] for r in recs],
                    dtype=torch.float64,
                )
                for m in self.metrics
            }
            if method in self.sanity:
                vals = self.sanity[method]["upper_per_image"]
                out[method][SANITY_METRIC] = torch.tensor(
                    [float("nan") if v is None else v for v in vals], dtype=torch.float64
                )
        return out

    def columns(self) -> list[str]:
        """The table's columns: the metrics, then the sanity column when it was run."""
        return [*self.metrics, *([SANITY_METRIC] if self.sanity else [])]

    def curves(self) -> dict[str, dict[str, Tensor]]:
        """``{method: {"deletion": (R, S), ...}}`` from the saved rows."""
        out: dict[str, dict[str, Tensor]] = {}
        for method in self.active:
            recs = [self.done[(method, r)] for r in self.rows.ids if (method, r) in self.done]
            out[method] = {}
            for name in CURVES:
                cs = [r["curves"][name] for r in recs if name in r.get("curves", {})]
                if cs and len({len(c) for c in cs}) == 1:
                    out[method][name] = torch.tensor(cs, dtype=torch.float64)
        return out

    def examples_figure(self, count: int) -> Any:
        """The first ``count`` rows explained by every method, with the ground truth."""
        from cnnlens.viz import methods_grid

        idx = list(range(min(count, len(self.rows.ids))))
        methods = [m for m in self.methods if m not in self.skipped]
        if not idx or not methods:
            return None
        x, t, masks, ids = self.batch(idx)
        maps: dict[str, Any] = {}
        if masks is not None:
            maps["ground truth"] = list(masks.float().cpu())
        for method in methods:
            try:
                m = method_maps(
                    self.model, method, x, t, ids, self.seed, self.m_opts.get(method, {})
                )
            except CnnlensError as err:
                logger.info("no example maps for %s: %s", method, err)
                continue
            maps[method] = list(m.cpu())
        names = self.data.classes
        labels = [names[c] if 0 <= c < len(names) else str(c) for c in t.tolist()]
        return methods_grid(
            list(x.cpu()),
            maps,
            preset=self.data.preset,
            image_labels=labels,
            title="The first rows: the class explained above each column",
        )
