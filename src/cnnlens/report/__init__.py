"""The self-contained HTML report and the results.json it can be rebuilt from.

- :func:`write_report` renders the dataclasses of :mod:`cnnlens.report.content` into one
  HTML file (pictures embedded as data URIs, no network, no script).
- :mod:`cnnlens.report.results` defines the ``results.json`` schema that the explain command
  writes (:func:`write_results`) and :func:`build_report` (``cnnlens report DIR``) reads.

Example:
    >>> from cnnlens.report import ModelCard, ReportImage, MapEntry, write_report
    >>> write_report(
    ...     "run/report.html",
    ...     model_card=ModelCard(arch="simplecnn", parameters=12_345),
    ...     images=[ReportImage("a.png", image=img, maps=[MapEntry(png, method="gradcam")])],
    ... )  # doctest: +SKIP
"""

from __future__ import annotations

from cnnlens.report.content import (
    MapEntry,
    MetricsTable,
    MetricValue,
    ModelCard,
    Picture,
    Prediction,
    Prototype,
    ReportImage,
    SanityVerdict,
    Section,
    Skipped,
    TaskRow,
    TaskTable,
)
from cnnlens.report.render import render_report, write_report
from cnnlens.report.results import (
    REPORT_FILE,
    RESULTS_FILE,
    SCHEMA_VERSION,
    Results,
    build_report,
    load_results,
    parse_results,
    write_results,
)

__all__ = [
    "REPORT_FILE",
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "MapEntry",
    "MetricValue",
    "MetricsTable",
    "ModelCard",
    "Picture",
    "Prediction",
    "Prototype",
    "ReportImage",
    "Results",
    "SanityVerdict",
    "Section",
    "Skipped",
    "TaskRow",
    "TaskTable",
    "build_report",
    "load_results",
    "parse_results",
    "render_report",
    "write_report",
    "write_results",
]
