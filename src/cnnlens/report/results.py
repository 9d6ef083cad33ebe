"""The ``results.json`` file: the one definition of its schema, its reader and its writer.

The explain command writes ``RESULTS_DIR/results.json`` next to the PNGs it rendered;
``cnnlens report RESULTS_DIR`` (:func:`build_report`) rebuilds ``report.html`` from it.
Paths inside the file are relative to the folder that holds it (and may not leave it).

Schema (version 1; keys marked ``?`` are optional, ``null`` is allowed where a value is
unknown)::

    {
      "version"?: 1,
      "title"?: "cnnlens report",
      "model": {                          # -> ModelCard
        "arch": "resnet18",               # required
        "parameters"?: 11689512, "trainable_parameters"?: 11689512,
        "dataset"?: "imagenet", "accuracy"?: 0.697,        # fraction in [0, 1]
        "input_size"?: [224, 224], "in_channels"?: 3, "num_classes"?: 1000,
        "class_names"?: ["tench", ...], "preset"?: "imagenet",
        "checkpoint"?: "run/model.safetensors",
        "summary"?: [{"layer": "conv1", "type": "Conv2d", "output": "64x112x112",
                      "params": 9408}, ...]  # or {"rows": [...], "totals": {...}}
        "extra"?: {"any": "value"}
      },
      "images": [{                        # -> ReportImage
        "file": "cat.jpg",                # the input as given (its name is the heading)
        "input_png"?: "inputs/cat.png",   # the input as displayed (else "file" when it is an
                                          # image inside the results folder)
        "predictions": [{"class": "tabby", "index": 281, "prob": 0.62}, ...],
        "maps": [{                        # -> MapEntry
          "method": "gradcam", "target": 281, "class": "tabby", "layer": "layer4",
          "png": "maps/cat_gradcam_281.png",
          "stats"?: {"max": 1.0, "mean": 0.31}, "caption"?: "...", "alt"?: "..."
        }, ...],
        "figures"?: [{"png": "figures/cat_grid.png", "caption": "..."}],
        "notes"?: "...",
        "task"?: {"kind": "detection",    # -> TaskTable (detection | segmentation | multilabel)
                  "columns": ["detection", "gradcam"],
                  "rows": [{"label": "circle 0.93",
                            "pictures": [{"png": "maps/a_det0.png", "caption"?: "..."}]}]}
      }, ...],
      "skipped"?: [{"file": "broken.jpg", "reason": "cannot decode"} | "broken.jpg", ...],
      "prototypes"?: [{"class": "tabby", "index": 281, "png": "prototypes/281.png",
                       "caption"?: "..."}, ...],
      "metrics"?: {                       # -> MetricsTable
        "metrics": ["deletion_auc", "insertion_auc"],
        "rows": [{"method": "gradcam",
                  "values": {"deletion_auc": {"mean": 0.12, "ci": 0.02, "n": 50}}}, ...],
        "higher_is_better"?: {"deletion_auc": false, "insertion_auc": true},
        "ci_level"?: 0.95,
        "figures"?: [{"png": "metrics/curves.png", "caption": "..."}],
        "notes"?: "..."
      },
      "sanity"?: [{"method": "gradcam", "check": "model randomization",
                   "passed": true, "detail": "..."}, ...],
      "sections"?: [{"title": "Robustness", "text"?: "...",   # -> Section
                     "pictures"?: [{"png": "figures/robustness.png", "caption": "..."}],
                     "table"?: [{"method": "gradcam", "max-sens": "0.12 [0.10, 0.14]"}]}]
    }

Unknown keys are ignored, so writers may add fields; readers never need them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlens.errors import DataError
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

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
SCHEMA_VERSION = 1


@dataclass
class Results:
    """The content of a results.json, parsed: the keyword arguments of ``write_report``."""

    title: str
    model_card: ModelCard
    images: list[ReportImage]
    skipped: list[Skipped] = field(default_factory=list)
    prototypes: list[Prototype] | None = None
    metrics: MetricsTable | None = None
    sanity: list[SanityVerdict] | None = None
    sections: list[Section] = field(default_factory=list)


class _Reader:
    """Typed access to the JSON tree with errors that name the offending key."""

    def __init__(self, source: str, base: Path | None) -> None:
        self.source = source
        self.base = base

    def fail(self, where: str, expected: str, got: Any) -> DataError:
        shown = json.dumps(got)[:60] if _jsonable(got) else type(got).__name__
        return DataError(f"{self.source}: {where} must be {expected}; got {shown}")

    def obj(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, "an object", value)
        return value

    def arr(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, "a list", value)
        return value

    def objs(self, value: Any, where: str) -> Iterator[tuple[Mapping[str, Any], str]]:
        """Each object of the list ``value`` with its place, ``where[i]``."""
        for i, item in enumerate(self.arr(value, where)):
            w = f"{where}[{i}]"
            yield self.obj(item, w), w

    def picture(self, d: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The :class:`Picture` fields of ``d``: its ``png``, ``caption`` and ``alt``."""
        return {
            "image": self.path(d.get("png"), f"{where}.png"),
            "caption": self.text(d, "caption", where) or "",
            "alt": self.text(d, "alt", where),
        }

    def text(self, d: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> Any:
        v = d.get(key)
        if v is None:
            if required:
                raise self.fail(f"{where}.{key}", "a string", v)
            return None
        if not isinstance(v, str):
            raise self.fail(f"{where}.{key}", "a string", v)
        return v

    def num(
        self,
        d: Mapping[str, Any],
        key: str,
        where: str,
        *,
        integer: bool = False,
        required: bool = False,
    ) -> Any:
        v = d.get(key)
        if v is None:
            if required:
                raise self.fail(f"{where}.{key}", "a number", v)
            return None
        ok = isinstance(v, int) if integer else isinstance(v, int | float)
        if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
            raise self.fail(f"{where}.{key}", "an integer" if integer else "a number", v)
        return v

    def path(self, value: Any, where: str) -> Path | str:
        """A relative path inside the results folder (a str when there is no folder)."""
        if not isinstance(value, str) or not value:
            raise self.fail(where, "a relative path to a PNG file", value)
        if self.base is None:
            return value
        p = (self.base / value).resolve()
        if Path(value).is_absolute() or not p.is_relative_to(self.base.resolve()):
            raise self.fail(where, "a path inside the results folder", value)
        if not p.is_file():
            raise DataError(
                f"{self.source}: {where} names {value!r}, which does not exist in {self.base}"
            )
        return p


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def _pictures(r: _Reader, items: Any, where: str) -> list[Picture]:
    return [Picture(**r.picture(f, w)) for f, w in r.objs(items, where)]


def _model(r: _Reader, m: Any) -> ModelCard:
    m = r.obj(m, "model")
    size = m.get("input_size")
    if size is not None and (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise r.fail("model.input_size", "a pair of integers [H, W]", size)
    names = m.get("class_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    ):
        raise r.fail("model.class_names", "a list of strings", names)
    summary = m.get("summary") or []
    if isinstance(summary, Mapping):
        summary = summary.get("rows") or []
    summary = [
        dict(r.obj(row, f"model.summary[{i}]"))
        for i, row in enumerate(r.arr(summary, "model.summary"))
    ]
    extra = m.get("extra") or {}
    return ModelCard(
        arch=r.text(m, "arch", "model", required=True),
        parameters=r.num(m, "parameters", "model", integer=True),
        trainable_parameters=r.num(m, "trainable_parameters", "model", integer=True),
        dataset=r.text(m, "dataset", "model"),
        accuracy=r.num(m, "accuracy", "model"),
        input_size=tuple(size) if size is not None else None,
        in_channels=r.num(m, "in_channels", "model", integer=True),
        num_classes=r.num(m, "num_classes", "model", integer=True),
        class_names=list(names) if names is not None else None,
        preset=r.text(m, "preset", "model"),
        checkpoint=r.text(m, "checkpoint", "model"),
        summary=summary,
        extra=dict(r.obj(extra, "model.extra")),
    )


def _input_picture(r: _Reader, d: Mapping[str, Any], where: str) -> Path | str | None:
    if d.get("input_png") is not None:
        return r.path(d["input_png"], f"{where}.input_png")
    if r.base is None:
        return None
    file = (r.base / d["file"]).resolve()
    if file.is_relative_to(r.base.resolve()) and file.is_file():
        return file
    return None


def _image(r: _Reader, d: Any, where: str) -> ReportImage:
    d = r.obj(d, where)
    name = r.text(d, "file", where, required=True)
    preds = []
    for p, w in r.objs(d.get("predictions") or [], f"{where}.predictions"):
        preds.append(
            Prediction(
                class_name=r.text(p, "class", w) or str(p.get("index")),
                index=r.num(p, "index", w, integer=True, required=True),
                prob=r.num(p, "prob", w, required=True),
            )
        )
    maps = []
    for e, w in r.objs(d.get("maps") or [], f"{where}.maps"):
        maps.append(
            MapEntry(
                **r.picture(e, w),
                method=r.text(e, "method", w),
                target=r.num(e, "target", w, integer=True),
                class_name=r.text(e, "class", w),
                layer=r.text(e, "layer", w),
                stats=dict(r.obj(e.get("stats") or {}, f"{w}.stats")),
            )
        )
    return ReportImage(
        name=name,
        image=_input_picture(r, d, where),
        predictions=preds,
        maps=maps,
        figures=_pictures(r, d.get("figures") or [], f"{where}.figures"),
        notes=r.text(d, "notes", where) or "",
        task=_task(r, d["task"], f"{where}.task") if d.get("task") is not None else None,
    )


def _task(r: _Reader, d: Any, where: str) -> TaskTable:
    d = r.obj(d, where)
    columns = r.arr(d.get("columns") or [], f"{where}.columns")
    if not all(isinstance(c, str) for c in columns):
        raise r.fail(f"{where}.columns", "a list of strings", columns)
    rows = [
        TaskRow(
            label=r.text(row, "label", w) or "",
            pictures=_pictures(r, row.get("pictures") or [], f"{w}.pictures"),
        )
        for row, w in r.objs(d.get("rows") or [], f"{where}.rows")
    ]
    return TaskTable(kind=r.text(d, "kind", where, required=True), columns=columns, rows=rows)


def _metrics(r: _Reader, m: Any) -> MetricsTable:
    m = r.obj(m, "metrics")
    names = r.arr(m.get("metrics"), "metrics.metrics")
    if not all(isinstance(n, str) for n in names):
        raise r.fail("metrics.metrics", "a list of metric names", names)
    rows: dict[str, dict[str, MetricValue]] = {}
    for row, w in r.objs(m.get("rows") or [], "metrics.rows"):
        method = r.text(row, "method", w, required=True)
        values = {}
        for k, v in r.obj(row.get("values") or {}, f"{w}.values").items():
            wv = f"{w}.values.{k}"
            v = r.obj(v, wv)
            values[k] = MetricValue(
                mean=r.num(v, "mean", wv, required=True),
                ci=r.num(v, "ci", wv),
                n=r.num(v, "n", wv, integer=True),
            )
        rows[method] = values
    hib = r.obj(m.get("higher_is_better") or {}, "metrics.higher_is_better")
    if not all(isinstance(v, bool) for v in hib.values()):
        raise r.fail("metrics.higher_is_better", "an object of true/false values", dict(hib))
    return MetricsTable(
        metrics=list(names),
        rows=rows,
        higher_is_better=dict(hib),
        ci_level=r.num(m, "ci_level", "metrics") or 0.95,
        figures=_pictures(r, m.get("figures") or [], "metrics.figures"),
        notes=r.text(m, "notes", "metrics") or "",
    )


def parse_results(
    data: Any, base: str | os.PathLike[str] | None = None, *, source: str = RESULTS_FILE
) -> Results:
    """Check a results.json tree against the schema and turn it into report dataclasses.

    Args:
        data: the decoded JSON.
        base: the folder the relative PNG paths live in; each must exist there. With None
            the paths are checked for type only and kept as strings.
        source: name used in error messages.

    Returns:
        The parsed :class:`Results`.

    Raises:
        DataError: naming the first key that does not follow the schema.
    """
    r = _Reader(source, Path(base) if base is not None else None)
    d = r.obj(data, "the top level")
    version = d.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise r.fail(
            "version", f"{SCHEMA_VERSION} (this cnnlens reads version {SCHEMA_VERSION})", version
        )
    images = [
        _image(r, im, f"images[{i}]") for i, im in enumerate(r.arr(d.get("images") or [], "images"))
    ]
    skipped = []
    for i, s in enumerate(r.arr(d.get("skipped") or [], "skipped")):
        if isinstance(s, str):
            skipped.append(Skipped(s))
        else:
            s = r.obj(s, f"skipped[{i}]")
            skipped.append(
                Skipped(
                    r.text(s, "file", f"skipped[{i}]", required=True),
                    r.text(s, "reason", f"skipped[{i}]") or "",
                )
            )
    prototypes = None
    if d.get("prototypes") is not None:
        prototypes = []
        for p, w in r.objs(d["prototypes"], "prototypes"):
            prototypes.append(
                Prototype(
                    **r.picture(p, w),
                    class_name=r.text(p, "class", w) or "",
                    index=r.num(p, "index", w, integer=True),
                )
            )
    sanity = None
    if d.get("sanity") is not None:
        sanity = []
        for s, w in r.objs(d["sanity"], "sanity"):
            if s.get("passed") is not None and not isinstance(s.get("passed"), bool):
                raise r.fail(f"{w}.passed", "true, false or null (inconclusive)", s.get("passed"))
            sanity.append(
                SanityVerdict(
                    method=r.text(s, "method", w, required=True),
                    check=r.text(s, "check", w, required=True),
                    passed=s["passed"],
                    detail=r.text(s, "detail", w) or "",
                )
            )
    return Results(
        title=r.text(d, "title", "the top level") or "cnnlens report",
        model_card=_model(r, d.get("model")),
        images=images,
        skipped=skipped,
        prototypes=prototypes,
        metrics=_metrics(r, d["metrics"]) if d.get("metrics") is not None else None,
        sanity=sanity,
        sections=_sections(r, d.get("sections") or []),
    )


def _sections(r: _Reader, value: Any) -> list[Section]:
    sections = []
    for s, w in r.objs(value, "sections"):
        table = [
            {str(k): v for k, v in row.items()}
            for row, _ in r.objs(s.get("table") or [], f"{w}.table")
        ]
        sections.append(
            Section(
                title=r.text(s, "title", w, required=True),
                text=r.text(s, "text", w) or "",
                pictures=[
                    Picture(**r.picture(p, wp))
                    for p, wp in r.objs(s.get("pictures") or [], f"{w}.pictures")
                ],
                table=table,
            )
        )
    return sections


def _results_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.is_file():
        raise DataError(
            f"results {str(path)!r} must be a results folder holding {RESULTS_FILE} "
            "(written by `cnnlens explain`) or that file itself; it does not exist"
        )
    return p


def load_results(path: str | os.PathLike[str]) -> Results:
    """Read and check ``results.json`` (or the folder holding it).

    Raises:
        DataError: when the file is missing, is not JSON, or does not follow the schema.
    """
    p = _results_path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{p} must be a JSON file written by `cnnlens explain`; {err}") from None
    return parse_results(data, p.parent, source=str(p))


def write_results(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Check ``data`` against the schema, then write it as JSON atomically.

    ``path`` is the results.json file or the folder to hold it. The PNG paths ``data`` names
    must already exist in that folder. A ``"version"`` key is added when missing.

    Returns:
        The path of the written file.
    """
    from cnnlens.viz.figures import atomic_write

    p = Path(path)
    if p.is_dir() or p.suffix != ".json":
        p = p / RESULTS_FILE
    full = {"version": SCHEMA_VERSION, **data}
    parse_results(full, p.parent, source=str(p))
    text = json.dumps(full, indent=2, ensure_ascii=False, allow_nan=False)
    return atomic_write(p, (text + "\n").encode("utf-8"))


def build_report(
    results: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Rebuild the HTML report from a results folder (what ``cnnlens report DIR`` runs).

    Args:
        results: the results folder, or its results.json.
        out: the HTML file to write (default ``report.html`` next to results.json).
        title: overrides the title stored in results.json.

    Returns:
        The path of the written report.
    """
    from cnnlens.report.render import write_report

    p = _results_path(results)
    res = load_results(p)
    return write_report(
        out if out is not None else p.parent / REPORT_FILE,
        title=title or res.title,
        model_card=res.model_card,
        images=res.images,
        prototypes=res.prototypes,
        metrics=res.metrics,
        sanity=res.sanity,
        skipped=res.skipped,
        extra_sections=res.sections,
    )
