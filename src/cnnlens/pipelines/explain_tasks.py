"""Explain a detector, a segmenter or a multi-label classifier for image files: PNGs,
``results.json`` and ``report.html`` (the library side of ``cnnlens explain --task``).

    run_explain_task(["street.jpg"], task="detection",
                     model="fasterrcnn_mobilenet_v3_large_320_fpn", weights="DEFAULT",
                     out="runs/street")

The steps: :func:`prepare_task_model` (build or load the model, its class names and how an
image becomes its input), then per image the task's explainer, each giving the rows of the
image's task table (:class:`~cnnlens.report.TaskTable`):

* ``detection`` (:func:`explain_detections`): every detection scoring at least
  ``score_threshold`` (the model's deployed post-processing), each explained with its own
  :class:`~cnnlens.targets.Detection` (its box and label; the post-processing opened during
  the explanation, so the score does not depend on thresholds or NMS); a row per detection:
  the box, label and score on the input, then one map per method with the box drawn;
* ``segmentation`` (:func:`explain_regions`): each class asked for (``classes``, by name or
  index; default the predicted classes but the background) explained over its predicted
  region (:class:`~cnnlens.targets.SegmentationRegion`); a row per class: the region outlined
  on the input, then one map per method with the region outlined;
* ``multilabel`` (:func:`explain_labels`): every label with sigmoid probability at least
  ``score_threshold``, one map each; a row per method, a column per label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

import cnnlens
from cnnlens.core.capture import frozen
from cnnlens.core.checks import check_choice, check_float, check_int
from cnnlens.data import load_image
from cnnlens.data.objects import OBJECT_TASK_CLASSES
from cnnlens.data.presets import get_preset
from cnnlens.errors import ImageError, InputError
from cnnlens.models.tasks import create_task_model
from cnnlens.pipelines.explain import (
    ExplainRun,
    collect_images,
    expand_methods,
    prepare_model,
    unique_stems,
)
from cnnlens.pipelines.options import (
    check_out_dir,
    parse_class_list,
    parse_method_options,
    resolve_device,
)
from cnnlens.pipelines.outdir import RunFolder
from cnnlens.targets import Detection, SegmentationRegion, select_output
from cnnlens.viz import atomic_write, show_input, slug, to_png_bytes
from cnnlens.viz.overlay import overlay
from cnnlens.viz.tasks import PALETTE, detection_views, region_views

logger = logging.getLogger(__name__)

__all__ = [
    "TASKS",
    "TaskModel",
    "explain_detections",
    "explain_labels",
    "explain_regions",
    "prepare_task_model",
    "run_explain_task",
]

TASKS = ("detection", "segmentation", "multilabel")
_BACKGROUND = {"background", "__background__"}


@dataclass
class TaskModel:
    """The model of a task run and what the run needs to know about it.

    Attributes:
        net: the model, in eval mode on ``device``.
        task: one of :data:`TASKS`.
        arch: its name.
        device: where it runs.
        names: a name per class.
        preset: the normalization of its input (for display), or None (images in [0, 1]).
        to_input: a PIL image -> the model's input (C, H, W).
    """

    net: nn.Module
    task: str
    arch: str
    device: torch.device
    names: list[str]
    preset: Any
    to_input: Callable[[Image.Image], Tensor]


def _category_names(name: str, weights: str | None, count: int | None) -> list[str] | None:
    """torchvision's category names of ``name``'s weights (named, or the default ones when
    the class count is theirs), else None."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(name)
        entry = enum[weights] if weights is not None else enum.DEFAULT
    except (KeyError, ValueError, AttributeError):
        return None
    cats = list(entry.meta.get("categories") or [])
    return cats if cats and (weights is not None or count in (None, len(cats))) else None


def _to_tensor(size: int | None, preset: Any) -> Callable[[Image.Image], Tensor]:
    """PIL -> float (3, H, W) in [0, 1] (resized so the shorter side is ``size``),
    normalized with ``preset`` when given."""

    def convert(img: Image.Image) -> Tensor:
        if size is not None:
            k = size / min(img.size)
            img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))))
        x = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
        x = x.view(img.height, img.width, 3).permute(2, 0, 1).float() / 255.0
        return preset.normalize(x) if preset is not None else x

    return convert


def prepare_task_model(
    model: str,
    task: str,
    *,
    weights: str | None = None,
    device: str = "cpu",
    size: int | None = None,
    num_classes: int | None = None,
) -> TaskModel:
    """Build or load the model of a task run.

    Detection and segmentation: a name of :data:`~cnnlens.models.tasks.TASK_MODELS` (random
    weights unless ``weights``); multi-label: any classifier ``cnnlens explain`` loads (a
    name or a checkpoint), read with sigmoid probabilities.
    """
    check_choice("--task", task, TASKS)
    dev = resolve_device(device)
    if task == "multilabel":
        prep = prepare_model(model, weights, device)
        return TaskModel(
            prep.net, task, prep.info.arch, dev, prep.names, prep.info.preset,
            prep.info.preprocessing(),
        )  # fmt: skip
    net = create_task_model(model, task, num_classes=num_classes, size=size, weights=weights)
    net = net.to(dev)
    if model.startswith("shapes-"):
        names = list(OBJECT_TASK_CLASSES)
        preset = None
    else:
        names = _category_names(model, weights, num_classes) or []
        preset = get_preset("imagenet") if task == "segmentation" else None
    if task == "segmentation":
        count = int(next(m for m in reversed(list(net.modules())) if hasattr(m, "out_channels"))
                    .out_channels)  # fmt: skip
    else:
        count = len(names) or int(num_classes or 91)
    if len(names) != count:
        names = [str(i) for i in range(count)]
    return TaskModel(net, task, model, dev, names, preset, _to_tensor(size, preset))


@dataclass
class _Ctx:
    """What every explainer needs: the model, the methods and their options, the layer, the
    output folder, the image's stem and the PNG size."""

    tm: TaskModel
    methods: list[str]
    options: dict[str, dict[str, Any]]
    layer: str | None
    out: Path
    stem: str
    png_side: int

    def explain(self, x: Tensor, method: str, target: Any) -> Tensor:
        from cnnlens.core.registry import get_method

        layer = self.layer if get_method(method).uses_layer else None
        exp = cnnlens.explain(
            self.tm.net, x, method, target=target, layer=layer, **self.options[method]
        )
        return exp.maps[0]

    def save(self, pic: Image.Image, *parts: str) -> dict[str, str]:
        rel = f"maps/{'_'.join([self.stem, *(slug(p) for p in parts)])}.png"
        atomic_write(self.out / rel, to_png_bytes(pic))
        return {"png": rel}


def explain_detections(
    ctx: _Ctx, x: Tensor, score_threshold: float, max_detections: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Each detection above ``score_threshold`` (at most ``max_detections``), explained by
    every method: (table rows, predictions, a note)."""
    with frozen(ctx.tm.net), torch.no_grad():
        det = ctx.tm.net(x)[0]
    keep = torch.nonzero(det["scores"] >= score_threshold).flatten()[:max_detections].tolist()
    rows, preds = [], []
    for n, i in enumerate(keep):
        box = [round(float(v), 2) for v in det["boxes"][i].tolist()]
        label, score = int(det["labels"][i]), float(det["scores"][i])
        name = ctx.tm.names[label] if 0 <= label < len(ctx.tm.names) else str(label)
        caption = f"{name} {score:.2f}"
        color = PALETTE[n % len(PALETTE)]
        target = Detection(box=box, label=label)
        pics = []
        for method in ctx.methods:
            m = ctx.explain(x, method, target)
            shown, on_map = detection_views(
                x[0].cpu(), m.cpu(), box, caption, min_side=ctx.png_side, color=color
            )
            if not pics:
                pics.append({**ctx.save(shown, f"det{n}"), "caption": caption})
            pics.append({**ctx.save(on_map, f"det{n}", method), "caption": f"{method} · {caption}"})
        rows.append({"label": f"{caption} · box {box}", "pictures": pics})
        preds.append({"class": name, "index": label, "prob": score, "box": box})
    note = "" if keep else _no_detection_note(det["scores"], score_threshold)
    return rows, preds, note


def _no_detection_note(scores: Tensor, threshold: float) -> str:
    best = f" (best {float(scores.max()):.3f})" if scores.numel() else ""
    return f"no detection scores at least --score-threshold {threshold:g}{best}"


def explain_regions(
    ctx: _Ctx, x: Tensor, classes: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Each class of ``classes`` (empty: the predicted ones but the background) explained
    over its predicted region by every method: (table rows, predictions, a note)."""
    with frozen(ctx.tm.net), torch.no_grad():
        logits = select_output(ctx.tm.net(x))
    pred = logits.argmax(dim=1)[0]
    names = ctx.tm.names
    share = torch.bincount(pred.flatten().cpu(), minlength=len(names)).float() / pred.numel()
    if not classes:
        order = torch.argsort(share, descending=True).tolist()
        classes = [c for c in order if share[c] > 0 and names[c].lower() not in _BACKGROUND][:3]
    rows, preds, missing = [], [], []
    for c in classes:
        region = pred == c
        if not bool(region.any()):
            missing.append(names[c])
            continue
        caption = f"{names[c]} ({float(share[c]) * 100:.1f} % of the image)"
        pics = []
        for method in ctx.methods:
            m = ctx.explain(x, method, SegmentationRegion(c, mask=region))
            shown, on_map = region_views(
                x[0].cpu(), m.cpu(), region.cpu(), preset=ctx.tm.preset, min_side=ctx.png_side
            )
            if not pics:
                pics.append({**ctx.save(shown, f"region{c}"), "caption": caption})
            pics.append({**ctx.save(on_map, f"region{c}", method), "caption": method})
        rows.append({"label": caption, "pictures": pics})
        preds.append({"class": names[c], "index": c, "prob": float(share[c])})
    note = f"not predicted anywhere in the image: {', '.join(missing)}" if missing else ""
    if not classes:
        note = "only the background is predicted; give --class to explain a class"
    return rows, preds, note


def explain_labels(
    ctx: _Ctx, x: Tensor, threshold: float, max_labels: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str], str]:
    """Every label with sigmoid probability >= ``threshold`` (the ``max_labels`` most
    probable), one map each per method: (table rows, predictions, column headings, a note)."""
    with frozen(ctx.tm.net), torch.no_grad():
        probs = torch.sigmoid(select_output(ctx.tm.net(x)).float())[0].cpu()
    labels = torch.nonzero(probs >= threshold).flatten()
    labels = labels[torch.argsort(probs[labels], descending=True)][:max_labels].tolist()
    names = ctx.tm.names
    columns = [f"{names[c]} {float(probs[c]):.2f}" for c in labels]
    preds = [{"class": names[c], "index": c, "prob": float(probs[c])} for c in labels]
    if not labels:
        best = int(probs.argmax())
        note = f"no label reaches --score-threshold {threshold:g} (best {names[best]} "
        return [], preds, columns, note + f"{float(probs[best]):.3f})"
    target = torch.tensor([labels], device=x.device)
    rows = []
    base = show_input(x[0].cpu(), preset=ctx.tm.preset, min_side=ctx.png_side)
    for method in ctx.methods:
        maps = ctx.explain(x, method, target)  # (K, H, W)
        pics = [
            {**ctx.save(overlay(base, maps[k].cpu()), method, names[c]), "caption": col}
            for k, (c, col) in enumerate(zip(labels, columns))
        ]
        rows.append({"label": method, "pictures": pics})
    return rows, preds, columns, ""


def _check_request(
    inputs: Sequence[str | Path], out: Path, score_threshold: float, max_detections: int
) -> None:
    check_out_dir(out)
    check_float("--score-threshold", score_threshold, minimum=0.0, maximum=1.0)
    check_int("--max-detections", max_detections)
    if not inputs:
        raise InputError("give at least one image file or folder to explain")


def run_explain_task(
    inputs: Sequence[str | Path],
    *,
    task: str,
    model: str,
    out: str | Path,
    weights: str | None = None,
    methods: Sequence[str] = ("gradcam",),
    options: Sequence[str] = (),
    classes: Sequence[str] = (),
    score_threshold: float = 0.5,
    max_detections: int = 5,
    layer: str | None = None,
    size: int | None = None,
    num_classes: int | None = None,
    device: str = "cpu",
    title: str | None = None,
    png_side: int = 224,
    overwrite: bool = False,
) -> ExplainRun:
    """Explain a detector's detections, a segmenter's class regions or a multi-label
    classifier's labels for image files (see the module docstring).

    Args:
        inputs: image files and folders.
        task: ``detection``, ``segmentation`` or ``multilabel``.
        model: a detection/segmentation model name (:data:`~cnnlens.models.tasks.TASK_MODELS`)
            or, for multilabel, any classifier name or checkpoint.
        out: the output folder (PNGs, results.json, report.html).
        weights: a weights file or torchvision weights name (random weights without).
        methods, options: as for ``cnnlens explain``.
        classes: segmentation: class names or indices to explain (default the predicted ones).
        score_threshold: detection: the least detection score; multilabel: the least label
            probability.
        max_detections: explain at most this many detections (labels) per image.
        layer: the layer for CAM methods (default the target's automatic layer).
        size: resize each image so its shorter side has ``size`` pixels (a detector's
            ``min_size``/``max_size``); default as it is (multilabel: the model's input).
        num_classes: classes of a random-weight model (default torchvision's).

    Raises:
        CnnlensError: a bad option, an unknown model or class, no image explained.
    """
    t0 = time.perf_counter()
    out = Path(out)
    _check_request(inputs, out, score_threshold, max_detections)
    tm = prepare_task_model(model, task, weights=weights, device=device, size=size,
                            num_classes=num_classes)  # fmt: skip
    names = expand_methods(methods)
    class_idx = parse_class_list(classes, num_classes=len(tm.names), class_names=tm.names,
                                 option="--class")  # fmt: skip
    if class_idx and task != "segmentation":
        raise InputError(f"--class is for --task segmentation, not {task}")
    files, skipped = collect_images(inputs)
    if not files:
        raise ImageError(f"no image files to explain in {', '.join(map(str, inputs))}")
    identity = {"command": "explain", "model": str(model), "weights": weights, "task": task}
    folder = RunFolder(out, identity, subdirs=("inputs", "maps"), overwrite=overwrite)
    ctx = _Ctx(tm, names, parse_method_options(options, names), layer, folder.path, "", png_side)
    try:
        folder.begin()
        images = _explain_files(ctx, files, skipped, class_idx, score_threshold, max_detections)
        _write(folder, ctx, images, skipped, title)
    except BaseException:
        folder.abandon()
        raise
    return ExplainRun(
        out=out, results=out / "results.json", report=out / "report.html",
        explained=[im["file"] for im in images], skipped=skipped, methods=names,
        maps=sum(len(r["pictures"]) for im in images for r in im["task"]["rows"]),
        seconds=time.perf_counter() - t0,
    )  # fmt: skip


def _explain_files(
    ctx: _Ctx,
    files: list[Path],
    skipped: list[dict[str, str]],
    classes: list[int],
    threshold: float,
    max_detections: int,
) -> list[dict[str, Any]]:
    """The results.json entry of each image (its PNGs written), skipping unreadable ones."""
    images = []
    columns = {"detection": ["detection"], "segmentation": ["predicted region"]}
    for f, stem in zip(files, unique_stems(files)):
        try:
            x = ctx.tm.to_input(load_image(f, mode="RGB"))[None].to(ctx.tm.device)
        except ImageError as err:
            logger.warning("skipped %s: %s", f, err)
            skipped.append({"file": str(f), "reason": str(err)})
            continue
        ctx.stem = stem
        head = columns.get(ctx.tm.task, []) + list(ctx.methods)
        if ctx.tm.task == "detection":
            rows, preds, note = explain_detections(ctx, x, threshold, max_detections)
        elif ctx.tm.task == "segmentation":
            rows, preds, note = explain_regions(ctx, x, classes)
        else:
            rows, preds, head, note = explain_labels(ctx, x, threshold, max_detections)
        rel = f"inputs/{stem}.png"
        shown = show_input(x[0].cpu(), preset=ctx.tm.preset, min_side=ctx.png_side)
        atomic_write(ctx.out / rel, to_png_bytes(shown))
        images.append({
            "file": str(f), "input_png": rel, "predictions": preds, "maps": [], "notes": note,
            "task": {"kind": ctx.tm.task, "columns": head, "rows": rows},
        })  # fmt: skip
    if not images:
        raise ImageError(f"none of the {len(skipped)} inputs could be explained")
    return images


def _write(
    folder: RunFolder,
    ctx: _Ctx,
    images: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    title: str | None,
) -> None:
    """results.json and report.html; the PNGs of earlier runs no longer listed removed."""
    from cnnlens.report import build_report, write_results

    net = ctx.tm.net
    data = {
        "title": title or f"cnnlens explain --task {ctx.tm.task}: {ctx.tm.arch}",
        "model": {
            "arch": ctx.tm.arch,
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "num_classes": len(ctx.tm.names),
            "class_names": ctx.tm.names,
            "extra": {"Task": ctx.tm.task, "Device": str(ctx.tm.device)},
        },
        "images": images,
        "skipped": skipped,
        "methods": ctx.methods,
    }
    write_results(folder.path, data)
    build_report(folder.path)
    keep = [im["input_png"] for im in images]
    keep += [p["png"] for im in images for r in im["task"]["rows"] for p in r["pictures"]]
    folder.finish(keep)
