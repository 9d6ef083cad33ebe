"""The data of an assessment: images with the classes to explain and their masks, and the
rows (one per image and class) the run scores.

The datasets: ``shapes`` (one shape per image, its mask), ``shapes-pair`` (two shapes per
image: each image gives two rows, one per class, each scored against its own shape's mask),
any other :func:`cnnlens.data.get_dataset` name without masks (faithfulness, complexity and
sanity only, e.g. ``mnist-embedded``), and ``folder`` (your images with a parallel folder
of binary mask PNGs, see :func:`cnnlens.data.load_masked_folder`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.data.masked import MaskedImages, load_masked_folder
from cnnlens.errors import DataError, InputError, ModelError, TargetError

__all__ = ["AssessData", "Rows", "forward_all", "load_data", "make_rows"]

#: Images with the classes to explain and their masks (:class:`cnnlens.data.MaskedImages`).
AssessData = MaskedImages


def _takes(loader: Callable[..., Any], name: str) -> bool:
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
    labels, masks = _labels_and_masks(ds, y, count)
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


@dataclass
class Rows:
    """The rows of a run: one per (image, class to explain)."""

    ids: list[str]
    image: Tensor  # long (R,): the image of each row
    slot: Tensor  # long (R,): which of the image's classes
    targets: Tensor  # long (R,)
    masks: Tensor | None  # bool (R, H, W)
    hashes: list[str]  # of each row's image, to recognise saved rows


def forward_all(model: nn.Module, data: AssessData, device: torch.device, bs: int) -> Tensor:
    """The model's class scores for every image, float (N, classes) on the CPU.

    Raises:
        ModelError: a model that does not take the images or does not return (B, N) scores.
    """
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


def make_rows(logits: Tensor, data: AssessData, target: str) -> Rows:
    """One row per image and class to explain: the label (``target="label"``; the top
    class where unknown) or the model's top class (``"predicted"``).

    Raises:
        InputError: an unknown ``target``, or ``"predicted"`` with several classes per image.
        TargetError: labels the model has no output for.
    """
    from cnnlens.assess.store import sha

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
    image_hash = [sha(data.images[i]) for i in range(n)]
    keep = [(i, s) for i in range(n) for s in range(k) if int(labels[i, s]) >= 0]
    image = torch.tensor([i for i, _ in keep], dtype=torch.long)
    slot = torch.tensor([s for _, s in keep], dtype=torch.long)
    return Rows(
        ids=[str(i) if k == 1 else f"{i}.{s}" for i, s in keep],
        image=image,
        slot=slot,
        targets=labels[image, slot].long(),
        masks=data.masks[image, slot] if data.masks is not None else None,
        hashes=[image_hash[i] for i, _ in keep],
    )


def _labels_and_masks(ds: Any, y: Tensor, count: int) -> tuple[Tensor, Tensor | None]:
    """The classes to explain (N, K) and their masks (N, K, H, W) or None, of a dataset."""
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
    return labels, masks
