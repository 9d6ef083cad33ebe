"""The in-memory image dataset every built-in dataset is: raw pixels + targets + metadata."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from cnnlens.data.presets import Preset, get_preset, to_image
from cnnlens.errors import InputError

__all__ = ["ImageTensorDataset"]


class ImageTensorDataset(Dataset):
    """Images held in memory as raw pixels, normalized on the fly.

    ``dataset[i]`` returns ``(image, target)`` with ``image`` a float32 tensor (C, H, W)
    normalized by ``dataset.preset`` and ``target`` a long scalar (single-label) or a float
    multi-hot vector (multi-label). For speed, training loops use :meth:`get_batch` (index
    many at once) or :meth:`tensors` (everything at once) instead of a DataLoader.

    Attributes:
        name: dataset name (``"mnist-embedded"``, ``"shapes"``, ...).
        split: ``"train"``, ``"test"`` or ``"all"``.
        classes: class names, index = label.
        preset: the :class:`~cnnlens.data.presets.Preset` images are normalized with.
        multilabel: True when targets are multi-hot float vectors.
        images: raw pixels (N, C, H, W), uint8 in 0..255 or float in [0, 1].
        targets: (N,) long labels or (N, K) float multi-hot targets.

    Example:
        >>> ds = get_dataset("mnist-embedded", split="test")      # doctest: +SKIP
        >>> x, y = ds[0]; x.shape, ds.classes[int(y)]
        (torch.Size([1, 28, 28]), '7')
    """

    #: names of extra per-sample tensors (first dimension N) that :meth:`subset` carries over
    _per_sample: tuple[str, ...] = ()

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        classes: Sequence[str],
        preset: str | Preset,
        *,
        name: str,
        split: str,
        multilabel: bool = False,
    ) -> None:
        if images.dim() != 4:
            raise InputError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if len(targets) != len(images):
            raise InputError(f"got {len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.classes = list(classes)
        self.preset = get_preset(preset)
        self.name = name
        self.split = split
        self.multilabel = multilabel

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        i = operator.index(index)
        if i < -len(self) or i >= len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        return self.preset.normalize(self._unit(self.images[i])), self.targets[i]

    def __repr__(self) -> str:
        c, h, w = self.sample_shape
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape=({c}, {h}, {w}), classes={len(self.classes)}, preset={self.preset.name!r})"
        )

    @staticmethod
    def _unit(raw: Tensor) -> Tensor:
        if raw.dtype == torch.uint8:
            return raw.float().div_(255.0)
        return raw.float()

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def in_channels(self) -> int:
        """Number of image channels."""
        return self.sample_shape[0]

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the images."""
        return self.sample_shape[1], self.sample_shape[2]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def get_batch(self, indices: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        """Normalized images (B, C, H, W) and targets for many indices at once."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.preset.normalize(self._unit(self.images[idx])), self.targets[idx]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images, normalized, as one float32 tensor (N, C, H, W), and all targets."""
        return self.preset.normalize(self._unit(self.images)), self.targets

    def image(self, index: int) -> Image.Image:
        """Image ``index`` as a PIL image (original pixels, for display)."""
        return to_image(self._unit(self.images[index]))

    def subset(self, indices: Tensor | Sequence[int]) -> ImageTensorDataset:
        """A dataset of the same kind holding only ``indices`` (in that order)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.images = self.images[idx]
        new.targets = self.targets[idx]
        for field in self._per_sample:
            setattr(new, field, getattr(self, field)[idx])
        return new
