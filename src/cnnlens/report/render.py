"""Render the self-contained HTML report with jinja2 (autoescape on) and write it atomically.

Every picture is embedded as a base64 ``data:`` URI; the page has no external CSS, script,
font or image and opens from disk without a network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError

from cnnlens.errors import DataError, InputError
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

TOP_K = 5
INPUT_MAX_SIDE = 768  # an input image read from a file is shrunk to this for embedding
SMALL_SIDE = 160  # pictures narrower than this are drawn with crisp (pixelated) upscaling

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _sniff(data: bytes) -> str | None:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _png(img: Image.Image) -> bytes:
    from cnnlens.viz.figures import to_png_bytes

    return to_png_bytes(img)


def _image_bytes(source: Any, where: str, *, max_side: int | None = None) -> bytes:
    """Bytes of an embeddable image (PNG/JPEG/GIF/WebP) from any picture source."""
    from cnnlens.viz.figures import to_png_bytes

    if isinstance(source, Figure):
        return to_png_bytes(source)
    if isinstance(source, Image.Image):
        return _png(_shrink(source, max_side))
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if _sniff(data) is None:
            raise InputError(
                f"{where} must hold PNG, JPEG, GIF or WebP bytes, a PIL image, a Figure or a "
                f"path; got {len(data)} bytes of another kind"
            )
        return data if max_side is None else _png(_shrink(_decode(data, where), max_side))
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        try:
            data = p.read_bytes()
        except OSError as err:
            raise DataError(
                f"{where} names the file {str(p)!r}, which cannot be read: {err}"
            ) from None
        if _sniff(data) is not None and max_side is None:
            _check_header(data, f"{where} ({p})")
            return data
        return _png(_shrink(_decode(data, f"{where} ({p})"), max_side))
    raise InputError(
        f"{where} must be PNG/JPEG bytes, a PIL image, a matplotlib Figure or a path; "
        f"got {type(source).__name__}"
    )


#: Largest image (width x height) a report embeds or decodes: 64 megapixels, the limit of
#: :func:`cnnlens.data.load_image`; larger files are refused as possible decompression bombs.
MAX_PIXELS = 64_000_000


def _check_header(data: bytes, where: str) -> None:
    """Refuse image bytes whose header declares more than :data:`MAX_PIXELS` pixels or that
    do not verify (a truncated or damaged file), before embedding them undecoded."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise DataError(
                    f"{where} is {width}x{height} = {width * height:,} pixels, more than the "
                    f"limit of {MAX_PIXELS:,} (possible decompression bomb)"
                )
            im.verify()
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where} must be an image file PIL can read; {err}") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"{where} is refused as a possible decompression bomb; {err}") from None


def _decode(data: bytes, where: str) -> Image.Image:
    _check_header(data, where)
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise DataError(f"{where} must be an image file PIL can read; {err}") from None
    return img


def _shrink(img: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is not None and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    return img


def _embed(source: Any, alt: str, where: str, *, max_side: int | None = None) -> dict[str, Any]:
    data = _image_bytes(source, where, max_side=max_side)
    mime = _sniff(data) or "image/png"
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError):
        width = height = None
    return {
        "src": f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}",
        "alt": alt,
        "width": width,
        "height": height,
        "small": width is not None and width < SMALL_SIDE,
    }


def _fmt(value: Any) -> str:
    """Human-readable numbers: 11,689,512 / 0.7123 / 1.2e-05; others via str()."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}" if abs(value) >= 1000 else f"{value:g}"
        return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"
    if isinstance(value, list | tuple):
        return (
            " × ".join(_fmt(v) for v in value)
            if all(isinstance(v, int) for v in value)
            else ", ".join(_fmt(v) for v in value)
        )
    return str(value)


def _metric(value: MetricValue | None) -> str:
    if value is None:
        return "—"
    text = _fmt(float(value.mean))
    if value.ci is not None:
        text += f" ± {_fmt(float(value.ci))}"
    return text


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "section"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for row in rows:
        cols.update(dict.fromkeys(row))
    return list(cols)


def _coerce(value: Any, cls: type, where: str) -> Any:
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except TypeError as err:
            raise InputError(f"{where} must be a {cls.__name__} or its fields; {err}") from None
    raise InputError(f"{where} must be a {cls.__name__}; got {type(value).__name__}")


def _picture_view(p: Picture, where: str) -> dict[str, Any]:
    caption = p.label() if isinstance(p, MapEntry) else p.caption
    view = _embed(p.image, p.describe(), where)
    view["caption"] = caption
    view["stats"] = (
        ", ".join(f"{k} {_fmt(v)}" for k, v in p.stats.items()) if isinstance(p, MapEntry) else ""
    )
    return view


def _card_view(card: ModelCard) -> dict[str, Any]:
    facts: list[tuple[str, str]] = [("Architecture", card.arch)]
    if card.parameters is not None:
        facts.append(("Parameters", _fmt(card.parameters)))
    if card.trainable_parameters is not None:
        facts.append(("Trainable parameters", _fmt(card.trainable_parameters)))
    if card.dataset:
        facts.append(("Dataset", card.dataset))
    if card.accuracy is not None:
        acc = float(card.accuracy)
        facts.append(("Test accuracy", f"{acc * 100 if acc <= 1 else acc:.2f} %"))
    if card.input_size is not None:
        facts.append(("Input size", f"{card.input_size[0]} × {card.input_size[1]}"))
    if card.in_channels is not None:
        facts.append(("Input channels", _fmt(card.in_channels)))
    n_classes = card.num_classes
    if n_classes is None and card.class_names:
        n_classes = len(card.class_names)
    if n_classes is not None:
        facts.append(("Classes", _fmt(n_classes)))
    if card.preset:
        facts.append(("Normalization", card.preset))
    extra = {str(k): v for k, v in card.extra.items()}
    weights_note = next((str(v) for k, v in extra.items() if k.lower() == "weights"), None)
    if card.checkpoint and weights_note is None:
        facts.append(("Weights", card.checkpoint))
    facts.extend((k, _fmt(v)) for k, v in extra.items())
    warnings = []
    if weights_note and weights_note.lower().startswith("random weights"):
        warnings.append(f"This model has {weights_note}.")
        names = next((str(v) for k, v in extra.items() if k.lower() == "class names"), None)
        if names:
            warnings.append(f"Note: {names}.")
    cols = _columns(card.summary)
    return {
        "warnings": warnings,
        "facts": facts,
        "class_names": list(card.class_names or []),
        "summary_cols": cols,
        "summary_rows": [[_fmt(row.get(c, "")) for c in cols] for row in card.summary],
    }


def _image_view(im: ReportImage, where: str, anchor: str) -> dict[str, Any]:
    """One image's article: input picture, top predictions, maps and figures."""
    preds = sorted(
        (_coerce(p, Prediction, f"{where}.predictions") for p in im.predictions),
        key=lambda p: -float(p.prob),
    )[:TOP_K]
    input_view = None
    if im.image is not None:
        try:
            input_view = _embed(
                im.image,
                f"input image {im.name}",
                f"{where}.image",
                max_side=INPUT_MAX_SIDE if isinstance(im.image, str | os.PathLike) else None,
            )
        except DataError as err:
            logger.warning("the input picture of %s is left out of the report: %s", im.name, err)
        if input_view is not None:
            input_view.update(caption="input", stats="")
    return {
        "id": anchor,
        "name": im.name,
        "notes": im.notes,
        "input": input_view,
        "predictions": [
            {
                "class_name": p.class_name,
                "index": p.index,
                "prob": float(p.prob),
                "pct": f"{float(p.prob) * 100:.1f}",
            }
            for p in preds
        ],
        "maps": [
            _picture_view(_coerce(m, MapEntry, f"{where}.maps[{j}]"), f"{where}.maps[{j}]")
            for j, m in enumerate(im.maps)
        ],
        "figures": [
            _picture_view(_coerce(f, Picture, f"{where}.figures[{j}]"), f"{where}.figures[{j}]")
            for j, f in enumerate(im.figures)
        ],
        "task": _task_view(im.task, f"{where}.task") if im.task is not None else None,
    }


def _task_view(task: TaskTable, where: str) -> dict[str, Any]:
    """A task's table: column headings, then per row its label and one picture per column."""
    task = _coerce(task, TaskTable, where)
    rows = []
    for i, row in enumerate(task.rows):
        row = _coerce(row, TaskRow, f"{where}.rows[{i}]")
        pics = [
            _picture_view(_coerce(p, Picture, f"{where}.rows[{i}][{j}]"), f"{where}.rows[{i}][{j}]")
            for j, p in enumerate(row.pictures)
        ]
        rows.append({"label": row.label, "pictures": pics})
    heading = {"detection": "Detections", "segmentation": "Regions", "multilabel": "Labels"}
    return {"heading": heading.get(task.kind, task.kind), "columns": task.columns, "rows": rows}


def _prototype_views(prototypes: Sequence[Prototype]) -> list[dict[str, Any]]:
    """The class prototype pictures with their captions."""
    views = []
    for j, p in enumerate(prototypes):
        p = _coerce(p, Prototype, f"prototypes[{j}]")
        v = _embed(p.image, p.describe(), f"prototypes[{j}]")
        label = p.class_name or (f"class {p.index}" if p.index is not None else "")
        if p.class_name and p.index is not None:
            label = f"{p.class_name} ({p.index})"
        v["caption"] = p.caption or label
        v["stats"] = label if p.caption else ""
        views.append(v)
    return views


def _metrics_view(metrics: MetricsTable) -> dict[str, Any]:
    """The method x metric table (best per metric marked) and its figures."""
    best = metrics.best()
    return {
        "notes": metrics.notes,
        "level": f"{metrics.ci_level * 100:g} %",
        "metrics": [
            {
                "name": m,
                "dir": {True: "↑ higher is better", False: "↓ lower is better"}.get(
                    metrics.higher_is_better.get(m), ""
                ),
            }
            for m in metrics.metrics
        ],
        "rows": [
            {
                "method": method,
                "cells": [
                    {"text": _metric(values.get(m)), "best": best.get(m) == method}
                    for m in metrics.metrics
                ],
            }
            for method, values in metrics.rows.items()
        ],
        "figures": [
            _picture_view(_coerce(f, Picture, f"metrics.figures[{j}]"), f"metrics.figures[{j}]")
            for j, f in enumerate(metrics.figures)
        ],
    }


def _section_view(s: Section, where: str, anchor: str) -> dict[str, Any]:
    """A free section: paragraphs, pictures and a table."""
    cols = _columns(s.table)
    return {
        "id": anchor,
        "title": s.title,
        "paragraphs": [p.strip() for p in re.split(r"\n\s*\n", s.text) if p.strip()],
        "pictures": [
            _picture_view(_coerce(p, Picture, f"{where}.pictures[{k}]"), f"{where}.pictures[{k}]")
            for k, p in enumerate(s.pictures)
        ],
        "cols": cols,
        "rows": [[_fmt(row.get(c, "")) for c in cols] for row in s.table],
    }


def render_report(
    *,
    title: str = "cnnlens report",
    model_card: ModelCard | Mapping[str, Any],
    images: Sequence[ReportImage],
    prototypes: Sequence[Prototype] | None = None,
    metrics: MetricsTable | None = None,
    sanity: Sequence[SanityVerdict] | None = None,
    extra_sections: Sequence[Section] | None = None,
    skipped: Sequence[Skipped | str] | None = None,
) -> str:
    """Render the report to an HTML string; see :func:`write_report` for the arguments."""
    import cnnlens

    card = _coerce(model_card, ModelCard, "model_card")
    used: set[str] = {"main", "contents", "model"}
    toc: list[dict[str, Any]] = [{"id": "model", "title": "Model", "children": []}]

    def chapter(anchor: str, heading: str) -> list[dict[str, Any]]:
        used.add(anchor)
        toc.append({"id": anchor, "title": heading, "children": []})
        return toc[-1]["children"]

    image_views = []
    children = chapter("images", "Images") if images else []
    for i, im in enumerate(images):
        im = _coerce(im, ReportImage, f"images[{i}]")
        anchor = _slug(f"image-{im.name}", used)
        children.append({"id": anchor, "title": im.name})
        image_views.append(_image_view(im, f"images[{i}]", anchor))
    skipped_views = [s if isinstance(s, Skipped) else Skipped(str(s)) for s in (skipped or [])]
    if skipped_views:
        chapter("skipped", "Skipped inputs")
    proto_views = None
    if prototypes:
        chapter("prototypes", "Class prototypes")
        proto_views = _prototype_views(prototypes)
    sanity_views = [_coerce(s, SanityVerdict, f"sanity[{j}]") for j, s in enumerate(sanity or [])]
    if metrics is not None or sanity_views:
        chapter("evaluation", "Evaluation")
    metrics_view = None
    if metrics is not None:
        metrics_view = _metrics_view(_coerce(metrics, MetricsTable, "metrics"))
    section_views = []
    for j, s in enumerate(extra_sections or []):
        s = _coerce(s, Section, f"extra_sections[{j}]")
        anchor = _slug(s.title, used)
        toc.append({"id": anchor, "title": s.title, "children": []})
        section_views.append(_section_view(s, f"extra_sections[{j}]", anchor))
    return _template().render(
        title=title,
        version=getattr(cnnlens, "__version__", ""),
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        toc=toc,
        card=_card_view(card),
        images=image_views,
        skipped=skipped_views,
        prototypes=proto_views,
        metrics=metrics_view,
        sanity=sanity_views,
        sections=section_views,
        legend=_legend(images),
    )


def _legend(images: Sequence[Any]) -> dict[str, Any] | None:
    """Colour bars and the statistics' meanings when the report shows maps."""
    from cnnlens.report.legend import map_legend

    maps = [m for im in images for m in (getattr(im, "maps", None) or [])]
    if not maps:
        return None
    return map_legend(k for m in maps for k in (getattr(m, "stats", None) or {}))


_ENV: jinja2.Environment | None = None


def _template() -> jinja2.Template:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    return _ENV.get_template("report.html")


def write_report(
    path: str | os.PathLike[str],
    *,
    title: str = "cnnlens report",
    model_card: ModelCard | Mapping[str, Any],
    images: Sequence[ReportImage],
    prototypes: Sequence[Prototype] | None = None,
    metrics: MetricsTable | None = None,
    sanity: Sequence[SanityVerdict] | None = None,
    extra_sections: Sequence[Section] | None = None,
    skipped: Sequence[Skipped | str] | None = None,
) -> Path:
    """Write one self-contained HTML report (atomically) and return its path.

    The page holds a table of contents, the model card (with the layer summary table), one
    article per image (input, top-5 predictions, maps side by side in a responsive grid,
    wider figures), and — only when given — skipped inputs, class prototypes, evaluation
    metrics (method x metric, mean ± CI, best per metric emphasized, figures), sanity
    verdicts and extra sections. Pictures are embedded as base64 data URIs; there is no
    network access, no external CSS/JS/font, and no script. All text is HTML-escaped.

    Args:
        path: the HTML file to write (parent folders are created).
        title: page title and main heading.
        model_card: a :class:`ModelCard` (or a dict of its fields).
        images: one :class:`ReportImage` per input image.
        prototypes: class prototype pictures.
        metrics: evaluation results.
        sanity: sanity check verdicts.
        extra_sections: further free sections.
        skipped: inputs that were not explained (file names or :class:`Skipped`).

    Returns:
        The path written.

    Raises:
        InputError: a picture that is not an image, or a wrongly typed argument.
        DataError: a picture path that cannot be read or decoded.
    """
    from cnnlens.viz.figures import atomic_write

    html = render_report(
        title=title,
        model_card=model_card,
        images=images,
        prototypes=prototypes,
        metrics=metrics,
        sanity=sanity,
        extra_sections=extra_sections,
        skipped=skipped,
    )
    return atomic_write(path, html.encode("utf-8"))
