"""The tables of an assessment: the summary rows (mean and 95% interval per method x
metric), ``table.md``, ``table.csv`` and the result object :func:`cnnlens.assess.assess`
returns.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from cnnlens.assess.protocol import SANITY_METRIC, metric_direction
from cnnlens.core.display import Displayable
from cnnlens.errors import InputError

__all__ = ["AssessResult", "csv_table", "markdown_table", "summary_rows"]


@dataclass
class AssessResult(Displayable):  # drawn by cnnlens.viz.assessment_figure
    """What :func:`cnnlens.assess.assess` wrote and measured.

    Attributes:
        out: the output folder.
        rows: the table, one dict per (method, metric) as :func:`cnnlens.metrics.summarize`
            gives it (mean, low, high, std, n, n_missing, ...).
        sanity: the sanity verdicts, one per method checked.
        methods: methods assessed (baselines not included).
        metrics: the table's columns.
        methods_skipped: method -> why it does not apply to the model.
        computed: rows computed by this call.
        reused: rows read back from an earlier, interrupted run.
        files: every file written, by role (``"table_md"``, ``"report"``, ...).
        seconds: wall time.
    """

    out: Path
    rows: list[dict[str, Any]]
    sanity: list[Any]
    methods: list[str]
    metrics: list[str]
    methods_skipped: dict[str, str] = field(default_factory=dict)
    computed: int = 0
    reused: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def value(self, method: str, metric: str) -> dict[str, Any]:
        """The table's row for ``method`` x ``metric``.

        Raises:
            InputError: when the table has no such cell.
        """
        for r in self.rows:
            if r["method"] == method and r["metric"] == metric:
                return r
        raise InputError(f"the table has no cell {method!r} x {metric!r}")

    def mean(self, method: str, metric: str) -> float:
        """The mean of ``method`` x ``metric``."""
        return float(self.value(method, metric)["mean"])

    def verdict(self, method: str) -> Any:
        """The sanity verdict of ``method`` (None when it was not checked)."""
        return next((v for v in self.sanity if v.method == method), None)

    def markdown(self) -> str:
        """The table as markdown (what ``table.md`` holds)."""
        return markdown_table(self.rows, self.metrics)


def summary_rows(
    per_method: Mapping[str, Mapping[str, Tensor]], columns: Sequence[str], seed: int
) -> list[dict[str, Any]]:
    """One summary row per method x metric, in method then column order.

    The interval is Student's t, except for the 0/1 metrics (registered ``binary``) and the
    sanity column, whose interval is the percentile bootstrap: it never leaves the range of
    the scores (a t interval over two 0/1 scores can reach below 0 and above 1).
    """
    from cnnlens.metrics import metric_infos, summarize

    infos = metric_infos()

    def bootstrap(metric: str) -> bool:
        return metric == SANITY_METRIC or (metric in infos and infos[metric].binary)

    boot = {m: {k: v for k, v in d.items() if bootstrap(k)} for m, d in per_method.items()}
    other = {m: {k: v for k, v in d.items() if not bootstrap(k)} for m, d in per_method.items()}
    found = summarize(other) + summarize(boot, interval="bootstrap", seed=seed)
    order = {m: i for i, m in enumerate(per_method)}
    cols = {m: i for i, m in enumerate(columns)}
    rows = sorted(found, key=lambda r: (order[r["method"]], cols[r["metric"]]))
    for r in rows:
        if r["metric"] == SANITY_METRIC:
            r["family"], r["higher_is_better"] = "sanity", False
    return rows


def _cell(r: Mapping[str, Any]) -> str:
    mean, lo, hi = r.get("mean"), r.get("low"), r.get("high")
    if mean is None or not math.isfinite(mean):
        return "—"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """The summary rows as a markdown table: ``mean [low, high]`` per cell, with the
    direction of each column and the number of rows in a note."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["metric"]): r for r in rows}
    arrow = {True: " ↑", False: " ↓", None: ""}
    head = "| method | " + " | ".join(f"{m}{arrow[metric_direction(m)]}" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 1)]
    for method in methods:
        cells = [_cell(by[(method, m)]) if (method, m) in by else "—" for m in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    ns = sorted({int(r["n"]) for r in rows if r.get("metric") != SANITY_METRIC and r.get("n")})
    note = (
        f"\nMean [95% confidence interval] over {', '.join(map(str, ns)) or '0'} image rows; "
        "↑ higher is better, ↓ lower is better."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def csv_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary rows as CSV (empty cells for missing or non-finite values)."""
    cols = ["method", "metric", "family", "higher_is_better", "mean", "low", "high", "std", "n"]
    cols += ["n_missing", "confidence"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                v = "" if not math.isfinite(v) else f"{v:.6g}"
            vals.append("" if v is None else v)
        w.writerow(vals)
    return buf.getvalue()
