"""The ``folder`` dataset: the user's own images in class subfolders (ImageFolder layout)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cnnlens.data.base import ImageTensorDataset
from cnnlens.data.embedded import stratified_split
from cnnlens.data.io import IMAGE_EXTENSIONS, load_image
from cnnlens.data.presets import Preset, get_preset, to_tensor
from cnnlens.errors import DataError, ImageError, InputError

__all__ = ["FolderDataset", "load_folder"]

logger = logging.getLogger(__name__)


class FolderDataset(ImageTensorDataset):
    """Images from ``root/<class>/<file>`` (class = subfolder name, sorted), read once with
    :func:`~cnnlens.data.io.load_image`, resized to ``size`` and kept in memory as uint8.

    ``files`` lists each image's path. Unreadable files are skipped with a warning.
    """

    files: list[Path]

    def subset(self, indices: Tensor | Sequence[int]) -> FolderDataset:
        """A dataset holding only ``indices`` (in that order), with their file paths."""
        new = super().subset(indices)
        assert isinstance(new, FolderDataset)
        new.files = [self.files[int(i)] for i in torch.as_tensor(indices, dtype=torch.long)]
        return new


def _class_files(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = []
    for label, cls in enumerate(classes):
        for f in sorted((folder / cls).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((f, label))
    return classes, items


def load_folder(
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    size: int | tuple[int, int] = 224,
    channels: int = 3,
    preset: str | Preset = "imagenet",
    crop: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> FolderDataset:
    """Read an ImageFolder-style tree.

    If ``root`` has ``train/`` and ``test/`` (or ``val/``) subfolders, the split's subfolder
    is read. Otherwise ``root`` holds the class folders directly and is split
    deterministically (stratified, ``test_fraction`` of each class to ``test``, ``seed``);
    ``split="all"`` takes every image.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        root: the folder.
        size: images are resized to this (int or (H, W)), see :func:`to_tensor`.
        channels: 1 (greyscale) or 3 (RGB).
        preset: normalization preset.
        crop: resize-then-centre-crop instead of a plain resize.
        test_fraction: share of each class held out when there are no split folders.
        seed: seed of that split.

    Raises:
        DataError: ``root`` missing, no class folders, or no readable image.
    """
    if root is None:
        raise DataError("dataset 'folder' needs root= (--data-dir): a folder of class subfolders")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"data directory {str(base)!r} does not exist or is not a folder")
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels!r}")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    split_dirs = {"train": ["train"], "test": ["test", "val"]}.get(split, [])
    folder = next((base / d for d in split_dirs if (base / d).is_dir()), None)
    has_split_dirs = (base / "train").is_dir()
    if folder is None:
        if has_split_dirs and split != "all":
            raise DataError(f"data directory {str(base)!r} has no {split!r} subfolder")
        folder = base
    classes, items = _class_files(folder)
    if not classes:
        raise DataError(
            f"data directory {str(folder)!r} has no class subfolders "
            f"(expected {folder}/<class name>/<image files>)"
        )
    p = get_preset(preset)
    tensors, labels, files = [], [], []
    for f, label in items:
        try:
            img = load_image(f, mode="L" if channels == 1 else "RGB")
        except ImageError as err:
            warnings.warn(f"skipping {err}", stacklevel=3)
            continue
        x = to_tensor(img, size=size, channels=channels, crop=crop)  # in [0, 1]
        tensors.append((x * 255.0).round_().to(torch.uint8))
        labels.append(label)
        files.append(f)
    if not tensors:
        raise DataError(
            f"data directory {str(folder)!r} has no readable image in its class folders "
            f"({', '.join(classes[:5])}); image files end in {', '.join(IMAGE_EXTENSIONS)}"
        )
    y = np.asarray(labels, dtype=np.int64)
    keep = np.arange(len(y))
    if folder is base and split != "all":
        train_idx, test_idx = stratified_split(y, test_fraction, seed)
        keep = train_idx if split == "train" else test_idx
        if len(keep) == 0:
            raise DataError(
                f"data directory {str(folder)!r} has too few images ({len(y)}) to hold out a "
                f"{split!r} split; add images or use split='all'"
            )
    ds = FolderDataset(
        torch.stack([tensors[i] for i in keep]),
        torch.from_numpy(y[keep]),
        classes,
        p,
        name="folder",
        split=split,
    )
    ds.files = [files[i] for i in keep]
    ds.root = folder
    logger.info("folder %s (%s): %d images, %d classes", folder, split, len(ds), len(classes))
    return ds
