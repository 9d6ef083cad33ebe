"""Pictures and files of prototypes and activation-maximization results.

Figures are drawn with :func:`cnnlens.viz.grid`; files are written atomically (each one via a
temporary file and ``os.replace``, and only after every picture has been rendered, so an error
leaves nothing half-written).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from cnnlens.errors import DataError
from cnnlens.prototypes.class_prototypes import PrototypeResult, class_means, class_prototypes
from cnnlens.prototypes.maximize import VisualizationResult


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"


def _upscale(size: tuple[int, int], min_side: int) -> int:
    return max(1, -(-min_side // min(size)))


def to_pil(image: Tensor, *, min_side: int = 112) -> Image.Image:
    """A display-space image (C, H, W) in [0, 1] as a PIL image, enlarged by an integer
    factor (nearest neighbour) until its shorter side is at least ``min_side`` pixels."""
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    arr_np = arr.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr_np[..., 0] if arr_np.shape[2] == 1 else arr_np)
    k = _upscale(img.size, min_side)
    return img.resize((img.width * k, img.height * k), Image.NEAREST) if k > 1 else img


def diff_pil(diff: Tensor, *, min_side: int = 112, cmap: str = "bwr") -> Image.Image:
    """A signed change (C, H, W) (channel mean) in a diverging colormap, white at 0, the
    largest absolute change at the ends (red: brighter than the start, blue: darker)."""
    from cnnlens.viz import colorize

    d = diff.detach().float().cpu().mean(0).numpy()
    m = float(np.abs(d).max()) or 1.0
    rgb = colorize(0.5 + 0.5 * d / m, cmap)
    img = Image.fromarray((rgb * 255).round().astype(np.uint8))
    k = _upscale(img.size, min_side)
    return img.resize((img.width * k, img.height * k), Image.NEAREST) if k > 1 else img


def _caption(name: str, prob: float) -> str:
    from cnnlens.viz import label_with_prob

    return label_with_prob(name, prob)


def _rows(items: list[Any], max_cols: int) -> list[list[Any]]:
    """Items in rows of at most ``max_cols``, the rows as even as possible (10 -> 5 + 5)."""
    n_rows = -(-len(items) // max_cols)
    ncol = -(-len(items) // n_rows)
    return [items[i : i + ncol] for i in range(0, len(items), ncol)]


def prototype_figure(result: PrototypeResult, *, max_cols: int = 6) -> Figure:
    """Prototypes with their class and final probability; from a start image, three rows:
    the start, the prototype and the change (diverging colours, symmetric range)."""
    from cnnlens.viz import Panel, grid

    captions = [
        _caption(n, p) for n, p in zip(result.class_names, result.probs.tolist(), strict=True)
    ]
    title = f"class prototypes ({result.init} start, λ = {result.lam:g}, {result.steps} steps)"
    if result.init != "image":
        cells = [Panel(img, caption=cap) for img, cap in zip(result.images, captions, strict=True)]
        return grid(_rows(cells, max_cols), title=title)
    cols = list(range(len(result.classes)))
    m = float(result.diff.mean(1).abs().max()) or 1.0
    cells = [
        [Panel(result.start[i]) for i in cols],
        [Panel(result.images[i], caption=captions[i]) for i in cols],
        [
            Panel(
                result.diff[i].mean(0),
                caption=f"max |Δ| = {float(result.diff[i].mean(0).abs().max()):.2f}",
                cmap="bwr",
                vmin=-m,
                vmax=m,
            )
            for i in cols
        ],
    ]
    return grid(
        cells,
        row_labels=["start", "prototype", "change"],
        col_labels=[f"→ {n}" for n in result.class_names],
        title=title,
    )


def visualization_figure(result: VisualizationResult, *, max_cols: int = 8) -> Figure:
    """Activation-maximization images in a grid, captioned with their class and probability
    (class objectives) or their label and objective value."""
    from cnnlens.viz import Panel, grid

    probs = result.class_probs()
    if probs is not None:
        captions = [_caption(label, p) for label, p in zip(result.labels, probs, strict=True)]
    else:
        captions = [f"{lab} = {float(v):.3g}" for lab, v in zip(result.labels, result.values)]
    cells = [Panel(img, caption=cap) for img, cap in zip(result.images, captions, strict=True)]
    return grid(_rows(cells, max_cols), title=result.objective)


def _write_all(files: dict[Path, bytes], base: Path) -> dict[str, Path]:
    """Write every file atomically; keys of the result are paths relative to ``base``."""
    from cnnlens.viz import atomic_write

    return {
        path.relative_to(base).as_posix(): atomic_write(path, data) for path, data in files.items()
    }


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def _prototype_files(result: PrototypeResult, out: Path) -> dict[Path, bytes]:
    from cnnlens.viz import to_png_bytes

    files: dict[Path, bytes] = {out / "grid.png": to_png_bytes(prototype_figure(result))}
    for i, (c, name) in enumerate(zip(result.classes, result.class_names, strict=True)):
        stem = f"{c:02d}_{_slug(name)}"
        files[out / f"class_{stem}.png"] = to_png_bytes(to_pil(result.images[i]))
        if result.init == "image":
            files[out / f"change_{stem}.png"] = to_png_bytes(diff_pil(result.diff[i]))
    if result.init == "image":
        files[out / "start.png"] = to_png_bytes(to_pil(result.start[0]))
    files[out / "prototypes.json"] = _json_bytes(result.to_dict())
    return files


def save_prototypes(result: PrototypeResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``grid.png``, one ``class_<i>_<name>.png`` per class, ``prototypes.json`` and, from
    a start image, ``start.png`` and one ``change_<i>_<name>.png`` per class.

    Everything is rendered first and each file is written atomically.

    Returns:
        File name -> path written.
    """
    out = Path(out_dir)
    return _write_all(_prototype_files(result, out), out)


def save_visualizations(result: VisualizationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``grid.png``, one PNG per image and ``visualizations.json`` (atomically)."""
    from cnnlens.viz import to_png_bytes

    out = Path(out_dir)
    files: dict[Path, bytes] = {out / "grid.png": to_png_bytes(visualization_figure(result))}
    for i, (img, label) in enumerate(zip(result.images, result.labels, strict=True)):
        files[out / f"image_{i:03d}_{_slug(label)}.png"] = to_png_bytes(to_pil(img))
    files[out / "visualizations.json"] = _json_bytes(result.to_dict())
    return _write_all(files, out)


@dataclass
class PrototypeDemo:
    """The demo's prototypes: every class from zeros, and one start image turned into others.

    Attributes:
        all_classes: the prototypes of every class from an all-black start.
        from_image: the prototypes of ``targets`` starting from one training image.
        source_index: the training-set index of that image.
    """

    all_classes: PrototypeResult
    from_image: PrototypeResult
    source_index: int
    figures: dict[str, Figure] = field(default_factory=dict)

    def pictures(self) -> list[Any]:
        """The pictures for :func:`cnnlens.report.write_report`'s ``prototypes`` section: each
        class prototype, then the from-image figure."""
        from cnnlens.report.content import Prototype

        res = self.all_classes
        pics = [
            Prototype(
                image=to_pil(img),
                caption=_caption(name, prob),
                class_name=name,
                index=c,
            )
            for img, c, name, prob in zip(
                res.images, res.classes, res.class_names, res.probs.tolist(), strict=True
            )
        ]
        src = self.from_image.class_names
        pics.append(
            Prototype(
                image=self.figures["from_image"],
                caption=f"starting from training image {self.source_index}: what makes it "
                f"{' or '.join(src)}? (start, prototype, change)",
                class_name=", ".join(src),
            )
        )
        return pics

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write both result sets (``out_dir/all/...`` and ``out_dir/from_image/...``, see
        :func:`save_prototypes`); returns relative path -> path written."""
        out = Path(out_dir)
        files = _prototype_files(self.all_classes, out / "all")
        files.update(_prototype_files(self.from_image, out / "from_image"))
        return _write_all(files, out)


def demo_prototypes(
    model: nn.Module,
    train_set: Dataset,
    *,
    preset: Any = None,
    class_names: list[str] | None = None,
    source_class: int = 8,
    targets: tuple[int, ...] = (3, 1),
    source_index: int | None = None,
    **options: Any,
) -> PrototypeDemo:
    """Compute the demo's prototypes: all classes from zeros, and ``source_class`` -> each of
    ``targets`` from the first training image of ``source_class`` (or ``source_index``).

    ``train_set`` yields normalized images and integer labels (``preset`` inverts them for
    display; default: ``train_set.preset``). Further options go to
    :func:`~cnnlens.prototypes.class_prototypes`.
    """
    preset = preset if preset is not None else getattr(train_set, "preset", None)
    names = class_names or list(getattr(train_set, "classes", []) or []) or None
    means = class_means(train_set)
    if source_index is None:
        labels = _labels(train_set)
        hits = (labels == source_class).nonzero().flatten()
        if hits.numel() == 0:
            raise DataError(f"the training set has no image of class {source_class}")
        source_index = int(hits[0])
    from cnnlens.prototypes._util import preset_for

    image = train_set[source_index][0]
    start = preset_for(preset, image.shape[0]).denormalize(image.float()).clamp(0, 1)
    common = {"prior": means, "preset": preset, "class_names": names, **options}
    everything = class_prototypes(model, None, init="zeros", **common)
    turned = class_prototypes(model, list(targets), init=start, **common)
    return PrototypeDemo(
        all_classes=everything,
        from_image=turned,
        source_index=source_index,
        figures={"all": prototype_figure(everything), "from_image": prototype_figure(turned)},
    )


def _labels(dataset: Dataset) -> Tensor:
    if hasattr(dataset, "tensors"):
        return torch.as_tensor(dataset.tensors()[1])
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]
