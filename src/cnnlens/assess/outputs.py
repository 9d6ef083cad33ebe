"""What an assessment writes to its folder: the tables, the figures, ``results.json`` and
``report.html``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from cnnlens.assess.data import AssessData
from cnnlens.assess.protocol import BASELINES, SANITY_METRIC, metric_direction
from cnnlens.assess.run import Run
from cnnlens.assess.sanity import report_verdict
from cnnlens.assess.store import json_safe, write_json, write_text
from cnnlens.assess.tables import csv_table, markdown_table, summary_rows

__all__ = ["write_outputs"]


def write_outputs(
    run: Run, *, examples: int, model_info: Any, title: str | None
) -> tuple[list[dict[str, Any]], list[str], list[Any], dict[str, Path]]:
    """Write every output of ``run``; the table rows, columns, report verdicts and files."""
    from cnnlens.report import build_report, write_results

    columns = run.columns()
    table = summary_rows(run.per_method(), columns, run.seed)
    verdicts = run.verdicts()
    files = _write_tables(run, table, columns, verdicts)
    figures = _write_figures(run, examples, files)
    results = {
        "title": title or f"cnnlens assess: {_arch(run.model, model_info)} on {run.data.name}",
        "model": _model_card(run.model, model_info, run.data, run.num_classes),
        "images": [],
        "metrics": {
            "metrics": columns,
            "rows": _report_rows(run, table),
            "higher_is_better": {m: d for m in columns if (d := metric_direction(m)) is not None},
            "ci_level": 0.95,
            "figures": figures,
            "notes": _notes(run),
        },
        "sanity": [
            {"method": v.method, "check": v.check, "passed": v.passed, "detail": v.detail}
            for v in verdicts
        ],
    }
    files["results"] = write_results(run.out, json_safe(results))
    files["report"] = build_report(run.out)
    return table, columns, [report_verdict(v) for v in verdicts], files


def _write_tables(
    run: Run, table: list[dict[str, Any]], columns: list[str], verdicts: list[Any]
) -> dict[str, Path]:
    out = run.out
    files: dict[str, Path] = {
        "table_md": write_text(out / "table.md", markdown_table(table, columns)),
        "table_csv": write_text(out / "table.csv", csv_table(table)),
    }
    files["table_json"] = write_json(
        out / "table.json",
        {
            "dataset": run.data.name,
            "images": len(run.data),
            "rows": len(run.rows.ids),
            "metrics": columns,
            "methods": run.active,
            "methods_skipped": run.skipped,
            "table": table,
            "sanity": [
                {
                    **v.to_dict(),
                    "steps": run.sanity[v.method]["result"]["steps"],
                    "similarity": run.sanity[v.method]["curve"],
                }
                for v in verdicts
            ],
            "settings": run.settings,
            "method_options": run.m_opts,
        },
    )
    return files


def _write_figures(run: Run, examples: int, files: dict[str, Path]) -> list[dict[str, str]]:
    from cnnlens.viz import save_png
    from cnnlens.viz.assess import curves_figure, sanity_figure

    figures: list[dict[str, str]] = []

    def figure(fig: Any, name: str, caption: str) -> None:
        if fig is not None:
            files[name] = save_png(fig, run.out / "figures" / f"{name}.png")
            figures.append({"png": f"figures/{name}.png", "caption": caption})

    curves = run.curves()
    if any(curves.values()):
        figure(
            curves_figure(curves, BASELINES),
            "curves",
            "Mean deletion and insertion curves over the rows (Petsiuk et al. 2018); the "
            "baselines are drawn in black, the area under each curve is in brackets.",
        )
    if run.sanity:
        steps = max((r["result"]["steps"] for r in run.sanity.values()), key=len)
        labels = {v.method: f"{v.method} ({v.outcome}, {v.upper:.3f})" for v in run.verdicts()}
        figure(
            sanity_figure(
                {m: r["curve"] for m, r in run.sanity.items()}, steps, labels, run.threshold
            ),
            "sanity",
            "Similarity of each method's attributions to the original ones as the layers "
            "are re-initialized from the output towards the input (Adebayo et al. 2018); "
            "the verdict reads the shaded upper half.",
        )
    figure(
        run.examples_figure(examples),
        "examples",
        "The first rows explained by every method, next to the ground-truth mask.",
    )
    return figures


def _report_rows(run: Run, table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method in run.active:
        values = {}
        for r in table:
            if r["method"] == method and math.isfinite(r["mean"]):
                ci = (r["high"] - r["low"]) / 2 if math.isfinite(r["high"]) else None
                values[r["metric"]] = {"mean": r["mean"], "ci": ci, "n": int(r["n"])}
        rows.append({"method": method, "values": values})
    return rows


def _notes(run: Run) -> str:
    notes = (
        f"{len(run.methods)} methods and {len(BASELINES)} baselines ({', '.join(BASELINES)} "
        f"maps) on {len(run.rows.ids)} rows ({len(run.data)} {run.data.name} images; the "
        f"class explained: {run.target}). Mean ± half-width of the 95% confidence interval."
    )
    if run.sanity:
        notes += (
            f" {SANITY_METRIC}: mean |Spearman| of the attributions to the original ones "
            f"while the upper half of the layers is re-initialized "
            f"({min(run.sanity_images, len(run.rows.ids))} images; lower is better; a method "
            f"passes when the interval lies below {run.threshold:g}, and is inconclusive "
            "when it spans it)."
        )
    if run.skipped:
        notes += f" Not applicable to this model: {', '.join(run.skipped)}."
    return notes


def _arch(model: nn.Module, info: Any) -> str:
    return getattr(info, "arch", None) or type(model).__name__


def _model_card(model: nn.Module, info: Any, data: AssessData, num_classes: int) -> dict[str, Any]:
    card: dict[str, Any] = {
        "arch": _arch(model, info),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "input_size": [int(v) for v in data.images.shape[-2:]],
        "in_channels": int(data.images.shape[1]),
        "num_classes": num_classes,
        "preset": data.preset,
        "dataset": getattr(info, "dataset", None),
        "accuracy": getattr(info, "accuracy", None),
        "checkpoint": getattr(info, "source", None),
    }
    names = list(getattr(info, "class_names", None) or [])
    if not names and len(data.classes) == num_classes:
        names = list(data.classes)
    if names:
        card["class_names"] = names
    return {k: v for k, v in card.items() if v is not None}
