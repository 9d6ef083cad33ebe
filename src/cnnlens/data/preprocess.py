"""One object for how a model's input is made from a photo: sizes, crop, normalization.

:class:`Preprocessing` bundles the arguments of :func:`cnnlens.data.to_tensor` so the same
settings make the tensor (``prep(img)``) and say where it lies on the photo
(``prep.geometry(img)``). ``ModelInfo.preprocessing()`` builds it from what a model's
weights say (torchvision's ``resize_size``, ``crop_size`` and interpolation).

>>> _, info = cnnlens.models.load("resnet50", weights="IMAGENET1K_V2")   # doctest: +SKIP
>>> prep = info.preprocessing()       # resize 232, centre crop 224, bilinear, imagenet
>>> x, geo = prep(img)[None], prep.geometry(img)                           # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from PIL import Image
from torch import Tensor

from cnnlens.data.geometry import Geometry, geometry
from cnnlens.data.presets import to_tensor

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """The arguments of :func:`cnnlens.data.to_tensor`, kept together.

    Attributes:
        size: ``(H, W)`` of the model input.
        preset: normalization preset name (or a Preset).
        crop: resize the short side to ``resize`` and cut out the centre (ImageNet style).
        resize: the short side before the crop (None: ``round(S * 256 / 224)``).
        interpolation: ``"bilinear"`` or ``"bicubic"``.
        channels: 1, 3 or None (keep grey images grey).
    """

    size: tuple[int, int]
    preset: Any = "none"
    crop: bool = False
    resize: int | None = None
    interpolation: str = "bilinear"
    channels: int | None = None

    def __call__(self, img: Image.Image | str | os.PathLike[str]) -> Tensor:
        """The normalized float32 tensor (C, H, W) for ``img``."""
        return to_tensor(
            img,
            size=self.size,
            preset=self.preset,
            channels=self.channels,
            crop=self.crop,
            resize=self.resize,
            interpolation=self.interpolation,
        )

    def geometry(self, img: Image.Image | tuple[int, int] | str | os.PathLike[str]) -> Geometry:
        """Where the tensor of ``img`` lies on ``img`` (for ``viz.overlay(geometry=...)``)."""
        return geometry(img, size=self.size, crop=self.crop, resize=self.resize)

    def describe(self) -> str:
        """``"resize 232, centre crop 224x224, bilinear, imagenet"`` for reports and logs."""
        h, w = self.size
        if self.crop:
            short = self.resize if self.resize is not None else round(min(h, w) * 256 / 224)
            steps = f"resize {short}, centre crop {h}x{w}"
        else:
            steps = f"resize to {h}x{w}"
        name = getattr(self.preset, "name", self.preset)
        return f"{steps}, {self.interpolation}, {name} normalization"
