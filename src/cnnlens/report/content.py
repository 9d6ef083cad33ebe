"""What a report shows: small dataclasses the explain / demo / assess commands fill.

A picture (:class:`Picture` and its kinds :class:`MapEntry`, :class:`Prototype`) holds PNG
bytes, a PIL image, a matplotlib Figure or a path to an image file; it is embedded in the
HTML as a base64 data URI when the report is written. Every picture gets alt text: its
``alt``, else its caption, else a description built from its fields.

Example:
    >>> card = ModelCard(arch="resnet18", parameters=11_689_512, dataset="imagenet")
    >>> img = ReportImage(
    ...     name="cat.jpg",
    ...     image=pil_image,
    ...     predictions=[Prediction("tabby", 281, 0.62), Prediction("tiger cat", 282, 0.21)],
    ...     maps=[MapEntry(png_bytes, method="gradcam", class_name="tabby", layer="layer4")],
    ... )  # doctest: +SKIP
    >>> cnnlens.report.write_report("run/report.html", model_card=card, images=[img])
    ... # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ImageSource = Any
"""bytes (PNG/JPEG/GIF/WebP), a PIL image, a matplotlib Figure, or a path (str/PathLike)."""


@dataclass
class Picture:
    """A picture with a caption.

    Attributes:
        image: PNG/JPEG bytes, a PIL image, a matplotlib Figure or a path to an image file.
        caption: text shown under the picture.
        alt: text alternative for screen readers (default: the caption).
    """

    image: ImageSource
    caption: str = ""
    alt: str | None = None

    def describe(self) -> str:
        """Alt text: ``alt``, else the caption, else a generic description."""
        return self.alt or self.caption or "figure"


@dataclass
class MapEntry(Picture):
    """One explanation map of one image (already rendered, e.g. an overlay PNG).

    Attributes:
        method: registry name of the method (``"gradcam"``).
        target: explained class index.
        class_name: explained class name.
        layer: dotted layer name the map was computed at (None for pixel methods).
        stats: numbers about the map (e.g. ``{"max": 1.0, "mean": 0.31}``), shown small.
    """

    method: str | None = None
    target: int | None = None
    class_name: str | None = None
    layer: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """Caption, else ``"gradcam · tabby (281) · layer4"`` from the fields."""
        if self.caption:
            return self.caption
        parts = [self.method or "map"]
        if self.class_name is not None or self.target is not None:
            cls = self.class_name if self.class_name is not None else f"class {self.target}"
            if self.class_name is not None and self.target is not None:
                cls = f"{cls} ({self.target})"
            parts.append(cls)
        if self.layer:
            parts.append(self.layer)
        return " · ".join(parts)

    def describe(self) -> str:
        if self.alt:
            return self.alt
        return f"{self.label()} explanation map"


@dataclass
class Prototype(Picture):
    """A class prototype (activation maximization image) of one class.

    Attributes:
        class_name: the class the picture maximizes.
        index: its class index.
    """

    class_name: str = ""
    index: int | None = None

    def describe(self) -> str:
        return self.alt or f"prototype of class {self.class_name or self.index}"


@dataclass
class Prediction:
    """One of the model's top predictions for an image (``prob`` in [0, 1])."""

    class_name: str
    index: int
    prob: float


@dataclass
class TaskRow:
    """One row of a :class:`TaskTable`: a label (a detection, a class region, a method) and
    its pictures, one per column."""

    label: str
    pictures: list[Picture] = field(default_factory=list)


@dataclass
class TaskTable:
    """A task's view of one image: a table of pictures.

    Detection: a row per detection, columns "detection" (its box, label and score on the
    input) and one per method (its map, the box drawn); segmentation: a row per explained
    class, columns "predicted region" (outlined on the input) and one per method (the map,
    the region outlined); multi-label: a row per method, a column per label.

    Attributes:
        kind: ``"detection"``, ``"segmentation"`` or ``"multilabel"``.
        columns: the column headings.
        rows: the rows, each with one picture per column.
    """

    kind: str
    columns: list[str]
    rows: list[TaskRow] = field(default_factory=list)


@dataclass
class ReportImage:
    """Everything the report shows about one input image.

    Attributes:
        name: the image's name (file name), used as its heading.
        image: the input as displayed (un-normalized), or None.
        predictions: top predictions; the report shows the 5 most probable.
        maps: explanation maps, shown side by side in a responsive grid.
        figures: wider pictures (e.g. a methods x layers grid), shown full width.
        notes: a short free text shown under the heading.
        task: the task's table of pictures (detections, regions, labels), or None.
    """

    name: str
    image: ImageSource | None = None
    predictions: list[Prediction] = field(default_factory=list)
    maps: list[MapEntry] = field(default_factory=list)
    figures: list[Picture] = field(default_factory=list)
    notes: str = ""
    task: TaskTable | None = None


@dataclass
class ModelCard:
    """What the report says about the model.

    Attributes:
        arch: architecture name (``"resnet18"``, ``"simplecnn"``).
        parameters: number of parameters.
        trainable_parameters: number of trainable parameters.
        dataset: dataset it was trained on.
        accuracy: test accuracy as a fraction in [0, 1] (values above 1 are read as percent).
        input_size: ``(H, W)`` the model expects.
        in_channels: input channels.
        num_classes: number of classes.
        class_names: class names (the report lists them in a collapsible block).
        preset: normalization preset name.
        checkpoint: path or name the weights came from.
        summary: the layer table, a list of row dicts (e.g. ``ModelSummary.to_dict()["rows"]``);
            columns are the keys in order of first appearance.
        extra: further facts shown as a name/value list.
    """

    arch: str
    parameters: int | None = None
    trainable_parameters: int | None = None
    dataset: str | None = None
    accuracy: float | None = None
    input_size: tuple[int, int] | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    preset: str | None = None
    checkpoint: str | None = None
    summary: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricValue:
    """A metric's mean over images with the half-width of its confidence interval.

    Rendered as ``0.712 ± 0.031``; ``ci`` None renders the mean alone.
    """

    mean: float
    ci: float | None = None
    n: int | None = None


@dataclass
class MetricsTable:
    """Evaluation results: methods x metrics, plus figures.

    Attributes:
        metrics: metric names, the table's columns in this order.
        rows: method name -> metric name -> :class:`MetricValue` (a missing entry shows "—").
        higher_is_better: metric name -> direction; the best mean per metric is emphasized.
        ci_level: confidence level of the intervals (0.95).
        figures: pictures such as deletion/insertion curves.
        notes: a short explanation shown above the table.
    """

    metrics: list[str]
    rows: dict[str, dict[str, MetricValue]]
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    ci_level: float = 0.95
    figures: list[Picture] = field(default_factory=list)
    notes: str = ""

    def best(self) -> dict[str, str]:
        """Metric name -> the method with the best mean (for metrics with a known direction)."""
        out: dict[str, str] = {}
        for metric, higher in self.higher_is_better.items():
            scored = [(r[metric].mean, m) for m, r in self.rows.items() if metric in r]
            if scored:
                out[metric] = (max if higher else min)(scored)[1]
        return out


@dataclass
class SanityVerdict:
    """The outcome of one sanity check (e.g. model parameter randomization) for one method.

    Attributes:
        method: the explanation method checked.
        check: the check's name (``"model randomization"``).
        passed: True when the method's maps depend on what they should, False when they
            do not, None when the evidence is inconclusive.
        detail: one sentence with the evidence (e.g. the similarity measured).
    """

    method: str
    check: str
    passed: bool | None
    detail: str = ""


@dataclass
class Skipped:
    """An input that was not explained, with the reason (e.g. an image that did not decode)."""

    file: str
    reason: str = ""


@dataclass
class Section:
    """A free extra section: a title, paragraphs of text, pictures and an optional table.

    Text is escaped (no HTML); paragraphs are separated by blank lines. ``table`` is a list
    of row dicts like :attr:`ModelCard.summary`.
    """

    title: str
    text: str = ""
    pictures: list[Picture] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)
