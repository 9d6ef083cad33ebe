"""``cnnlens report STORE``: an HTML report over an explanation store, streamed.

The store is read in record batches, never whole: a first pass over the light columns
(no maps) gathers the summary per method and keeps only the ids of the most and least
confident images (two bounded heaps); a second pass over ``rank == 0`` maps sums them per
(method, explained class) at the stored resolution; a last read fetches the rows of the
chosen examples. Memory is O(methods x classes x map pixels + examples), whatever the
number of rows.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from cnnlens.dataset.read import decode_map, open_store
from cnnlens.errors import CnnlensError

__all__ = ["REPORT_FILE", "build_store_report"]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
_LIGHT = ["id", "method", "rank", "target", "target_prob", "coverage", "top10_mass", "error"]
_STATS = ("target_prob", "map_mean", "coverage", "top10_mass")
_MAP_BATCH = 2048  # rows of maps decoded at a time (2048 x 64 x 64 float16 = 16 MiB)


@dataclass
class _MethodSummary:
    rows: int = 0
    images: int = 0
    errors: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, name: str, values: list[Any]) -> None:
        finite = [v for v in values if v is not None and np.isfinite(v)]
        self.sums[name] += float(sum(finite))
        self.counts[name] += len(finite)

    def mean(self, name: str) -> float | None:
        n = self.counts.get(name, 0)
        return round(self.sums[name] / n, 4) if n else None


def _first_pass(
    ds: Any, n_examples: int, first_method: str | None
) -> tuple[dict[str, _MethodSummary], Any, list[Any]]:
    summary: dict[str, _MethodSummary] = defaultdict(_MethodSummary)
    best: list[tuple[float, str]] = []  # min-heap of the most confident
    worst: list[tuple[float, str]] = []  # min-heap of -prob: the least confident
    errors: list[tuple[str, str]] = []
    columns = [*_LIGHT, "map_mean"]
    for batch in ds.to_batches(columns=columns):
        d = batch.to_pydict()
        for m in sorted(set(d["method"])):
            first_method = first_method or m
            sel = [i for i, v in enumerate(d["method"]) if v == m]
            s = summary[m]
            s.rows += len(sel)
            s.images += sum(1 for i in sel if d["rank"][i] == 0)
            s.errors += sum(1 for i in sel if d["error"][i] is not None)
            for name in _STATS:
                s.add(name, [d[name][i] for i in sel])
        for i, m in enumerate(d["method"]):
            if d["error"][i] is not None and m == first_method and len(errors) < 50:
                errors.append((d["id"][i], d["error"][i]))
            if m != first_method or d["rank"][i] != 0 or d["target_prob"][i] is None:
                continue
            p, ident = float(d["target_prob"][i]), d["id"][i]
            for heap, value in ((best, p), (worst, -p)):
                if len(heap) < n_examples:
                    heapq.heappush(heap, (value, ident))
                elif value > heap[0][0]:
                    heapq.heapreplace(heap, (value, ident))
    picks = {
        "most confident": [i for _, i in sorted(best, reverse=True)],
        "least confident": [i for _, i in sorted(worst, reverse=True)],
    }
    return summary, picks, errors


def _class_means(ds: Any) -> dict[tuple[str, int], tuple[np.ndarray, int]]:
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = defaultdict(int)
    cols = ["method", "target", "map", "map_height", "map_width"]
    flt = (pc.field("rank") == 0) & pc.field("error").is_null()
    for batch in ds.to_batches(columns=cols, filter=flt, batch_size=_MAP_BATCH):
        d = batch.to_pydict()
        for m, t, data, h, w in zip(*(d[c] for c in cols)):
            arr = decode_map(data, h, w).numpy().astype(np.float64)
            key = (m, int(t))
            if key in sums and sums[key].shape != arr.shape:
                continue  # a map of another resolution (not possible in one store)
            sums[key] = sums[key] + arr if key in sums else arr
            counts[key] += 1
    return {k: (sums[k] / counts[k], counts[k]) for k in sums}


def _input_picture(row: dict[str, Any], settings: dict[str, Any]) -> Any:
    if not row.get("path"):
        return None
    from cnnlens.data import load_image, to_tensor
    from cnnlens.viz.render import show_input

    c = int(settings.get("in_channels", 3))
    try:
        img = load_image(row["path"], mode={1: "L", 3: "RGB"}.get(c))
        x = to_tensor(
            img,
            size=tuple(settings["input_size"]),
            preset=settings.get("preset"),
            channels=c if c in (1, 3) else None,
            crop=bool(settings.get("crop")),
        )
    except CnnlensError as err:  # the file changed or went away since the run
        logger.warning("no input picture for %s: %s", row["id"], err)
        return None
    return show_input(x, preset=settings.get("preset"), min_side=160)


def _example(row_group: list[dict[str, Any]], settings: dict[str, Any], title: str) -> Any:
    from cnnlens.report import MapEntry, Prediction, ReportImage
    from cnnlens.viz import heatmap, overlay, to_png_bytes

    first = row_group[0]
    base = _input_picture(first, settings)
    names = settings.get("_class_names") or []
    preds = [
        Prediction(names[i] if i < len(names) else str(i), int(i), float(p))
        for i, p in zip(first["pred_index"] or [], first["pred_prob"] or [])
    ]
    maps = []
    for r in sorted(row_group, key=lambda r: (r["method"], r["layer"] or "", r["rank"])):
        m = decode_map(r["map"], r["map_height"], r["map_width"])
        pic = overlay(base, m) if base is not None else heatmap(m, size=(160, 160))
        stats = {
            k: round(float(r[k]), 3) for k in ("target_prob", "top10_mass") if r[k] is not None
        }
        maps.append(
            MapEntry(
                to_png_bytes(pic),
                method=r["method"],
                target=r["target"],
                class_name=r["target_name"],
                layer=r["layer"],
                stats=stats,
            )
        )
    label = f" (label: {first['label']})" if first.get("label") else ""
    return ReportImage(
        name=f"{title}: {first['id']}", image=base, predictions=preds, maps=maps, notes=label
    )


def build_store_report(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    examples: int = 4,
    classes: int = 12,
) -> Path:
    """Write an HTML report over an explanation store, reading it in batches.

    It shows per method the rows, images, errors and mean statistics; the ``examples``
    most and least confident images (first method) with every stored map over the input;
    the average map of the ``classes`` most explained classes per method; the errors.

    Args:
        path: the store.
        out: the HTML file (default ``STORE/report.html``).
        title: page title.
        examples: images shown at each end of the confidence ranking.
        classes: classes shown in the per-class average maps (most frequent first).

    Returns:
        The report's path.
    """
    from cnnlens.report import ModelCard, Picture, Section, Skipped, write_report
    from cnnlens.viz import heatmap, to_png_bytes

    store = open_store(path)
    ds = store.dataset()
    settings = dict(store.settings)
    facts = store.meta.get("info", {})
    names = list(facts.get("class_names") or [])
    settings["_class_names"] = names
    first = next(iter(settings.get("methods") or {}), None)
    summary, picks, errors = _first_pass(ds, examples, first)
    table = [
        {
            "method": m,
            "images": s.images,
            "rows": s.rows,
            "errors": s.errors,
            **{f"mean {k}": s.mean(k) for k in _STATS},
        }
        for m, s in summary.items()
    ]
    sections = [
        Section(
            "Store summary",
            text=(
                f"Store {store.path} holds {sum(s.rows for s in summary.values())} rows in "
                f"{len(store.parts())} part files. target_prob is the model's probability of "
                "the explained class; top10_mass the share of a map's total in its top 10 % "
                "pixels (1: one sharp spot, 0.1: flat)."
            ),
            table=table,
        )
    ]
    means = _class_means(ds)
    for method in summary:
        keys = sorted((k for k in means if k[0] == method), key=lambda k: -means[k][1])
        pictures = [
            Picture(
                to_png_bytes(heatmap(means[k][0], size=(128, 128))),
                caption=f"{names[k[1]] if k[1] < len(names) else k[1]} (n={means[k][1]})",
            )
            for k in keys[:classes]
        ]
        if pictures:
            sections.append(Section(f"Average {method} map per explained class", pictures=pictures))
    wanted = {i for ids in picks.values() for i in ids}
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if wanted:
        flt = pc.field("id").isin(sorted(wanted)) & pc.field("error").is_null()
        for r in ds.to_table(filter=flt).to_pylist():
            rows[r["id"]].append(r)
    images = [
        _example(rows[i], settings, f"{label} {n + 1}")
        for label, ids in picks.items()
        for n, i in enumerate(ids)
        if rows.get(i)
    ]
    card = ModelCard(
        arch=str(facts.get("arch", "model")),
        num_classes=len(names) or None,
        class_names=names or None,
        input_size=tuple(settings.get("input_size") or ()) or None,
        in_channels=settings.get("in_channels"),
        preset=settings.get("preset"),
        checkpoint=facts.get("model"),
        extra={
            "Model hash": str(settings.get("model_hash", ""))[:16],
            "Methods": ", ".join(settings.get("methods") or {}),
            "Map size": settings.get("map_size"),
        },
    )
    target = Path(out) if out is not None else store.path / REPORT_FILE
    return write_report(
        target,
        title=title or f"cnnlens dataset report: {store.path.name}",
        model_card=card,
        images=images,
        extra_sections=sections,
        skipped=[Skipped(i, e) for i, e in errors],
    )
