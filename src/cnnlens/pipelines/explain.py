"""Explain a model's predictions for image files: PNGs, ``results.json`` and ``report.html``
(the library side of ``cnnlens explain``).

    run_explain(["digits/"], model="runs/mnist/model.safetensors",
                methods=["gradcam", "integrated_gradients"], out="runs/explain")

The steps, each a function: :func:`collect_images` (files from files and folders),
:func:`prepare_model` (load, probe the output, class names), :func:`resolve_targets` (the
classes asked for), then per batch :func:`load_batch`, :func:`explain_batch` (every method,
leaving out those that do not apply) and :func:`image_entry` (the PNGs and numbers of one
image); last :func:`model_card`, ``results.json`` and the report.

Images are preprocessed the way the model expects (its input size, channels and
normalization preset; the resize and crop the model's weights declare) and processed in
batches. Files that cannot be read are skipped with a warning and listed in results.json;
the run fails only when nothing could be explained.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import cnnlens
from cnnlens.core.capture import frozen
from cnnlens.core.checks import check_int
from cnnlens.core.layers import resolve_layer
from cnnlens.core.progress import progress_bar
from cnnlens.core.registry import get_method, list_methods
from cnnlens.data import IMAGE_EXTENSIONS, conversion, load_image
from cnnlens.errors import CnnlensError, ImageError, InputError, ModelError, TargetError
from cnnlens.metrics.describe import map_stats, probabilities, scalar_extras, top_predictions
from cnnlens.pipelines.options import (
    check_out_dir,
    class_names_for,
    load_model,
    parse_class_list,
    parse_method_options,
    resolve_device,
    split_values,
)
from cnnlens.pipelines.outdir import RunFolder
from cnnlens.summary import format_shape, summary
from cnnlens.viz import atomic_write, render_map, show_input, signed_view, slug, to_png_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "ExplainRun",
    "Prepared",
    "collect_images",
    "expand_methods",
    "explain_batch",
    "image_entry",
    "load_batch",
    "model_card",
    "prepare_model",
    "resolve_targets",
    "run_explain",
    "unique_stems",
]

_SUMMARY_MAX_ROWS = 400


@dataclass
class ExplainRun:
    """What :func:`run_explain` did.

    Attributes:
        out: the output folder.
        results: its ``results.json``.
        report: its ``report.html``.
        explained: the input files explained.
        skipped: ``{"file", "reason"}`` for each input that could not be read.
        methods: the methods run.
        methods_skipped: method -> why it does not apply to the model.
        maps: number of map PNGs written.
        seconds: wall time.
    """

    out: Path
    results: Path
    report: Path
    explained: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    methods_skipped: dict[str, str] = field(default_factory=dict)
    maps: int = 0
    seconds: float = 0.0


NOT_AN_IMAGE = "not an image file (expected JPEG, PNG, BMP, TIFF, WebP or GIF)"


def first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of ``text`` on one line (a terminal-sized reason), at most ``limit``
    characters; the text itself when it is short and on one line."""
    line = " ".join(text.split())
    cut = re.search(r"\.(\s|$)", line)
    short = line[: cut.start() + 1] if cut else line
    return short if len(short) <= limit else short[: limit - 1].rstrip() + "…"


def _opens_as_image(path: Path) -> bool:
    """Whether Pillow reads an image header from ``path`` (a named file with an odd suffix)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def collect_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files to explain from files and folders (folders: image files by extension, recursively,
    sorted), and the inputs that do not exist.

    Returns:
        ``(files, missing)`` with ``missing`` as ``{"file", "reason"}`` entries (inputs that do
        not exist, and named files that are not images, which the caller reports).
    """
    files: list[Path] = []
    missing: list[dict[str, str]] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            files.append(p)

    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                logger.warning(
                    "folder %s holds no image files (%s)", p, ", ".join(IMAGE_EXTENSIONS)
                )
            for f in found:
                add(f)
        elif p.is_file() and (p.suffix.lower() in IMAGE_EXTENSIONS or _opens_as_image(p)):
            add(p)
        elif p.is_file():
            missing.append({"file": str(item), "reason": NOT_AN_IMAGE})
        else:
            logger.warning("skipped %s: no such file or folder", p)
            missing.append({"file": str(item), "reason": "no such file or folder"})
    return files, missing


def expand_methods(methods: Sequence[str]) -> list[str]:
    """Registry names from method texts (``"all"``: every registered method, family by
    family; comma lists work; default ``gradcam``), each once, in order."""
    names = split_values(methods) or ["gradcam"]
    out: list[str] = []
    for name in names:
        for n in list_methods(True) if name.lower() == "all" else [get_method(name).name]:
            if n not in out:
                out.append(n)
    return out


def unique_stems(files: Sequence[Path]) -> list[str]:
    """Unique file-name stems for the outputs of each input."""
    out: list[str] = []
    used: set[str] = set()
    for f in files:
        base = slug(f.stem)
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem)
        out.append(stem)
    return out


def _card_extras(extra: dict[str, Any]) -> dict[str, str]:
    """Checkpoint metadata as readable model-card rows (a training config as one sentence)."""
    out: dict[str, str] = {}
    for key, value in extra.items():
        if key == "training" and isinstance(value, dict):
            v = value
            parts = [f"{v['epochs']} epochs" if "epochs" in v else "", str(v.get("optimizer", ""))]
            parts += [f"lr {v['lr']:g}" if isinstance(v.get("lr"), (int, float)) else ""]
            parts += [f"batch {v['batch_size']}" if "batch_size" in v else ""]
            parts += [f"{v['schedule']} schedule" if v.get("schedule") else ""]
            if v.get("weight_decay"):
                parts.append(f"weight decay {v['weight_decay']:g}")
            parts += [f"{v['train_size']} training images" if "train_size" in v else ""]
            parts += [f"seed {v['seed']}" if "seed" in v else ""]
            out["Training"] = ", ".join(p for p in parts if p)
        else:
            out[key.replace("_", " ").capitalize()] = str(value)
    return out


def model_card(
    net: nn.Module, info: Any, model: str, num_classes: int, names: list[str], device: Any
) -> dict[str, Any]:
    """The report's model card: architecture, parameters, checkpoint metadata, the layer
    summary (its first rows)."""
    card: dict[str, Any] = {
        "arch": info.arch,
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "trainable_parameters": int(sum(p.numel() for p in net.parameters() if p.requires_grad)),
        "dataset": info.dataset,
        "accuracy": info.accuracy,
        "input_size": [int(v) for v in info.input_size],
        "in_channels": int(info.in_channels),
        "num_classes": num_classes,
        "class_names": names,
        "preset": info.preset,
        "checkpoint": info.source or model,
        "extra": {"Device": str(device), **_card_extras(info.extra or {})},
    }
    try:
        s = summary(net, (int(info.in_channels), *info.input_size))
    except CnnlensError as err:
        logger.info("no layer summary for the report: %s", err)
        return card
    card["summary"] = [
        {
            "layer": r.name,
            "type": r.type,
            "output": format_shape(r.output_shape),
            "params": int(r.params),
        }
        for r in s.rows[:_SUMMARY_MAX_ROWS]
    ]
    return card


def load_batch(
    files: Sequence[Path], info: Any, converted: dict[str, list[str]] | None = None
) -> tuple[list[int], list[Tensor], list[dict[str, str]]]:
    """The images of ``files`` as the model expects them: ``(positions read, tensors,
    {"file", "reason"} for each file that could not be read)``; the files whose pixels had to
    change to fit the model go into ``converted`` (what changed -> file names)."""
    mode = {1: "L", 3: "RGB"}.get(int(info.in_channels))
    ok, tensors, bad = [], [], []
    for i, f in enumerate(files):
        try:
            img = load_image(f, mode=mode)
            change = conversion(f, mode) if converted is not None else None
            if change is not None and converted is not None:
                converted.setdefault(change, []).append(Path(f).name)
            # sizes, crop and interpolation as the model's weights declare
            x = info.preprocessing()(img)
        except ImageError as err:
            logger.warning("skipped %s: %s", f, err)
            bad.append({"file": str(f), "reason": str(err)})
            continue
        ok.append(i)
        tensors.append(x)
    return ok, tensors, bad


@dataclass
class Prepared:
    """The model of an explain run and what the run needs to know about it.

    Attributes:
        net: the model, in eval mode on ``device``.
        info: its :class:`~cnnlens.models.ModelInfo`.
        device: where it runs.
        dtype: the floating dtype of its parameters (inputs are cast to it).
        num_classes: its number of outputs.
        names: a name per class (``"0"``, ``"1"``, ... when it has none).
        multilabel: sigmoid probabilities (a multi-label model) rather than softmax.
    """

    net: nn.Module
    info: Any
    device: torch.device
    dtype: torch.dtype
    num_classes: int
    names: list[str]
    multilabel: bool


def prepare_model(model: str, weights: str | None, device: str) -> Prepared:
    """Load ``model`` and check with one forward pass that it returns class scores (B, N).

    Raises:
        ModelError: when the model returns anything else.
    """
    dev = resolve_device(device)
    net, info = load_model(model, weights, dev)
    c, (h, w) = int(info.in_channels), tuple(int(v) for v in info.input_size)
    param = next(iter(net.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    with frozen(net), torch.no_grad():
        probe = net(torch.zeros(1, c, h, w, device=dev, dtype=dtype))
    if not isinstance(probe, Tensor) or probe.dim() != 2:
        raise ModelError(
            f"model {model!r} must return class scores (B, N) to be explained here; it returns "
            f"{tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__}"
        )
    num_classes = int(probe.shape[1])
    return Prepared(
        net=net,
        info=info,
        device=dev,
        dtype=dtype,
        num_classes=num_classes,
        names=class_names_for(info, num_classes),
        # sigmoid probabilities for multi-label models (cnnlens's multi-label dataset, or a
        # checkpoint that says so in its extra metadata), softmax otherwise
        multilabel=bool((info.extra or {}).get("multilabel")) or info.dataset == "shapes-pair",
    )


def resolve_targets(
    prep: Prepared, targets: Sequence[str], target_names: Sequence[str], topk: int | None
) -> list[int]:
    """The class indices asked for with ``targets`` or ``target_names`` (empty: each image's
    top class, or its ``topk`` classes), checked against the model's classes.

    Raises:
        TargetError: an index out of range, a name the model does not have, a bad ``topk``.
    """
    if split_values(target_names):
        target_idx = parse_class_list(
            target_names,
            num_classes=prep.num_classes,
            class_names=prep.info.class_names,
            option="--target-name",
            by_name=True,
        )
    else:
        target_idx = parse_class_list(
            targets, num_classes=prep.num_classes, option="--target", by_name=False
        )
    if topk is not None and (isinstance(topk, bool) or not 1 <= topk <= prep.num_classes):
        raise TargetError(
            f"--topk must be between 1 and {prep.num_classes} (the model's classes), got {topk}"
        )
    return target_idx


@dataclass
class _Methods:
    """The methods of a run: those still active, those left out and why, seconds spent."""

    names: list[str]
    options: dict[str, dict[str, Any]]
    layers: list[str]
    active: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.active = list(self.names)
        self.seconds = dict.fromkeys(self.names, 0.0)


def explain_batch(
    prep: Prepared,
    x: Tensor,
    target: int | Tensor | None,
    topk: int | None,
    methods: _Methods,
    bar: Any,
) -> dict[str, Any]:
    """Every active method on the batch ``x``: method -> Explanation.

    With several methods, one that cannot work on this model (CAM without a GAP head, an
    occlusion window larger than the image) is left out (``methods.skipped``); an error in
    options the user gave is the user's to fix and is raised.

    Raises:
        ModelError: when no method is left.
    """
    exps: dict[str, Any] = {}
    for name in list(methods.active):
        layer: Any = None
        if get_method(name).uses_layer and methods.layers:
            layer = methods.layers[0] if len(methods.layers) == 1 else methods.layers
        bar.describe(f"explaining: {name}")
        t0 = time.perf_counter()
        try:
            exps[name] = cnnlens.explain(
                prep.net,
                x,
                method=name,
                target=target,
                layer=layer,
                topk=topk,
                **methods.options[name],
            )
        except (ModelError, InputError) as err:
            if len(methods.names) == 1 or methods.options[name]:
                raise
            short = first_sentence(str(err))
            more = "" if short == str(err) else " (the full reason is in results.json)"
            logger.warning("method %s skipped: %s%s", name, short, more)
            methods.skipped[name] = str(err)
            methods.active.remove(name)
        methods.seconds[name] += time.perf_counter() - t0
    if not methods.active:
        raise ModelError(
            "none of the methods applies to this model: "
            + "; ".join(f"{m}: {r}" for m, r in methods.skipped.items())
        )
    return exps


def _map_entries(
    exp: Any, name: str, j: int, x: Tensor, prep: Prepared, stem: str, out: Path, png_side: int
) -> tuple[list[int], list[dict[str, Any]]]:
    """The maps of image ``j`` by one method (each class, each layer): PNGs written under
    ``out/maps``; returns the classes explained and the results.json entries."""
    cls = get_method(name)
    single = exp.targets.dim() == 1  # one class per image
    layered = exp.per_layer or {exp.layer: exp.maps}
    classes, entries = [], []
    for k, t in enumerate(exp.targets[j].reshape(-1).tolist()):
        classes.append(int(t))
        index = (j,) if single else (j, k)
        raw = exp.raw[index] if exp.raw.dim() == exp.maps.dim() + 1 else None
        extras = scalar_extras(exp.extras, index, exp.targets.shape)
        cname = prep.names[t] if 0 <= t < len(prep.names) else str(t)
        for lname, lmaps in layered.items():
            m = lmaps[index]
            signed = signed_view(cls, raw, m, exp.extras)
            pic = render_map(
                x[j].cpu(),
                m.cpu(),
                raw=raw.cpu() if raw is not None else None,
                signed=signed,
                preset=prep.info.preset,
                min_side=png_side,
            )
            parts = [stem, slug(name), str(t) if cname == str(t) else f"{t}-{slug(cname)}"]
            if lname and len(layered) > 1:
                parts.append(slug(lname))
            rel = f"maps/{'_'.join(parts)}.png"
            atomic_write(out / rel, to_png_bytes(pic))
            entries.append(
                {
                    "method": name,
                    "target": int(t),
                    "class": cname,
                    "layer": lname,
                    "png": rel,
                    "view": "signed attribution" if signed else "overlay",
                    "stats": map_stats(m, raw, extras),
                }
            )
    return classes, entries


def image_entry(
    f: Path,
    j: int,
    x: Tensor,
    probs: Tensor,
    exps: dict[str, Any],
    prep: Prepared,
    stem: str,
    out: Path,
    png_side: int,
) -> dict[str, Any]:
    """The results.json entry of image ``j`` of the batch ``x`` (file ``f``): its input PNG
    under ``out/inputs``, its top predictions, and every map of every method."""
    rel = f"inputs/{stem}.png"
    atomic_write(
        out / rel, to_png_bytes(show_input(x[j].cpu(), preset=prep.info.preset, min_side=png_side))
    )
    entry: dict[str, Any] = {
        "file": str(f),
        "input_png": rel,
        "predictions": top_predictions(probs[j], prep.names),
        "maps": [],
    }
    explained: list[int] = []
    for name, exp in exps.items():
        classes, maps = _map_entries(exp, name, j, x, prep, stem, out, png_side)
        for t in classes:
            if t not in explained:
                explained.append(t)
        entry["maps"].extend(maps)
    entry["targets"] = [{"index": t, "class": prep.names[t]} for t in explained if t >= 0]
    return entry


def _check_request(
    inputs: Sequence[str | Path],
    out: Path,
    batch_size: int,
    targets: Sequence[str],
    target_names: Sequence[str],
    topk: int | None,
) -> None:
    """The checks that need no model: the output folder, the batch size, one way to give
    the classes, at least one input."""
    check_out_dir(out)
    check_int("--batch-size", batch_size)
    given = [bool(split_values(targets)), bool(split_values(target_names)), topk is not None]
    if sum(given) > 1:
        raise InputError("give only one of --target, --target-name and --topk")
    if not inputs:
        raise InputError("give at least one image file or folder to explain")


def _targets_for(idx: list[int], batch: int, device: torch.device) -> int | Tensor | None:
    if not idx:
        return None
    if len(idx) == 1:
        return idx[0]
    return torch.tensor([idx] * batch, dtype=torch.long, device=device)


def run_explain(
    inputs: Sequence[str | Path],
    *,
    model: str,
    out: str | Path,
    weights: str | None = None,
    methods: Sequence[str] = ("gradcam",),
    options: Sequence[str] = (),
    targets: Sequence[str] = (),
    target_names: Sequence[str] = (),
    topk: int | None = None,
    layers: Sequence[str] = (),
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = False,
    title: str | None = None,
    png_side: int = 224,
    overwrite: bool = False,
) -> ExplainRun:
    """Explain ``model``'s predictions for image files; write PNGs, results.json, report.html.

    One PNG per image x method x class x layer goes to ``out/maps``, the input as the model
    saw it (un-normalized) to ``out/inputs``. CAM methods draw their [0, 1] map over the
    image; pixel attributions that carry a sign are drawn in a diverging colormap.

    Args:
        inputs: image files and folders (searched recursively for image files).
        model: a model name (``resnet50``) or a cnnlens checkpoint.
        out: the output folder.
        weights: weights for a model name (a file, or a torchvision name like ``DEFAULT``).
        methods: registry names, ``"all"`` for every registered method (comma lists work).
        options: method options, ``KEY=VALUE`` (every method that takes KEY) or
            ``METHOD.KEY=VALUE`` (e.g. ``rise.n_masks=1000``).
        targets: class indices (or ranges) to explain; default the top class.
        target_names: class names to explain.
        topk: explain each image's K most probable classes.
        layers: layers for the CAM methods (each gets its own maps); default automatic.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per forward pass.
        progress: show a progress bar.
        title: report title.
        png_side: smaller side of the written PNGs (small inputs are enlarged).
        overwrite: replace a folder that holds another model's run (without it, refused).

    ``out`` belongs to one run (:class:`~cnnlens.pipelines.outdir.RunFolder`): it is checked
    writable before any work, a folder of another model is refused unless ``overwrite``, the
    PNGs results.json no longer lists are removed, and a failed run removes what it wrote.

    Returns:
        An :class:`ExplainRun`.

    Raises:
        CnnlensError: for a bad option (unknown method, layer or class, target out of range)
            and when none of the inputs could be explained.
    """
    t_start = time.perf_counter()
    out = Path(out)
    _check_request(inputs, out, batch_size, targets, target_names, topk)
    identity = {"command": "explain", "model": str(model), "weights": weights}
    folder = RunFolder(out, identity, subdirs=("inputs", "maps"), overwrite=overwrite)
    try:
        results, images, skipped, run = _run_in_folder(
            folder, inputs, model, weights, methods, options, targets, target_names, topk,
            layers, device, batch_size, progress, title, png_side,
        )  # fmt: skip
    except BaseException:
        folder.abandon()
        raise
    if not images:
        listed = "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise ImageError(
            f"none of the {len(skipped)} inputs could be explained: {listed}{more} "
            f"(listed in {results})"
        )
    return ExplainRun(
        out=out,
        results=results,
        report=out / "report.html",
        explained=[im["file"] for im in images],
        skipped=skipped,
        methods=run.active,
        methods_skipped=run.skipped,
        maps=sum(len(im["maps"]) for im in images),
        seconds=time.perf_counter() - t_start,
    )


def _run_in_folder(
    folder: RunFolder,
    inputs: Sequence[str | Path],
    model: str,
    weights: str | None,
    methods: Sequence[str],
    options: Sequence[str],
    targets: Sequence[str],
    target_names: Sequence[str],
    topk: int | None,
    layers: Sequence[str],
    device: str,
    batch_size: int,
    progress: bool,
    title: str | None,
    png_side: int,
) -> tuple[Path, list[dict[str, Any]], list[dict[str, str]], _Methods]:
    """The run of :func:`run_explain` once its folder is claimed: PNGs, results.json, the
    report, then the PNGs of earlier runs that results.json does not list are removed."""
    from cnnlens.report import build_report, write_results

    out = folder.path
    method_names = expand_methods(methods)
    per_method = parse_method_options(options, method_names)
    files, skipped = collect_images(inputs)
    if not files:
        why = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        raise ImageError(
            f"no image files to explain in {', '.join(str(i) for i in inputs)} "
            f"(expected image files or folders holding them{'; ' + why if why else ''})"
        )
    for s in skipped:
        if s["reason"] == NOT_AN_IMAGE:
            logger.warning("skipped %s: %s", s["file"], s["reason"])
    prep = prepare_model(model, weights, device)
    target_idx = resolve_targets(prep, targets, target_names, topk)
    run = _Methods(
        method_names, per_method, [resolve_layer(prep.net, n)[0] for n in split_values(layers)]
    )
    if run.layers and not any(get_method(m).uses_layer for m in method_names):
        logger.warning(
            "--layer is ignored: none of the methods (%s) works on a layer", ", ".join(method_names)
        )
    folder.begin()
    images, skipped = _explain_files(
        files, skipped, prep, target_idx, topk, run, out, png_side, batch_size, progress
    )
    data = {
        "title": title or f"cnnlens explain: {prep.info.arch}",
        "model": model_card(prep.net, prep.info, model, prep.num_classes, prep.names, prep.device),
        "images": images,
        "skipped": skipped,
        "methods": run.active,
        "methods_skipped": [{"method": m, "reason": r} for m, r in run.skipped.items()],
        "layers": run.layers,
        "seconds_per_method": {m: round(s, 3) for m, s in run.seconds.items()},
    }
    results = write_results(out, data)
    build_report(out)
    keep = [im["input_png"] for im in images] + [m["png"] for im in images for m in im["maps"]]
    folder.finish(keep)
    return results, images, skipped, run


def _explain_files(
    files: list[Path],
    skipped: list[dict[str, str]],
    prep: Prepared,
    target_idx: list[int],
    topk: int | None,
    run: _Methods,
    out: Path,
    png_side: int,
    batch_size: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Explain ``files`` batch by batch, writing their PNGs; the results.json image entries
    and the inputs skipped."""
    stems = dict(zip(files, unique_stems(files)))
    images: list[dict[str, Any]] = []
    activation = "sigmoid" if prep.multilabel else "softmax"
    converted: dict[str, list[str]] = {}
    with progress_bar(progress, len(files), "explaining") as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            ok, tensors, bad = load_batch(chunk, prep.info, converted)
            skipped.extend(bad)
            if not ok:
                bar.advance(len(chunk))
                continue
            x = torch.stack(tensors).to(device=prep.device, dtype=prep.dtype)
            with frozen(prep.net), torch.no_grad():
                probs = probabilities(prep.net(x), activation).cpu()
            if not bool(torch.isfinite(probs).all()):
                raise ModelError(
                    f"--model gives non-finite outputs (NaN or Inf) for {chunk[ok[0]]}"
                    f"{' and others' if len(ok) > 1 else ''}; check its weights"
                )
            target = _targets_for(target_idx, len(ok), prep.device)
            exps = explain_batch(prep, x, target, topk, run, bar)
            for j, i in enumerate(ok):
                f = chunk[i]
                images.append(image_entry(f, j, x, probs, exps, prep, stems[f], out, png_side))
            bar.advance(len(chunk))
    for change, names in converted.items():  # one line per kind of change, not per image
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        logger.warning("%s: %s%s", change, ", ".join(names[:3]), more)
    return images, skipped
