"""``cnnlens explain IMAGE_OR_DIR... --model M --out DIR``: explain a model's predictions for
image files and write PNGs, ``results.json`` and ``report.html``.

    cnnlens explain digits/ --model runs/mnist/model.safetensors --method gradcam \\
        --method integrated_gradients --out runs/explain
    cnnlens explain photo.jpg --model resnet50 --weights DEFAULT --topk 2 --method all \\
        --out runs/photo

Images are preprocessed the way the model expects (its input size, channels and
normalization preset; resize-and-centre-crop for ImageNet-preset models) and processed in
batches. Files that cannot be read are skipped with a warning and listed in results.json;
the command fails only when nothing could be explained.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import typer
from torch import Tensor, nn

from cnnlens.errors import CnnlensError, ImageError, InputError, ModelError, TargetError

logger = logging.getLogger(__name__)

__all__ = ["ExplainRun", "collect_images", "register", "run_explain"]

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


def collect_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files to explain from files and folders (folders: image files by extension, recursively,
    sorted), and the inputs that do not exist.

    Returns:
        ``(files, missing)`` with ``missing`` as ``{"file", "reason"}`` entries.
    """
    from cnnlens.data import IMAGE_EXTENSIONS

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
        elif p.is_file():
            add(p)
        else:
            logger.warning("skipped %s: no such file or folder", p)
            missing.append({"file": str(item), "reason": "no such file or folder"})
    return files, missing


def _expand_methods(methods: Sequence[str]) -> list[str]:
    from cnnlens.cli._common import split_values
    from cnnlens.core.registry import get_method, list_methods

    names = split_values(methods) or ["gradcam"]
    out: list[str] = []
    for name in names:
        for n in list_methods() if name.lower() == "all" else [get_method(name).name]:
            if n not in out:
                out.append(n)
    return out


def _stems(files: Sequence[Path]) -> list[str]:
    """Unique file-name stems for the outputs of each input."""
    from cnnlens.demo import slug

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


def _model_card(
    net: nn.Module, info: Any, model: str, num_classes: int, names: list[str], device: Any
) -> dict[str, Any]:
    from cnnlens.summary import format_shape, summary

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


def _load_batch(
    files: Sequence[Path], info: Any, crop: bool
) -> tuple[list[int], list[Tensor], list[dict[str, str]]]:
    from cnnlens.data import load_image

    mode = {1: "L", 3: "RGB"}.get(int(info.in_channels))
    ok, tensors, bad = [], [], []
    for i, f in enumerate(files):
        try:
            img = load_image(f, mode=mode)
            # sizes, crop and interpolation as the model's weights declare (issue 18)
            x = info.preprocessing()(img)
        except ImageError as err:
            logger.warning("skipped %s: %s", f, err)
            bad.append({"file": str(f), "reason": str(err)})
            continue
        ok.append(i)
        tensors.append(x)
    return ok, tensors, bad


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

    Returns:
        An :class:`ExplainRun`.

    Raises:
        CnnlensError: for a bad option (unknown method, layer or class, target out of range)
            and when none of the inputs could be explained.
    """
    import cnnlens
    from cnnlens.cli._common import (
        class_names_for,
        load_model,
        parse_class_list,
        parse_method_options,
        progress_bar,
        resolve_device,
        split_values,
    )
    from cnnlens.core.capture import frozen
    from cnnlens.core.layers import resolve_layer
    from cnnlens.demo import (
        map_stats,
        probabilities,
        render_map,
        scalar_extras,
        show_input,
        signed_view,
        slug,
        top_predictions,
    )
    from cnnlens.report import build_report, write_results
    from cnnlens.viz import atomic_write, to_png_bytes

    t_start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a folder")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {batch_size!r}")
    given = [bool(split_values(targets)), bool(split_values(target_names)), topk is not None]
    if sum(given) > 1:
        raise InputError("give only one of --target, --target-name and --topk")
    if not inputs:
        raise InputError("give at least one image file or folder to explain")
    method_names = _expand_methods(methods)
    per_method = parse_method_options(options, method_names)
    files, skipped = collect_images(inputs)
    if not files:
        raise ImageError(
            f"no image files to explain in {', '.join(str(i) for i in inputs)} "
            "(expected image files or folders holding them)"
        )

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
    names = class_names_for(info, num_classes)
    if split_values(target_names):
        target_idx = parse_class_list(
            target_names,
            num_classes=num_classes,
            class_names=info.class_names,
            option="--target-name",
            by_name=True,
        )
    else:
        target_idx = parse_class_list(
            targets, num_classes=num_classes, option="--target", by_name=False
        )
    if topk is not None and (isinstance(topk, bool) or not 1 <= topk <= num_classes):
        raise TargetError(
            f"--topk must be between 1 and {num_classes} (the model's classes), got {topk}"
        )
    layer_names = [resolve_layer(net, name)[0] for name in split_values(layers)]
    classes_of = [cnnlens.get_method(m) for m in method_names]
    if layer_names and not any(cls.uses_layer for cls in classes_of):
        logger.warning(
            "--layer is ignored: none of the methods (%s) works on a layer", ", ".join(method_names)
        )
    # sigmoid probabilities for multi-label models (cnnlens's multi-label dataset, or a
    # checkpoint that says so in its extra metadata), softmax otherwise
    multilabel = bool((info.extra or {}).get("multilabel")) or info.dataset == "shapes-pair"
    crop = info.preset == "imagenet"

    out.mkdir(parents=True, exist_ok=True)
    stems = dict(zip(files, _stems(files)))
    images: list[dict[str, Any]] = []
    methods_skipped: dict[str, str] = {}
    active = list(method_names)
    seconds: dict[str, float] = dict.fromkeys(method_names, 0.0)
    n_maps = 0

    def write(rel: str, img: Any) -> str:
        atomic_write(out / rel, to_png_bytes(img))
        return rel

    with progress_bar(progress, len(files), "explaining") as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            ok, tensors, bad = _load_batch(chunk, info, crop)
            skipped.extend(bad)
            if not ok:
                bar.advance(len(chunk))
                continue
            x = torch.stack(tensors).to(device=dev, dtype=dtype)
            with frozen(net), torch.no_grad():
                probs = probabilities(net(x), multilabel=multilabel)
            target = _targets_for(target_idx, len(ok), dev)
            exps: dict[str, Any] = {}
            for name in list(active):
                cls = cnnlens.get_method(name)
                layer: Any = None
                if cls.uses_layer and layer_names:
                    layer = layer_names[0] if len(layer_names) == 1 else layer_names
                bar.describe(f"explaining: {name}")
                t0 = time.perf_counter()
                try:
                    exps[name] = cnnlens.explain(
                        net,
                        x,
                        method=name,
                        target=target,
                        layer=layer,
                        topk=topk,
                        **per_method[name],
                    )
                except (ModelError, InputError) as err:
                    # with several methods, one that cannot work on this model (CAM without
                    # a GAP head, an occlusion window larger than the image) is left out;
                    # an error in options the user gave is the user's to fix
                    if len(method_names) == 1 or per_method[name]:
                        raise
                    logger.warning("method %s skipped: %s", name, err)
                    methods_skipped[name] = str(err)
                    active.remove(name)
                seconds[name] += time.perf_counter() - t0
            if not active:
                raise ModelError(
                    "none of the methods applies to this model: "
                    + "; ".join(f"{m}: {r}" for m, r in methods_skipped.items())
                )
            for j, i in enumerate(ok):
                f = chunk[i]
                stem = stems[f]
                entry: dict[str, Any] = {
                    "file": str(f),
                    "input_png": write(
                        f"inputs/{stem}.png",
                        show_input(x[j].cpu(), preset=info.preset, min_side=png_side),
                    ),
                    "predictions": top_predictions(probs[j], names),
                    "maps": [],
                }
                explained: list[int] = []
                for name, exp in exps.items():
                    cls = cnnlens.get_method(name)
                    single = exp.targets.dim() == 1  # one class per image
                    tgt = exp.targets[j].reshape(-1).tolist()
                    layered = exp.per_layer or {exp.layer: exp.maps}
                    for k, t in enumerate(tgt):
                        if t not in explained:
                            explained.append(int(t))
                        index = (j,) if single else (j, k)
                        raw = exp.raw[index] if exp.raw.dim() == exp.maps.dim() + 1 else None
                        extras = scalar_extras(exp.extras, index, exp.targets.shape)
                        for lname, lmaps in layered.items():
                            m = lmaps[index]
                            signed = signed_view(cls, raw, m)
                            pic = render_map(
                                x[j].cpu(),
                                m.cpu(),
                                raw=raw.cpu() if raw is not None else None,
                                signed=signed,
                                preset=info.preset,
                                min_side=png_side,
                            )
                            cname = names[t] if 0 <= t < len(names) else str(t)
                            parts = [
                                stem,
                                slug(name),
                                str(t) if cname == str(t) else f"{t}-{slug(cname)}",
                            ]
                            if lname and len(layered) > 1:
                                parts.append(slug(lname))
                            rel = write(f"maps/{'_'.join(parts)}.png", pic)
                            n_maps += 1
                            entry["maps"].append(
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
                entry["targets"] = [{"index": t, "class": names[t]} for t in explained if t >= 0]
                images.append(entry)
            bar.advance(len(chunk))

    data = {
        "title": title or f"cnnlens explain: {info.arch}",
        "model": _model_card(net, info, model, num_classes, names, dev),
        "images": images,
        "skipped": skipped,
        "methods": active,
        "methods_skipped": [{"method": m, "reason": r} for m, r in methods_skipped.items()],
        "layers": layer_names,
        "seconds_per_method": {m: round(s, 3) for m, s in seconds.items()},
    }
    results = write_results(out, data)
    report = build_report(out)
    run = ExplainRun(
        out=out,
        results=results,
        report=report,
        explained=[im["file"] for im in images],
        skipped=skipped,
        methods=active,
        methods_skipped=methods_skipped,
        maps=n_maps,
        seconds=time.perf_counter() - t_start,
    )
    if not images:
        listed = "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise ImageError(
            f"none of the {len(skipped)} inputs could be explained: {listed}{more} "
            f"(listed in {results})"
        )
    return run


def explain_command(
    inputs: list[str] = typer.Argument(
        ..., metavar="IMAGE_OR_DIR...", help="Image files and folders of images."
    ),
    model: str = typer.Option(
        ..., "--model", "-m", help="Model name (resnet50) or cnnlens checkpoint (.safetensors)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    weights: str | None = typer.Option(
        None, "--weights", help="Weights for a model name: a file, or a torchvision name."
    ),
    method: list[str] | None = typer.Option(
        None, "--method", help="Method name (repeat, or 'all'); default gradcam."
    ),
    target: list[str] | None = typer.Option(
        None, "--target", help="Class index to explain (repeat for several); default the top class."
    ),
    target_name: list[str] | None = typer.Option(
        None, "--target-name", help="Class name to explain (repeat for several)."
    ),
    topk: int | None = typer.Option(None, "--topk", help="Explain the K most probable classes."),
    layer: list[str] | None = typer.Option(
        None, "--layer", help="Layer for CAM methods (repeat: one map per layer)."
    ),
    option: list[str] | None = typer.Option(
        None,
        "--option",
        help="Method option KEY=VALUE, or METHOD.KEY=VALUE (e.g. rise.n_masks=1000).",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
    title: str | None = typer.Option(None, "--title", help="Title of the report."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Explain a model's predictions for images: PNGs, results.json and report.html in OUT."""
    run = run_explain(
        inputs,
        model=model,
        out=out,
        weights=weights,
        methods=method or (),
        options=option or (),
        targets=target or (),
        target_names=target_name or (),
        topk=topk,
        layers=layer or (),
        device=device,
        batch_size=batch_size,
        progress=progress,
        title=title,
    )
    typer.echo(
        f"explained {len(run.explained)} image(s) with {len(run.methods)} method(s): "
        f"{run.maps} maps in {run.seconds:.1f} s"
    )
    if run.methods_skipped:
        typer.echo(f"methods not applicable to this model: {', '.join(run.methods_skipped)}")
    if run.skipped:
        typer.echo(
            f"skipped {len(run.skipped)} input(s): "
            + ", ".join(s["file"] for s in run.skipped[:10])
            + (" ..." if len(run.skipped) > 10 else "")
        )
    typer.echo(f"results: {run.results}")
    typer.echo(f"report: {run.report}")


def register(app: typer.Typer) -> None:
    """Add the ``explain`` command to the cnnlens command line."""
    app.command("explain")(explain_command)
