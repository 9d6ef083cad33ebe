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
    figures += _summary_figure(run, table, files)
    sections = _robustness_section(run, table, files)
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
        "sections": sections,
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


def _means(table: list[dict[str, Any]], family: str | None = None) -> tuple[dict, dict, dict]:
    """``{method: {metric: mean}}``, each metric's direction and family, from the table (of
    one ``family`` when given); rows without a finite mean or a direction are left out."""
    means: dict[str, dict[str, float]] = {}
    up: dict[str, bool] = {}
    families: dict[str, str] = {}
    for r in table:
        if r.get("higher_is_better") is None or not math.isfinite(r["mean"]):
            continue
        if family is not None and r.get("family") != family:
            continue
        means.setdefault(r["method"], {})[r["metric"]] = r["mean"]
        up[r["metric"]] = bool(r["higher_is_better"])
        families[r["metric"]] = r.get("family") or r["metric"]
    return means, up, families


def _summary_figure(
    run: Run, table: list[dict[str, Any]], files: dict[str, Path]
) -> list[dict[str, str]]:
    """One picture to compare the methods on: each family's metrics rescaled across the
    methods and baselines (1 = best shown, 0 = worst, by each metric's direction), averaged
    per family; a radar with three families or more, bars otherwise."""
    from cnnlens.viz import save_png
    from cnnlens.viz.summary_chart import family_scores, summary_chart

    means, up, families = _means(table)
    if len(means) < 2:
        return []
    scores = family_scores(means, up, families)
    shown = list(dict.fromkeys(f for row in scores.values() for f in row))
    fig = summary_chart(
        scores,
        kind="radar" if len(shown) >= 3 else "bars",
        higher_is_better={f: True for f in shown},
        title="methods per metric family (1 = best shown, 0 = worst)",
    )
    files["summary"] = save_png(fig, run.out / "figures" / "summary.png")
    caption = (
        "Every method and baseline on each metric family: each metric's means rescaled "
        "across the rows shown (1 for the best, 0 for the worst, by the metric's direction), "
        "then averaged over the family's metrics ("
        + "; ".join(f"{f}: {', '.join(k for k in up if families[k] == f)}" for f in shown)
        + "). The table keeps the raw numbers."
    )
    return [{"png": "figures/summary.png", "caption": caption}]


def _robustness_section(
    run: Run, table: list[dict[str, Any]], files: dict[str, Path]
) -> list[dict[str, Any]]:
    """The robustness metrics the run computed: what each measures, a table and a chart."""
    from cnnlens.assess.tables import _cell
    from cnnlens.metrics import metric_infos
    from cnnlens.viz import save_png
    from cnnlens.viz.summary_chart import summary_chart

    rows = [r for r in table if r.get("family") == "robustness" and r["method"] not in BASELINES]
    if not rows:
        return []
    infos = metric_infos()
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    head = {m: f"{infos[m].label} {'↑' if infos[m].higher_is_better else '↓'}" for m in metrics}
    by = {(r["method"], r["metric"]): r for r in rows}
    cells = [
        {
            "method": method,
            **{head[m]: _cell(by[(method, m)]) for m in metrics if (method, m) in by},
        }
        for method in dict.fromkeys(r["method"] for r in rows)
    ]
    text = (
        "How far each method's map moves when the input barely changes (each perturbed "
        "input is explained again for the same class; lower is better). "
        + " ".join(f"{infos[m].label} ({m}): {infos[m].summary}." for m in metrics)
        + " Mean [95% confidence interval] over the rows; the baselines' maps do not "
        "depend on the input, so they have no row here."
    )
    pictures = []
    means, up, _ = _means(rows)
    if means:
        fig = summary_chart(
            means,
            kind="bars",
            higher_is_better=up,
            short_labels={m: infos[m].label for m in metrics},
            title="robustness per metric (1 = most stable shown, 0 = least)",
        )
        files["robustness"] = save_png(fig, run.out / "figures" / "robustness.png")
        pictures.append(
            {
                "png": "figures/robustness.png",
                "caption": "Each robustness metric rescaled across the methods: 1 for the "
                "most stable method, 0 for the least.",
            }
        )
    return [{"title": "Robustness", "text": text, "pictures": pictures, "table": cells}]


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
