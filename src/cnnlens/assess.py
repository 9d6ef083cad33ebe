"""The explanation benchmark: every method x every metric over a dataset with ground truth.

:func:`assess` explains ``n`` images of a dataset with each method (and two baselines,
``random`` and ``centre`` maps), scores every map with the metrics of
:mod:`cnnlens.metrics` (faithfulness, localization against ground-truth masks,
complexity), runs the cascading model-randomization sanity check (Adebayo et al. 2018) on
a few images per method, and writes to ``out``:

- ``table.md``, ``table.csv``, ``table.json``: per method x metric the mean over rows
  with its 95% confidence interval (:func:`cnnlens.metrics.aggregate`: Student's t, the
  percentile bootstrap for the 0/1 scores of the pointing game and increase in confidence);
- ``figures/curves.png`` (mean deletion and insertion curves), ``figures/sanity.png`` (the
  similarity to the original map as layers are re-initialized, every method) and
  ``figures/sanity_<method>.png``, ``figures/examples.png`` (a few maps next to the masks);
- ``results.json`` and ``report.html`` (the metrics table, the figures, the sanity
  verdicts; ``cnnlens report DIR`` rebuilds the HTML from the JSON);
- ``rows.jsonl``: one line per finished (method, image, class) row, appended as each batch
  finishes, and ``sanity/<method>.json``: what makes the run resumable. Run the same call
  again after an interruption and only the missing rows are computed.

A sanity verdict reads the upper half of the cascade (:func:`upper_similarity`), and
:func:`sanity_verdicts` gives the same verdicts for any model and a few images (the demo's
report uses it).

The datasets: ``shapes`` (one shape per image, its mask), ``shapes-pair`` (two shapes per
image: each image gives two rows, one per class, each scored against its own shape's mask),
any other :func:`cnnlens.data.get_dataset` name without masks (faithfulness, complexity and
sanity only, e.g. ``mnist-embedded``), and ``folder`` (your images with a parallel folder
of binary mask PNGs, see :func:`load_masked_folder`).

Example:
    >>> net, info = cnnlens.models.load("runs/shapes/model.safetensors")    # doctest: +SKIP
    >>> data = load_data("shapes", model_info=info)
    >>> res = assess(net, data, "runs/assess", n=100, model_info=info)
    >>> print(res.markdown())
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.core.display import Displayable
from cnnlens.errors import CnnlensError, DataError, InputError, ModelError, TargetError

logger = logging.getLogger(__name__)

__all__ = [
    "ASSESS_METRICS",
    "BASELINES",
    "DELETION_SUBSTRATE",
    "LIGHT_OPTIONS",
    "POINTING_TOLERANCE",
    "SANITY_CRITERION",
    "SANITY_METRIC",
    "AssessData",
    "AssessResult",
    "assess",
    "light_options",
    "load_data",
    "load_masked_folder",
    "metric_direction",
    "resolve_methods",
    "sanity_checks",
    "sanity_verdicts",
    "upper_similarity",
]

#: The table's sanity column: the similarity of the maps to the original ones while the
#: upper half of the layers is re-initialized (:func:`upper_similarity`); lower is better.
SANITY_METRIC = "cascading_randomization"
#: The similarity the sanity verdict reads: the Spearman rank correlation of the signed raw
#: attributions (Adebayo et al. report it next to the one of absolute values). On the gap-cnn
#: of the acceptance test it reproduces the paper's four verdicts (gradient and Grad-CAM
#: pass, guided backprop and guided Grad-CAM fail); with absolute values a Grad-CAM whose
#: sign is flipped by random class weights would count as unchanged, though after its ReLU
#: it shows the opposite.
SANITY_CRITERION = "spearman"
#: The pointing game's tolerance as a share of the image side: Zhang et al. (2016) count a
#: hit within 15 pixels of the object on 224-pixel images.
POINTING_TOLERANCE = 15 / 224
#: What deleted pixels become in the deletion metric: the blurred copy of the image that
#: insertion starts from, so the two curves walk the same path in opposite directions. RISE
#: (Petsiuk et al. 2018) deletes to a constant; pixels scattered at a constant colour are
#: out of distribution, and on ``shapes`` random maps then score a lower (better) deletion
#: area than Grad-CAM (0.207 against 0.238 with zeros, 0.258 against 0.259 with the image's
#: mean colour, 0.666 against 0.339 with the blur).
DELETION_SUBSTRATE = "blur"
#: Maps every method is compared with (from :mod:`cnnlens.metrics.baselines`).
BASELINES: tuple[str, ...] = ("random", "centre")
#: Options that keep the slow methods to seconds per batch on a CPU (``--light``).
LIGHT_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16, "internal_batch_size": 64},
    "smoothgrad": {"n_samples": 8, "batch_size": 64},
    "occlusion": {"window": 8, "stride": 4, "batch_size": 256},
    "rise": {"n_masks": 500, "batch_size": 250},
    "scorecam": {"batch_size": 256},
    "ablationcam": {"batch_size": 256},
}


def light_options(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:data:`LIGHT_OPTIONS` for those of ``methods`` that have them (``--light``)."""
    return {m: dict(LIGHT_OPTIONS[m]) for m in methods if m in LIGHT_OPTIONS}


_CURVES = ("deletion", "insertion")
# 0/1 scores: their interval is the percentile bootstrap (never outside [0, 1])
_HITS = ("pointing_game", "increase_in_confidence")
_FORMAT = 2
_SANITY_CHECK = "cascading model randomization"


def _metric_names() -> list[str]:
    from cnnlens.metrics import METRICS

    return [*METRICS, SANITY_METRIC]


ASSESS_METRICS: tuple[str, ...] = tuple(_metric_names())
"""Every column :func:`assess` can compute, in table order."""


# --------------------------------------------------------------------------- data


@dataclass
class AssessData:
    """Images with the classes to explain and (optionally) their ground-truth masks.

    Attributes:
        name: dataset name (``"shapes"``, ``"folder"``, ...).
        images: (N, C, H, W), normalized as the model expects.
        labels: long (N, K): the K classes to explain per image (K = 2 for
            ``shapes-pair``), -1 where unknown (the model's top class is explained).
        masks: bool (N, K, H, W), the ground truth of each class, or None.
        classes: class names.
        multilabel: True when the model scores classes with a sigmoid (``shapes-pair``).
        preset: the normalization preset name of ``images``.
        files: a name per image (file paths for ``folder``), for the report.
    """

    name: str
    images: Tensor
    labels: Tensor
    masks: Tensor | None
    classes: list[str]
    multilabel: bool = False
    preset: str = "none"
    files: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, n: int) -> AssessData:
        """The first ``n`` images."""
        return AssessData(
            self.name,
            self.images[:n],
            self.labels[:n],
            None if self.masks is None else self.masks[:n],
            self.classes,
            self.multilabel,
            self.preset,
            None if self.files is None else self.files[:n],
        )


def _takes(loader: Callable[..., Any], name: str) -> bool:
    import inspect

    return name in inspect.signature(loader).parameters


def load_data(
    dataset: str,
    *,
    model_info: Any = None,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    masks_root: str | os.PathLike[str] | None = None,
    n: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> AssessData:
    """The images, classes and masks of a dataset, ready for :func:`assess`.

    Args:
        dataset: a :func:`cnnlens.data.get_dataset` name, or ``"folder"`` /
            ``"folder+masks"`` for :func:`load_masked_folder`.
        model_info: the model's :class:`cnnlens.models.ModelInfo`; the generated datasets
            are drawn at its input size and the folder images resized to it.
        split: the split to read (``"test"``).
        root: folder of the on-disk datasets (for ``folder``: the folder holding
            ``images/`` and ``masks/``).
        masks_root: for ``folder``, the mask folder when it is not ``root/masks``.
        n: keep only the first ``n`` images (the generated datasets are drawn at their
            default size, so the first images are the same whatever ``n`` is; give
            ``options={"n": ...}`` for more).
        options: further dataset options (``size``, ``seed``, ...).

    Raises:
        DataError: an unknown dataset or a folder that does not follow the layout.
    """
    opts = dict(options or {})
    if dataset in ("folder", "folder+masks"):
        if root is None:
            raise DataError(
                f"dataset {dataset!r} needs --data-dir: a folder holding images/ and masks/"
            )
        return load_masked_folder(root, masks=masks_root, model_info=model_info, **opts)
    from cnnlens.data import DATASETS, get_dataset

    info = DATASETS.get(dataset)
    if (
        info is not None
        and model_info is not None
        and _takes(info.loader, "size")
        and "size" not in opts
    ):
        h, w = (int(v) for v in model_info.input_size)
        if h == w:
            opts["size"] = h
    ds = get_dataset(dataset, split=split, root=root, **opts)
    count = len(ds) if n is None else min(len(ds), int(n))
    x, y = ds.get_batch(list(range(count)))
    masks = None
    if hasattr(ds, "pair_labels"):
        labels = torch.stack([ds.pair_labels(i) for i in range(count)]).long()
        masks = torch.stack([ds.masks(i) for i in range(count)]).bool()
    elif y.dim() == 2:  # multi-hot without pair order: classes present, no masks
        k = int(y.sum(1).max()) if count else 1
        labels = torch.full((count, k), -1, dtype=torch.long)
        for i in range(count):
            idx = torch.nonzero(y[i]).flatten()
            labels[i, : idx.numel()] = idx
    else:
        labels = y.long().view(-1, 1)
        if hasattr(ds, "masks"):
            masks = torch.stack([ds.masks(i) for i in range(count)]).bool().unsqueeze(1)
    return AssessData(
        name=dataset,
        images=x,
        labels=labels,
        masks=masks,
        classes=list(ds.classes),
        multilabel=bool(getattr(ds, "multilabel", False)),
        preset=ds.preset.name,
        files=[f"{dataset}[{i}]" for i in range(count)],
    )


def _mask_file(masks: Path, rel: Path) -> Path | None:
    for cand in (masks / rel.with_suffix(".png"), masks / rel):
        if cand.is_file():
            return cand
    return None


def _read_mask(path: Path, size: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """A binary mask PNG as bool (H, W) at the model's ``size`` (nearest neighbour)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            img = im.copy()
    except (OSError, ValueError) as err:
        raise DataError(f"mask {str(path)!r} cannot be read as an image: {err}") from None
    if img.size != image_size:
        raise DataError(
            f"mask {str(path)!r} is {img.size[0]}x{img.size[1]} pixels but its image is "
            f"{image_size[0]}x{image_size[1]}; masks must have their image's size"
        )
    if img.mode in ("RGBA", "LA"):
        img = img.convert(img.mode[:-1])
    arr = np.asarray(img.convert("L") if img.mode in ("P", "1") else img)
    if arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise DataError(
                f"mask {str(path)!r} has colours; a mask must be black (0) and white (255) "
                "or 0 and 1"
            )
        arr = arr[..., 0]
    values = np.unique(arr)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise DataError(
            f"mask {str(path)!r} is not binary: it holds the values {shown}; a mask must "
            "hold 0 (background) and one other value (255 or 1) for the object"
        )
    mask = Image.fromarray((arr != 0).astype(np.uint8) * 255)
    if mask.size != (size[1], size[0]):
        mask = mask.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(mask) > 0)


def load_masked_folder(
    root: str | os.PathLike[str],
    *,
    masks: str | os.PathLike[str] | None = None,
    model_info: Any = None,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    preset: str | None = None,
) -> AssessData:
    """Your images with a parallel folder of binary mask PNGs (``--dataset folder``).

    The layout::

        ROOT/images/<class>/<name>.<jpg|png|...>    or  ROOT/images/<name>.<ext>
        ROOT/masks/<class>/<name>.png               same relative path, .png

    Every image needs a mask with the same relative path (the extension becomes ``.png``)
    and the same width and height; a mask holds 0 for the background and one other value
    (255 or 1) for the object (greyscale, palette or grey RGB). With class subfolders an
    image's class is its folder, matched to the model's class names (or a class index as
    the folder name); without them the model's top class is explained. Images and masks are
    resized to the model's input size (masks by nearest neighbour).

    Args:
        root: the folder holding ``images/`` (or the image folder itself when ``masks``
            is given).
        masks: the mask folder (default ``ROOT/masks``).
        model_info: the model's ``ModelInfo`` (input size, channels, preset, class names).
        size: overrides the input size.
        channels: overrides the channels.
        preset: overrides the normalization preset.

    Raises:
        DataError: a missing folder or mask, a mask of the wrong size or not binary, an
            unknown class folder.
        ImageError: an image that cannot be decoded.
    """
    from cnnlens.data import IMAGE_EXTENSIONS, load_image, to_tensor

    base = Path(root).expanduser()
    images_dir = base / "images" if (base / "images").is_dir() else base
    mask_dir = Path(masks).expanduser() if masks is not None else base / "masks"
    if not images_dir.is_dir():
        raise DataError(f"--data-dir {str(base)!r} does not exist or is not a folder")
    if not mask_dir.is_dir():
        raise DataError(
            f"mask folder {str(mask_dir)!r} does not exist; put one binary PNG per image in "
            f"{base}/masks/ with the image's relative path"
        )
    files = sorted(
        f
        for f in images_dir.rglob("*")
        if f.is_file()
        and f.suffix.lower() in IMAGE_EXTENSIONS
        and not any(p.startswith(".") for p in f.relative_to(images_dir).parts)
        and mask_dir not in f.parents
    )
    if not files:
        raise DataError(
            f"image folder {str(images_dir)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
        )
    if size is None:
        size = tuple(model_info.input_size) if model_info is not None else None
    if size is None:
        raise InputError("load_masked_folder needs size= or model_info= (the model's input size)")
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    channels = channels or (int(model_info.in_channels) if model_info is not None else 3)
    preset = preset or (model_info.preset if model_info is not None else "none")
    names = list(getattr(model_info, "class_names", None) or [])
    num = getattr(model_info, "num_classes", None) or len(names) or None
    xs, labels, ms = [], [], []
    for f in files:
        rel = f.relative_to(images_dir)
        mfile = _mask_file(mask_dir, rel)
        if mfile is None:
            raise DataError(
                f"image {str(f)!r} has no mask: expected {mask_dir / rel.with_suffix('.png')}"
            )
        img = load_image(f, mode="L" if channels == 1 else "RGB")
        xs.append(to_tensor(img, size=hw, preset=preset, channels=channels))
        ms.append(_read_mask(mfile, hw, img.size))
        label = -1
        if len(rel.parts) > 1:
            cls = rel.parts[0]
            if cls in names:
                label = names.index(cls)
            elif cls.isdigit() and (num is None or int(cls) < num):
                label = int(cls)
            elif not names:
                logger.info("class folder %r is not a class index; the top class is explained", cls)
            else:
                raise DataError(
                    f"class folder {cls!r} ({f}) is not a class of the model; classes: "
                    f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
                )
        labels.append(label)
    return AssessData(
        name="folder",
        images=torch.stack(xs),
        labels=torch.tensor(labels, dtype=torch.long).view(-1, 1),
        masks=torch.stack(ms).unsqueeze(1),
        classes=names or [str(i) for i in range(num or 0)],
        multilabel=bool((getattr(model_info, "extra", None) or {}).get("multilabel")),
        preset=str(preset),
        files=[str(f) for f in files],
    )


# --------------------------------------------------------------------------- helpers


def _slug(text: str) -> str:
    """A file name for a method (``gradcam++`` -> ``gradcampp``, distinct from ``gradcam``)."""
    from cnnlens.demo import slug

    return slug(text)


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Tensor):
            t = p.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _model_hash(model: nn.Module) -> str:
    return _sha(
        *[(k, v.float() if v.is_floating_point() else v) for k, v in model.state_dict().items()]
    )


def _finite(v: float) -> float | None:
    return round(float(v), 6) if math.isfinite(float(v)) else None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_text(path: Path, text: str) -> Path:
    from cnnlens.viz import atomic_write

    return atomic_write(path, text.encode("utf-8"))


def _write_json(path: Path, obj: Any) -> Path:
    return _write_text(path, json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """Registry names from names, comma lists and ``"all"`` (every registered method).

    Raises:
        MethodNotFoundError: an unknown name (close names listed).
        InputError: a baseline's name.
    """
    from cnnlens.core.registry import get_method, list_methods

    names = [methods] if isinstance(methods, str) else list(methods)
    names = [p.strip() for n in names for p in str(n).split(",") if p.strip()]
    out: list[str] = []
    for name in names or ["all"]:
        if name.lower() in BASELINES:
            raise InputError(
                f"method {name!r} is a baseline, added to every table; choose methods from "
                f"{', '.join(list_methods())}"
            )
        for m in list_methods() if name.lower() == "all" else [get_method(name).name]:
            if m not in out:
                out.append(m)
    return out


def _resolve_metrics(metrics: str | Sequence[str], has_masks: bool, sanity: bool) -> list[str]:
    from cnnlens.metrics import METRICS

    names = [metrics] if isinstance(metrics, str) else list(metrics)
    names = [p.strip() for n in names for p in str(n).split(",") if p.strip()]
    if not names or any(n.lower() == "all" for n in names):
        out = [m for m, info in METRICS.items() if has_masks or not info.needs_masks]
        return [*out, SANITY_METRIC] if sanity else out
    unknown = [n for n in names if n not in ASSESS_METRICS]
    if unknown:
        raise InputError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; available: all, "
            f"{', '.join(ASSESS_METRICS)}"
        )
    needing = [n for n in names if n in METRICS and METRICS[n].needs_masks]
    if needing and not has_masks:
        raise InputError(
            f"metric(s) {', '.join(needing)} need ground-truth masks, which this dataset has "
            "not (use shapes, shapes-pair or a folder with masks)"
        )
    if SANITY_METRIC in names and not sanity:
        raise InputError(f"metric {SANITY_METRIC} needs sanity_images >= 1")
    return list(dict.fromkeys(names))


def _split_options(
    options: Mapping[str, Mapping[str, Any]] | None, valid: Sequence[str], what: str
) -> dict[str, dict[str, Any]]:
    out = {str(k): dict(v) for k, v in (options or {}).items()}
    bad = [k for k in out if k not in valid]
    if bad:
        raise InputError(
            f"{what} options for unknown name(s) {', '.join(map(repr, bad))}; "
            f"known: {', '.join(valid)}"
        )
    return out


_FIXED = ("model", "x", "maps", "masks", "target", "activation", "batch_size", "order")


def _check_metric_options(options: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse an option the metric's function does not take, naming those it takes."""
    import inspect

    from cnnlens.metrics import complexity, faithfulness, localization

    for name, opts in options.items():
        if name.startswith("road"):
            fn = faithfulness.road
        else:
            fn = next(
                getattr(m, name)
                for m in (faithfulness, localization, complexity)
                if hasattr(m, name)
            )
        takes = [p for p in inspect.signature(fn).parameters if p not in _FIXED]
        bad = [k for k in opts if k not in takes]
        if bad:
            raise InputError(
                f"metric {name} takes no option {bad[0]!r}; it takes: {', '.join(takes) or 'none'}"
            )


# --------------------------------------------------------------------------- results


@dataclass
class AssessResult(Displayable):  # drawn by cnnlens.viz.assessment_figure
    """What :func:`assess` wrote and measured.

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
        return _markdown(self.rows, self.metrics)


def metric_direction(metric: str) -> bool | None:
    """True when higher is better for ``metric``, False when lower is, None if unknown."""
    from cnnlens.metrics import METRICS

    if metric == SANITY_METRIC:
        return False
    info = METRICS.get(metric)
    return info.higher_is_better if info else None


def _cell(r: Mapping[str, Any]) -> str:
    mean, lo, hi = r.get("mean"), r.get("low"), r.get("high")
    if mean is None or not math.isfinite(mean):
        return "—"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _markdown(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
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


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
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


# --------------------------------------------------------------------------- sanity


def _sanity_one(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    method: str,
    *,
    seed: int,
    threshold: float,
    options: Mapping[str, Any],
) -> Any:
    from cnnlens.metrics import cascading_randomization

    return cascading_randomization(
        model,
        x,
        method,
        target=targets,
        seed=seed,
        threshold=threshold,
        criterion=SANITY_CRITERION,
        **dict(options),
    )


def upper_similarity(result: Any) -> Tensor:
    """Per image, the mean absolute similarity to the original map over the upper half of a
    cascading randomization, float (B,).

    With $s_{k,i}$ the similarity (the result's ``criterion``; :data:`SANITY_CRITERION`, the
    Spearman correlation of the signed raw attributions, for :func:`sanity_checks`) of image
    $i$ to its original map once the top $k$ of the $L$ layers are re-initialized,

    $$u_i = \\frac{1}{\\lceil L/2 \\rceil} \\sum_{k=1}^{\\lceil L/2 \\rceil} |s_{k,i}|$$

    Adebayo et al. (2018) found guided backprop "invariant to the higher layers": its maps
    barely change until the lowest layers are re-initialized. Once *every* layer is random
    most maps change, guided backprop's too, so the verdict of :func:`sanity_verdicts`
    reads $u$ (the upper half, where the paper's distinction lies) rather than the last
    step alone.

    Args:
        result: a :class:`cnnlens.metrics.SanityResult` of cascading randomization.
    """
    sim = getattr(result, result.criterion)[1:].abs().double()  # drop the "original" row
    if sim.shape[0] == 0:
        raise InputError("the sanity result has no randomization step")
    return sim[: math.ceil(sim.shape[0] / 2)].mean(dim=0)


def _verdict(method: str, upper: float, final: float, threshold: float, layers: int) -> Any:
    from cnnlens.report import SanityVerdict

    passed = bool(upper < threshold)
    detail = (
        f"mean |Spearman| of the attributions to the original ones while the upper "
        f"{math.ceil(layers / 2)} of {layers} layers are re-initialized: {upper:.3f} "
        f"({'below' if passed else 'not below'} {threshold:g}); after all {layers}: {final:.3f}"
    )
    return SanityVerdict(method, _SANITY_CHECK, passed, detail)


def _result_verdict(method: str, result: Any) -> Any:
    upper = float(upper_similarity(result).mean())
    return _verdict(method, upper, result.final, result.threshold, len(result.steps) - 1)


def sanity_checks(
    model: nn.Module,
    x: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    methods: Sequence[str] | str | None = None,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Cascading model-parameter randomization (Adebayo et al., NeurIPS 2018,
    arXiv:1810.03292) for several methods on the same images.

    Layers are re-initialized from the output towards the input, and each method's maps
    are compared with the original ones after every step (the results' ``criterion`` is
    :data:`SANITY_CRITERION`). :func:`sanity_verdicts` turns the results into verdicts.

    Methods that do not apply to the model (e.g. CAM without a GAP head) are left out with
    a warning in the log.

    Args:
        model: the trained classifier (never changed: a copy is randomized).
        x: a few images (B, C, H, W).
        targets: the classes to explain (default each image's top class).
        methods: registry names or ``"all"`` (default: every registered method).
        seed: seed of the re-initialization.
        threshold: $\\tau$.
        method_options: per-method keyword arguments (e.g. fewer steps for slow methods);
            entries for methods not checked are ignored.
        progress: show a progress bar.

    Returns:
        ``{method: SanityResult}``.
    """
    from cnnlens.core.progress import progress_bar

    names = resolve_methods(methods if methods is not None else "all")
    opts = {k: dict(v) for k, v in (method_options or {}).items() if k in names}
    out: dict[str, Any] = {}
    with progress_bar(progress, len(names), "sanity checks") as bar:
        for name in names:
            bar.describe(f"sanity check: {name}")
            try:
                out[name] = _sanity_one(
                    model,
                    x,
                    targets,
                    name,
                    seed=seed,
                    threshold=threshold,
                    options=opts.get(name, {}),
                )
            except ModelError as err:
                logger.warning("sanity check of %s skipped: %s", name, err)
            bar.advance()
    return out


def sanity_verdicts(
    model: nn.Module,
    x: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    methods: Sequence[str] | str | None = None,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> list[Any]:
    """The sanity-check verdicts for a report: :func:`sanity_checks` as
    :class:`cnnlens.report.SanityVerdict` objects (method, check, passed, detail).

    A method passes when its maps lose the likeness to the original ones while the upper
    half of the layers is re-initialized (:func:`upper_similarity`):

    $$\\text{passes} \\iff \\frac1B \\sum_i u_i < \\tau$$

    Arguments as in :func:`sanity_checks`.

    Example:
        >>> verdicts = sanity_verdicts(net, x[:4], None, ["gradcam", "guided_backprop"])
        ... # doctest: +SKIP
        >>> cnnlens.report.write_report("r.html", model_card=card, images=[], sanity=verdicts)
    """
    results = sanity_checks(
        model,
        x,
        targets,
        methods,
        seed=seed,
        threshold=threshold,
        method_options=method_options,
        progress=progress,
    )
    return [_result_verdict(m, r) for m, r in results.items()]


# --------------------------------------------------------------------------- scoring


def _method_maps(
    model: nn.Module,
    method: str,
    x: Tensor,
    targets: Tensor,
    row_ids: Sequence[str],
    seed: int,
    options: Mapping[str, Any],
) -> Tensor:
    """(B, H, W) maps of one method (or baseline) for one batch of rows."""
    from cnnlens.metrics import centre_maps, random_maps

    like = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
    if method == "random":
        return torch.cat(
            [random_maps(like[:1], seed=zlib.crc32(f"{seed}/{rid}".encode())) for rid in row_ids]
        )
    if method == "centre":
        return centre_maps(like)
    from cnnlens.api import explain

    exp = explain(model, x, method=method, target=targets, **dict(options))
    maps = exp.maps
    if maps.dim() == 4:  # one class per row was asked; be lenient with a (B, 1, H, W)
        maps = maps[:, 0]
    return maps.detach().float()


def _score_batch(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Tensor,
    masks: Tensor | None,
    metrics: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    activation: str,
    batch_size: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-row scores ``{metric: (B,)}`` and curves ``{"deletion": (B, S), ...}``."""
    from cnnlens.metrics import METRICS, evaluate_maps, faithfulness

    scores: dict[str, Tensor] = {}
    curves: dict[str, Tensor] = {}
    common = {"target": targets, "activation": activation, "batch_size": batch_size}
    for name in _CURVES:
        if name in metrics:
            res = getattr(faithfulness, name)(model, x, maps, **common, **options.get(name, {}))
            scores[name] = res.auc
            curves[name] = res.scores
    rest = [m for m in metrics if m in METRICS and m not in _CURVES]
    if rest:
        opts = {k: v for k, v in options.items() if k in METRICS and k not in _CURVES}
        needs = any(METRICS[m].needs_masks for m in rest)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*empty ground-truth mask.*")
            scores.update(
                evaluate_maps(
                    model,
                    x,
                    maps,
                    masks=masks if needs else None,
                    metrics=rest,
                    options=opts,
                    **common,
                )
            )
    return scores, curves


# --------------------------------------------------------------------------- figures


def _curves_figure(curves: Mapping[str, Mapping[str, Tensor]]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    methods = list(curves)
    cmap = _colours(len(methods))
    for ax, name in zip(axes, _CURVES):
        for i, method in enumerate(methods):
            c = curves[method].get(name)
            if c is None or c.numel() == 0:
                continue
            mean = torch.nanmean(c.double(), dim=0).numpy()
            xs = torch.linspace(0, 1, mean.shape[0]).numpy()
            auc = float(torch.nanmean(torch.trapezoid(c.double(), torch.as_tensor(xs), dim=1)))
            base = method in BASELINES
            ax.plot(
                xs,
                mean,
                color="black" if base else cmap[i],
                linestyle=(":" if method == "random" else "--") if base else "-",
                linewidth=1.6 if base else 1.1,
                label=f"{method} ({auc:.3f})",
            )
        ax.set_xlabel(f"fraction of pixels {'removed' if name == 'deletion' else 'inserted'}")
        ax.set_ylabel("probability of the explained class")
        ax.set_ylim(-0.02, 1.02)
        better = "lower" if name == "deletion" else "higher"
        ax.set_title(f"{name} (area in brackets, {better} is better)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, ncol=2, loc="best")
    return fig


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(max(n, 1))]


def _sanity_figure(records: Mapping[str, Mapping[str, Any]], threshold: float) -> Any:
    """Every method's mean |similarity| per cascade step; the verdict reads the shaded half."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax = fig.add_subplot()
    cols = _colours(len(records))
    steps: list[str] = []
    for i, (method, rec) in enumerate(records.items()):
        curve = rec["curve"]
        steps = rec["result"]["steps"] if len(rec["result"]["steps"]) > len(steps) else steps
        verdict = "passes" if rec["upper"] < threshold else "fails"
        ax.plot(
            range(len(curve)),
            curve,
            marker="o",
            markersize=3,
            color=cols[i],
            label=f"{method} ({verdict}, {rec['upper']:.3f})",
        )
    if steps:
        upper = math.ceil((len(steps) - 1) / 2)
        ax.axvspan(0.5, upper + 0.5, color="grey", alpha=0.12, label="upper half (verdict)")
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels(steps, rotation=60, ha="right", fontsize=7)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("|Spearman| to the original attributions")
    ax.set_xlabel("layers re-initialized, from the output down (cumulative)")
    ax.set_title("Cascading model randomization (Adebayo et al. 2018)")
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# --------------------------------------------------------------------------- the run


@dataclass
class _Rows:
    """The rows of a run: one per (image, class to explain)."""

    ids: list[str]
    image: Tensor  # long (R,): the image of each row
    slot: Tensor  # long (R,): which of the image's classes
    targets: Tensor  # long (R,)
    masks: Tensor | None  # bool (R, H, W)
    hashes: list[str]  # of each row's image, to recognise saved rows


def _forward_all(model: nn.Module, data: AssessData, device: torch.device, bs: int) -> Tensor:
    from cnnlens.metrics._common import frozen_eval

    outs = []
    with frozen_eval(model):
        for i in range(0, len(data), bs):
            try:
                outs.append(model(data.images[i : i + bs].to(device)))
            except RuntimeError as err:
                lines = str(err).strip().splitlines() or [type(err).__name__]
                shape = "x".join(str(s) for s in data.images.shape[1:])
                raise ModelError(
                    f"the model cannot take the {data.name} images ({shape}): {lines[0]}"
                ) from None
    if not outs or not isinstance(outs[0], Tensor) or outs[0].dim() != 2:
        raise ModelError("assess needs a classifier that returns class scores (B, N)")
    return torch.cat(outs).float().cpu()


def _make_rows(logits: Tensor, data: AssessData, target: str) -> _Rows:
    n, k = data.labels.shape
    num = int(logits.shape[1])
    top = logits.argmax(1).view(-1, 1)
    if target == "predicted":
        if k > 1:
            raise InputError(
                f"target 'predicted' explains one class per image, but {data.name} has {k} "
                "classes per image; use target 'label'"
            )
        labels = top.clone()
    elif target == "label":
        labels = torch.where(data.labels < 0, top.expand(n, k), data.labels)
        if k > 1:  # unknown extra slots of multi-label images are dropped below
            labels = torch.where(data.labels < 0, torch.full_like(labels, -1), labels)
    else:
        raise InputError(f"target must be 'label' or 'predicted', got {target!r}")
    if int(labels.max()) >= num:
        raise TargetError(
            f"the {data.name} labels go up to class {int(labels.max())} but the model has "
            f"{num} outputs (0..{num - 1}); assess a model trained on this dataset"
        )
    image_hash = [_sha(data.images[i]) for i in range(n)]
    keep = [(i, s) for i in range(n) for s in range(k) if int(labels[i, s]) >= 0]
    image = torch.tensor([i for i, _ in keep], dtype=torch.long)
    slot = torch.tensor([s for _, s in keep], dtype=torch.long)
    return _Rows(
        ids=[str(i) if k == 1 else f"{i}.{s}" for i, s in keep],
        image=image,
        slot=slot,
        targets=labels[image, slot].long(),
        masks=data.masks[image, slot] if data.masks is not None else None,
        hashes=[image_hash[i] for i, _ in keep],
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s line %d is incomplete (an interrupted write); recomputed", path, no)
            continue
        if isinstance(rec, dict) and "method" in rec and "row" in rec:
            out.append(rec)
    return out


def _append_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append whole lines in one write, flushed to disk: a crash leaves at most one partial
    last line, which :func:`_read_jsonl` skips."""
    text = "".join(json.dumps(_json_safe(r), allow_nan=False) + "\n" for r in records)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a line cut short by a crash: end it first
                text = "\n" + text
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _check_settings(out: Path, settings: Mapping[str, Any], fresh: bool) -> None:
    """Refuse to mix rows of runs with other global settings (model, metrics, ...)."""
    if fresh:
        for name in ("rows.jsonl", "run.json"):
            (out / name).unlink(missing_ok=True)
        for f in (out / "sanity").glob("*.json") if (out / "sanity").is_dir() else []:
            f.unlink()
        return
    run_file = out / "run.json"
    if not run_file.is_file():
        if (out / "rows.jsonl").is_file():
            raise InputError(
                f"--out {str(out)!r} holds rows.jsonl but no run.json; use another --out or "
                "--fresh to start over"
            )
        return
    try:
        old = json.loads(run_file.read_text(encoding="utf-8")).get("settings", {})
    except (json.JSONDecodeError, AttributeError):
        old = {}
    new = json.loads(json.dumps(_json_safe(dict(settings))))
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise InputError(
            f"--out {str(out)!r} holds an assess run with other settings (differs in: "
            f"{', '.join(diff)}); use another --out, or --fresh to start over"
        )


def _model_card(model: nn.Module, info: Any, data: AssessData, num_classes: int) -> dict[str, Any]:
    card: dict[str, Any] = {
        "arch": getattr(info, "arch", None) or type(model).__name__,
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


class _Run:
    """One assess run: its settings, rows, saved results and output folder."""

    def __init__(
        self,
        model: nn.Module,
        data: AssessData,
        out: Path,
        *,
        methods: list[str],
        metrics: list[str],
        target: str,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        method_options: dict[str, dict[str, Any]],
        metric_options: dict[str, dict[str, Any]],
        sanity_images: int,
        sanity_threshold: float,
    ) -> None:
        from cnnlens.metrics._common import model_device

        self.model, self.data, self.out = model, data, out
        self.methods = methods
        self.metrics = [m for m in metrics if m != SANITY_METRIC]
        self.sanity_methods = methods if SANITY_METRIC in metrics else []
        self.target, self.seed = target, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.m_opts, self.x_opts = method_options, metric_options
        self.sanity_images, self.threshold = sanity_images, sanity_threshold
        self.activation = "sigmoid" if data.multilabel else "softmax"
        self.device = model_device(model, torch.device("cpu"))
        self.model_key = _model_hash(model)
        logits = _forward_all(model, data, self.device, eval_batch_size)
        self.num_classes = int(logits.shape[1])
        self.rows = _make_rows(logits, data, target)
        self.opt_keys = {m: _sha(method_options.get(m, {})) for m in [*methods, *BASELINES]}
        self.done: dict[tuple[str, str], dict[str, Any]] = {}
        self.sanity: dict[str, dict[str, Any]] = {}
        self.skipped: dict[str, str] = {}
        self.computed = 0

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "model": self.model_key,
            "dataset": self.data.name,
            "metrics": self.metrics,
            "metric_options": self.x_opts,
            "activation": self.activation,
            "seed": int(self.seed),
            "target": self.target,
        }

    def _valid(self, rec: Mapping[str, Any] | None, method: str, i: int) -> bool:
        return (
            rec is not None
            and rec.get("image_hash") == self.rows.hashes[i]
            and rec.get("target") == int(self.rows.targets[i])
            and rec.get("options") == self.opt_keys[method]
            and all(m in (rec.get("scores") or {}) for m in self.metrics)
        )

    def resume(self, fresh: bool) -> dict[str, list[int]]:
        """Read saved rows back; the rows still to compute per method."""
        self.out.mkdir(parents=True, exist_ok=True)
        _check_settings(self.out, self.settings, fresh)
        for rec in _read_jsonl(self.out / "rows.jsonl"):
            self.done[(rec["method"], rec["row"])] = rec
        _write_json(
            self.out / "run.json",
            {
                "settings": self.settings,
                "methods": self.methods,
                "method_options": self.m_opts,
                "n_images": len(self.data),
                "rows": len(self.rows.ids),
            },
        )
        return {
            m: [
                i
                for i, rid in enumerate(self.rows.ids)
                if not self._valid(self.done.get((m, rid)), m, i)
            ]
            for m in [*self.methods, *BASELINES]
        }

    def _batch(self, idx: Sequence[int]) -> tuple[Tensor, Tensor, Tensor | None, list[str]]:
        sel = torch.tensor(list(idx), dtype=torch.long)
        x = self.data.images[self.rows.image[sel]].to(self.device)
        t = self.rows.targets[sel].to(self.device)
        m = self.rows.masks[sel].to(self.device) if self.rows.masks is not None else None
        return x, t, m, [self.rows.ids[i] for i in idx]

    def score(self, method: str, idx: Sequence[int]) -> int:
        """Explain and score one batch of rows with one method; append them to rows.jsonl."""
        x, t, masks, ids = self._batch(idx)
        maps = _method_maps(self.model, method, x, t, ids, self.seed, self.m_opts.get(method, {}))
        bad = ~torch.isfinite(maps).flatten(1).all(1)
        if bool(bad.any()):
            shown = [ids[j] for j in bad.nonzero().flatten().tolist()][:10]
            warnings.warn(
                f"method {method} gave maps with NaN or infinite values for row(s) {shown}; "
                "their scores are left out",
                stacklevel=3,
            )
            maps = torch.where(bad.view(-1, 1, 1), torch.zeros_like(maps), maps)
        scores, curves = _score_batch(
            self.model,
            x,
            maps,
            t,
            masks,
            self.metrics,
            self.x_opts,
            self.activation,
            self.eval_batch_size,
        )
        records = []
        for j, i in enumerate(idx):
            ok = not bool(bad[j])
            rec = {
                "method": method,
                "row": ids[j],
                "image": int(self.rows.image[i]),
                "target": int(self.rows.targets[i]),
                "image_hash": self.rows.hashes[i],
                "options": self.opt_keys[method],
                "scores": {k: _finite(v[j]) if ok else None for k, v in scores.items()},
                "curves": {
                    k: [round(float(p), 5) for p in c[j].tolist()] for k, c in curves.items() if ok
                },
            }
            self.done[(method, ids[j])] = rec
            records.append(rec)
        _append_jsonl(self.out / "rows.jsonl", records)
        self.computed += len(records)
        return len(records)

    def sanity_inputs(self) -> tuple[Tensor, Tensor]:
        """The sanity check's images: the first ``sanity_images`` images, one class each."""
        first = [i for i in range(len(self.rows.ids)) if int(self.rows.slot[i]) == 0]
        x, t, _, _ = self._batch(first[: self.sanity_images])
        return x, t

    def check(self, method: str, x: Tensor, t: Tensor) -> None:
        """The cascading randomization of one method, read back when saved."""
        from cnnlens.viz import save_png

        path = self.out / "sanity" / f"{_slug(method)}.json"
        key = _sha(x, t, self.seed, self.threshold, self.opt_keys[method], self.model_key, _FORMAT)
        rec = None
        if path.is_file():
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                rec = None
        if (
            not rec
            or rec.get("method") != method
            or rec.get("key") != key
            or not (self.out / rec.get("figure", "")).is_file()
        ):
            res = _sanity_one(
                self.model,
                x,
                t,
                method,
                seed=self.seed,
                threshold=self.threshold,
                options=self.m_opts.get(method, {}),
            )
            fig = f"figures/sanity_{_slug(method)}.png"
            save_png(res.plot(), self.out / fig)
            upper = upper_similarity(res)
            curve = getattr(res, res.criterion).abs().mean(dim=1)
            rec = {
                "method": method,
                "key": key,
                "result": res.to_dict(),
                "upper_per_image": [_finite(v) for v in upper.tolist()],
                "upper": float(upper.mean()),
                "curve": [round(float(v), 5) for v in curve.tolist()],
                "figure": fig,
            }
            _write_json(path, rec)
        self.sanity[method] = rec

    # ---- outputs

    def table(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The summary rows and the table's columns."""
        from cnnlens.metrics import summarize

        per_method: dict[str, dict[str, Tensor]] = {}
        for method in self.active:
            recs = [self.done[(method, r)] for r in self.rows.ids if (method, r) in self.done]
            per_method[method] = {
                m: torch.tensor(
                    [float("nan") if r["scores"].get(m) is None else r["scores"][m] for r in recs],
                    dtype=torch.float64,
                )
                for m in self.metrics
            }
            if method in self.sanity:
                vals = self.sanity[method]["upper_per_image"]
                per_method[method][SANITY_METRIC] = torch.tensor(
                    [float("nan") if v is None else v for v in vals], dtype=torch.float64
                )
        binary = {m: {k: v for k, v in d.items() if k in _HITS} for m, d in per_method.items()}
        other = {m: {k: v for k, v in d.items() if k not in _HITS} for m, d in per_method.items()}
        found = summarize(other) + summarize(binary, interval="bootstrap", seed=self.seed)
        order = {m: i for i, m in enumerate(self.active)}
        cols = {m: i for i, m in enumerate([*self.metrics, SANITY_METRIC])}
        rows = sorted(found, key=lambda r: (order[r["method"]], cols[r["metric"]]))
        for r in rows:
            if r["metric"] == SANITY_METRIC:
                r["family"], r["higher_is_better"] = "sanity", False
        return rows, [*self.metrics, *([SANITY_METRIC] if self.sanity else [])]

    @property
    def active(self) -> list[str]:
        return [m for m in [*self.methods, *BASELINES] if m not in self.skipped]

    def verdicts(self) -> list[Any]:
        return [
            _verdict(
                m,
                r["upper"],
                r["result"]["final"],
                r["result"]["threshold"],
                len(r["result"]["steps"]) - 1,
            )
            for m, r in self.sanity.items()
        ]

    def curves(self) -> dict[str, dict[str, Tensor]]:
        out: dict[str, dict[str, Tensor]] = {}
        for method in self.active:
            recs = [self.done[(method, r)] for r in self.rows.ids if (method, r) in self.done]
            out[method] = {}
            for name in _CURVES:
                cs = [r["curves"][name] for r in recs if name in r.get("curves", {})]
                if cs and len({len(c) for c in cs}) == 1:
                    out[method][name] = torch.tensor(cs, dtype=torch.float64)
        return out

    def examples_figure(self, count: int) -> Any:
        """The first ``count`` rows explained by every method, with the ground truth."""
        from cnnlens.viz import methods_grid

        idx = list(range(min(count, len(self.rows.ids))))
        methods = [m for m in self.methods if m not in self.skipped]
        if not idx or not methods:
            return None
        x, t, masks, ids = self._batch(idx)
        maps: dict[str, Any] = {}
        if masks is not None:
            maps["ground truth"] = list(masks.float().cpu())
        for method in methods:
            try:
                m = _method_maps(
                    self.model, method, x, t, ids, self.seed, self.m_opts.get(method, {})
                )
            except CnnlensError as err:
                logger.info("no example maps for %s: %s", method, err)
                continue
            maps[method] = list(m.cpu())
        names = self.data.classes
        labels = [names[c] if 0 <= c < len(names) else str(c) for c in t.tolist()]
        return methods_grid(
            list(x.cpu()),
            maps,
            preset=self.data.preset,
            image_labels=labels,
            title="The first rows: the class explained above each column",
        )


def _write_outputs(
    run: _Run, *, examples: int, model_info: Any, title: str | None
) -> tuple[list[dict[str, Any]], list[str], list[Any], dict[str, Path]]:
    from cnnlens.report import build_report, write_results
    from cnnlens.viz import save_png

    out = run.out
    table, columns = run.table()
    verdicts = run.verdicts()
    files: dict[str, Path] = {
        "table_md": _write_text(out / "table.md", _markdown(table, columns)),
        "table_csv": _write_text(out / "table.csv", _csv(table)),
    }
    files["table_json"] = _write_json(
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
                    "method": v.method,
                    "check": v.check,
                    "passed": v.passed,
                    "detail": v.detail,
                    "steps": run.sanity[v.method]["result"]["steps"],
                    "similarity": run.sanity[v.method]["curve"],
                }
                for v in verdicts
            ],
            "settings": run.settings,
            "method_options": run.m_opts,
        },
    )
    figures: list[dict[str, str]] = []

    def figure(fig: Any, name: str, caption: str) -> None:
        if fig is not None:
            files[name] = save_png(fig, out / "figures" / f"{name}.png")
            figures.append({"png": f"figures/{name}.png", "caption": caption})

    curves = run.curves()
    if any(curves.values()):
        figure(
            _curves_figure(curves),
            "curves",
            "Mean deletion and insertion curves over the rows (Petsiuk et al. 2018); the "
            "baselines are drawn in black, the area under each curve is in brackets.",
        )
    if run.sanity:
        figure(
            _sanity_figure(run.sanity, run.threshold),
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
    values_rows = []
    for method in run.active:
        values = {}
        for r in table:
            if r["method"] == method and math.isfinite(r["mean"]):
                ci = (r["high"] - r["low"]) / 2 if math.isfinite(r["high"]) else None
                values[r["metric"]] = {"mean": r["mean"], "ci": ci, "n": int(r["n"])}
        values_rows.append({"method": method, "values": values})
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
            f"passes below {run.threshold:g})."
        )
    if run.skipped:
        notes += f" Not applicable to this model: {', '.join(run.skipped)}."
    arch = getattr(model_info, "arch", None) or type(run.model).__name__
    results = {
        "title": title or f"cnnlens assess: {arch} on {run.data.name}",
        "model": _model_card(run.model, model_info, run.data, run.num_classes),
        "images": [],
        "metrics": {
            "metrics": columns,
            "rows": values_rows,
            "higher_is_better": {m: d for m in columns if (d := metric_direction(m)) is not None},
            "ci_level": 0.95,
            "figures": figures,
            "notes": notes,
        },
        "sanity": [
            {"method": v.method, "check": v.check, "passed": v.passed, "detail": v.detail}
            for v in verdicts
        ],
    }
    files["results"] = write_results(out, _json_safe(results))
    files["report"] = build_report(out)
    return table, columns, verdicts, files


def _check_count(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


def assess(
    model: nn.Module,
    data: AssessData | str,
    out: str | os.PathLike[str],
    *,
    methods: Sequence[str] | str = "all",
    metrics: Sequence[str] | str = "all",
    n: int | None = 200,
    target: str = "label",
    batch_size: int = 16,
    eval_batch_size: int = 128,
    seed: int = 0,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    sanity_images: int = 8,
    sanity_threshold: float = 0.5,
    examples: int = 3,
    model_info: Any = None,
    title: str | None = None,
    progress: bool = False,
    fresh: bool = False,
    echo: Callable[[str], Any] | None = None,
) -> AssessResult:
    """Benchmark explanation methods on a dataset: every method x metric, with 95% CIs.

    Each image contributes one row per class to explain (two for ``shapes-pair``). A row
    is explained by every method and by the ``random`` and ``centre`` baselines, and each
    map is scored with every metric (see :data:`cnnlens.metrics.METRICS`; the localization
    metrics against the row's own mask). The table gives the mean over rows with its 95%
    Student-t interval,

    $$\\bar s \\pm t_{0.975,\\,n-1} \\frac{s}{\\sqrt n}.$$

    The run resumes: rows already in ``out/rows.jsonl`` (same model, metrics and options,
    same image and class) are read back instead of computed, and an interrupted run keeps
    every batch it finished.

    Args:
        model: the classifier (never changed).
        data: an :class:`AssessData` (see :func:`load_data`) or a dataset name.
        out: the output folder.
        methods: registry names, comma lists or ``"all"``.
        metrics: names from :data:`ASSESS_METRICS` or ``"all"`` (every metric that applies:
            the localization metrics only with masks).
        n: images to assess (the first ``n``; all when None). More than the dataset holds
            gives a warning and uses all.
        target: ``"label"`` (the ground-truth class, the one the mask shows) or
            ``"predicted"`` (the model's top class).
        batch_size: rows explained together.
        eval_batch_size: perturbed images per forward pass in the metrics.
        seed: seed of the random baseline, the sanity check and the stochastic metrics.
        method_options: per-method options (e.g. :func:`light_options`).
        metric_options: per-metric options, e.g. ``{"deletion": {"step": 64}}``. The
            pointing game's ``tolerance`` defaults to :data:`POINTING_TOLERANCE` times the
            shorter image side (the protocol of Zhang et al.; give 0 for none), the
            deletion's ``substrate`` to :data:`DELETION_SUBSTRATE`.
        sanity_images: images for the sanity check (0 skips it).
        sanity_threshold: the sanity check's threshold on the final similarity.
        examples: rows shown with every method's map in ``figures/examples.png``.
        model_info: the model's ``ModelInfo`` (for the report's model card).
        title: the report's title.
        progress: show a progress bar.
        fresh: discard the rows of an earlier run in ``out``.
        echo: called with one line per stage (the CLI prints them).

    Returns:
        An :class:`AssessResult`.

    Raises:
        InputError: unknown method or metric, ``out`` holding a run with other settings.
        ModelError: a model that does not take the images.
        TargetError: labels the model has no output for.
    """
    from cnnlens.metrics import METRICS

    t0 = time.perf_counter()
    say = echo or (lambda _msg: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out {str(out)!r} exists and is not a folder")
    _check_count("batch_size", batch_size, 1)
    _check_count("eval_batch_size", eval_batch_size, 1)
    _check_count("sanity_images", sanity_images, 0)
    _check_count("examples", examples, 0)
    if n is not None:
        _check_count("n", n, 1)
    if isinstance(data, str):
        data = load_data(data, model_info=model_info, n=n)
    if len(data) == 0:
        raise DataError(f"dataset {data.name!r} holds no images")
    if n is not None and n > len(data):
        warnings.warn(
            f"n={n} is larger than the {data.name} dataset ({len(data)} images); "
            f"assessing all {len(data)}",
            stacklevel=2,
        )
    data = data.head(n) if n is not None else data
    method_names = resolve_methods(methods)
    x_opts = _split_options(metric_options, list(METRICS), "metric")
    _check_metric_options(x_opts)
    # the pointing game's protocol: 15 pixels at 224, scaled to the images
    x_opts.setdefault("pointing_game", {}).setdefault(
        "tolerance", round(POINTING_TOLERANCE * min(data.images.shape[-2:]), 2)
    )
    # deleted pixels become the blurred image, as inserted ones start from it
    x_opts.setdefault("deletion", {}).setdefault("substrate", DELETION_SUBSTRATE)
    run = _Run(
        model,
        data,
        out,
        methods=method_names,
        metrics=_resolve_metrics(metrics, data.masks is not None, sanity_images > 0),
        target=target,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        method_options=_split_options(method_options, method_names, "method"),
        metric_options=x_opts,
        sanity_images=sanity_images,
        sanity_threshold=sanity_threshold,
    )
    if run.rows.masks is not None:
        empty = ~run.rows.masks.flatten(1).any(1)
        if bool(empty.any()):
            ids = [run.rows.ids[i] for i in empty.nonzero().flatten().tolist()]
            warnings.warn(
                f"{len(ids)} of {len(run.rows.ids)} rows have an empty ground-truth mask "
                f"({ids[:10]}); their localization scores are left out",
                stacklevel=2,
            )
    pending = run.resume(fresh)
    rows = len(run.rows.ids)
    reused = sum(rows - len(p) for p in pending.values())
    total = sum(len(p) for p in pending.values()) + len(run.sanity_methods)
    say(
        f"assessing {len(method_names)} methods + {len(BASELINES)} baselines on {rows} rows "
        f"of {data.name} ({len(run.metrics)} metrics"
        + (", sanity check" if run.sanity_methods else "")
        + ")"
        + (f"; {reused} rows read back from {out / 'rows.jsonl'}" if reused else "")
    )
    from cnnlens.core.progress import progress_bar

    with progress_bar(progress, total, "assessing") as bar:
        for method, todo in pending.items():
            bar.describe(f"assessing: {method}")
            for start in range(0, len(todo), batch_size):
                try:
                    bar.advance(run.score(method, todo[start : start + batch_size]))
                except ModelError as err:
                    logger.warning("method %s skipped: %s", method, err)
                    run.skipped[method] = str(err)
                    bar.advance(len(todo) - start)
                    break
        if run.sanity_methods:
            x, t = run.sanity_inputs()
            for method in run.sanity_methods:
                bar.describe(f"sanity check: {method}")
                if method not in run.skipped:
                    try:
                        run.check(method, x, t)
                    except ModelError as err:
                        logger.warning("sanity check of %s skipped: %s", method, err)
                        run.skipped[method] = str(err)
                bar.advance()
    table, columns, verdicts, files = _write_outputs(
        run, examples=examples, model_info=model_info, title=title
    )
    result = AssessResult(
        out=out,
        rows=table,
        sanity=verdicts,
        methods=[m for m in method_names if m not in run.skipped],
        metrics=columns,
        methods_skipped=dict(run.skipped),
        computed=run.computed,
        reused=reused,
        files=files,
        seconds=time.perf_counter() - t0,
    )
    say(f"{run.computed} rows computed, {reused} read back, in {result.seconds:.1f} s")
    return result
