"""One assessment run: explain every row with every method, score it with every metric,
run the sanity checks, and keep what finished in the resumable store.

:class:`Run` holds a run's settings, rows and saved results; :func:`cnnlens.assess.assess`
drives it through named steps (:meth:`Run.resume`, :meth:`Run.score` per batch,
:meth:`Run.check` per method) and writes its outputs (:mod:`cnnlens.assess.outputs`).
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.assess.data import AssessData, Rows, forward_all, make_rows
from cnnlens.assess.protocol import BASELINES, SANITY_METRIC
from cnnlens.assess.sanity import run_cascade
from cnnlens.assess.store import (
    FORMAT,
    append_jsonl,
    check_settings,
    finite,
    model_hash,
    read_json,
    read_jsonl,
    sha,
    write_json,
)
from cnnlens.errors import CnnlensError
from cnnlens.viz.render import slug

logger = logging.getLogger(__name__)

__all__ = ["CURVES", "Run"]

#: The metrics whose per-row curves are kept (for the curves figure).
CURVES = ("deletion", "insertion")


def _method_maps(
    model: nn.Module,
    method: str,
    x: Tensor,
    targets: Tensor,
    row_ids: Sequence[str],
    seed: int,
    options: Mapping[str, Any],
) -> Tensor:
    """(B, H, W) maps of one method (or baseline) for one batch of rows."""
    from cnnlens.metrics import centre_maps, explainer, random_maps

    like = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
    if method == "random":
        return torch.cat(
            [random_maps(like[:1], seed=zlib.crc32(f"{seed}/{rid}".encode())) for rid in row_ids]
        )
    if method == "centre":
        return centre_maps(like)
    return explainer(model, method, options)(x, targets)


def _score_batch(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Tensor,
    masks: Tensor | None,
    metrics: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    *,
    activation: str,
    batch_size: int,
    method: str,
    method_options: Mapping[str, Any],
    seed: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-row scores ``{metric: (B,)}`` of every registered metric asked for, and the
    curves ``{"deletion": (B, S), ...}``; baselines get no ``explain``, so the metrics that
    re-explain their inputs leave them out."""
    from cnnlens.metrics import MetricInputs, explainer
    from cnnlens.metrics.evaluate import evaluate_inputs

    inputs = MetricInputs(
        model=model,
        x=x,
        maps=maps,
        target=targets,
        masks=masks,
        activation=activation,
        batch_size=batch_size,
        explain=None if method in BASELINES else explainer(model, method, method_options),
        method=method,
        seed=seed,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*empty ground-truth mask.*")
        scores = evaluate_inputs(inputs, metrics, options)
    curves = {name: inputs.cache[name].scores for name in CURVES if name in inputs.cache}
    return scores, curves


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
        self.activation = "sigmoid" if data.multilabel else "softmax"
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

    @property
    def settings(self) -> dict[str, Any]:
        """What every saved row depends on (a run with other settings is refused)."""
        return {
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

    def _valid(self, rec: Mapping[str, Any] | None, method: str, i: int) -> bool:
        return (
            rec is not None
            and rec.get("image_hash") == self.rows.hashes[i]
            and rec.get("target") == int(self.rows.targets[i])
            and rec.get("options") == self.opt_keys[method]
            and all(m in (rec.get("scores") or {}) for m in self.metrics)
        )

    def resume(self, fresh: bool) -> dict[str, list[int]]:
        """Read saved rows back; the rows still to compute per method."""
        self.out.mkdir(parents=True, exist_ok=True)
        check_settings(self.out, self.settings, fresh)
        for rec in read_jsonl(self.out / "rows.jsonl"):
            self.done[(rec["method"], rec["row"])] = rec
        write_json(
            self.out / "run.json",
            {
                "settings": self.settings,
                "methods": self.methods,
                "method_options": self.m_opts,
                "n_images": len(self.data),
                "rows": len(self.rows.ids),
            },
        )
        return {
            m: [
                i
                for i, rid in enumerate(self.rows.ids)
                if not self._valid(self.done.get((m, rid)), m, i)
            ]
            for m in [*self.methods, *BASELINES]
        }

    def batch(self, idx: Sequence[int]) -> tuple[Tensor, Tensor, Tensor | None, list[str]]:
        """Images, targets, masks and ids of the rows ``idx``, on the model's device."""
        sel = torch.tensor(list(idx), dtype=torch.long)
        x = self.data.images[self.rows.image[sel]].to(self.device)
        t = self.rows.targets[sel].to(self.device)
        m = self.rows.masks[sel].to(self.device) if self.rows.masks is not None else None
        return x, t, m, [self.rows.ids[i] for i in idx]

    def score(self, method: str, idx: Sequence[int]) -> int:
        """Explain and score one batch of rows with one method; append them to rows.jsonl."""
        x, t, masks, ids = self.batch(idx)
        options = self.m_opts.get(method, {})
        maps = _method_maps(self.model, method, x, t, ids, self.seed, options)
        maps, bad = self._finite_maps(method, maps, ids)
        scores, curves = _score_batch(
            self.model,
            x,
            maps,
            t,
            masks,
            self.metrics,
            self.x_opts,
            activation=self.activation,
            batch_size=self.eval_batch_size,
            method=method,
            method_options=options,
            seed=self.seed,
        )
        records = [
            self._record(method, i, ids[j], scores, curves, j, ok=not bool(bad[j]))
            for j, i in enumerate(idx)
        ]
        append_jsonl(self.out / "rows.jsonl", records)
        self.computed += len(records)
        return len(records)

    @staticmethod
    def _finite_maps(method: str, maps: Tensor, ids: Sequence[str]) -> tuple[Tensor, Tensor]:
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

    def _record(
        self,
        method: str,
        i: int,
        row_id: str,
        scores: Mapping[str, Tensor],
        curves: Mapping[str, Tensor],
        j: int,
        *,
        ok: bool,
    ) -> dict[str, Any]:
        """The saved line of row ``i`` (``j`` in its batch); a metric that left the method
        out (one that re-explains, for a baseline) is saved as None."""
        rec = {
            "method": method,
            "row": row_id,
            "image": int(self.rows.image[i]),
            "target": int(self.rows.targets[i]),
            "image_hash": self.rows.hashes[i],
            "options": self.opt_keys[method],
            "scores": {
                k: finite(scores[k][j]) if ok and k in scores else None for k in self.metrics
            },
            "curves": {
                k: [round(float(p), 5) for p in c[j].tolist()] for k, c in curves.items() if ok
            },
        }
        self.done[(method, row_id)] = rec
        return rec

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
                m = _method_maps(
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
