"""Normalization presets and the image -> tensor conversion models are fed with."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cnnlens.data.geometry import MAX_ASPECT, MAX_SIDE, crop_plan
from cnnlens.data.io import convert_mode, load_image
from cnnlens.errors import DataError, InputError

__all__ = ["PRESETS", "Preset", "get_preset", "list_presets", "to_image", "to_tensor"]


@dataclass(frozen=True)
class Preset:
    """Per-channel normalization statistics and their inverse.

    $$\\hat x_c = \\frac{x_c - \\mu_c}{\\sigma_c}, \\qquad x_c = \\hat x_c\\,\\sigma_c + \\mu_c$$

    Statistics of length one apply to any number of channels; statistics of length three
    need three-channel input.

    Attributes:
        name: the preset's name (``"imagenet"``, ``"cifar10"``, ``"mnist"``, ``"none"``).
        mean: per-channel mean $\\mu$ of pixel values in [0, 1].
        std: per-channel standard deviation $\\sigma$.

    Example:
        >>> p = get_preset("mnist")
        >>> x = torch.rand(1, 28, 28)
        >>> torch.allclose(p.denormalize(p.normalize(x)), x, atol=1e-6)
        True
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int | None:
        """Channel count the statistics are for (``None``: any)."""
        return None if len(self.mean) == 1 else len(self.mean)

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() not in (3, 4):
            raise InputError(
                f"preset {self.name!r} expects a (C, H, W) or (B, C, H, W) tensor, "
                f"got shape {tuple(x.shape)}"
            )
        c = x.shape[-3]
        if len(self.mean) != 1 and c != len(self.mean):
            raise InputError(
                f"preset {self.name!r} has statistics for {len(self.mean)} channels, "
                f"got a tensor with {c} channels (shape {tuple(x.shape)})"
            )
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(-1, 1, 1)
        return mean, std

    def normalize(self, x: Tensor) -> Tensor:
        """Map pixel values in [0, 1] to the model's input scale: ``(x - mean) / std``."""
        mean, std = self._stats(x)
        if self.name == "none":  # exact identity, but never the caller's own tensor
            return x.clone() if x.is_floating_point() else x.float()
        return (x - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Invert :meth:`normalize`: ``x * std + mean`` (pixel values in [0, 1] for display)."""
        mean, std = self._stats(x)
        if self.name == "none":  # exact identity, but never the caller's own tensor
            return x.clone() if x.is_floating_point() else x.float()
        return x * std + mean


PRESETS: dict[str, Preset] = {
    "imagenet": Preset("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": Preset("cifar10", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "mnist": Preset("mnist", (0.1307,), (0.3081,)),
    "none": Preset("none", (0.0,), (1.0,)),
}


def list_presets() -> list[str]:
    """Names of the normalization presets."""
    return sorted(PRESETS)


def get_preset(name: str | Preset | Any | None) -> Preset:
    """The normalization preset called ``name`` (a :class:`Preset` is returned as is).

    Args:
        name: ``"imagenet"``, ``"cifar10"``, ``"mnist"``, ``"none"``, a Preset, ``None``
            (same as ``"none"``), or any object with ``mean`` and ``std`` sequences, such as
            ``torchvision.transforms.Normalize``.

    Raises:
        DataError: for an unknown name; the message lists the presets.
        InputError: for an object whose mean and std are not equal-length number sequences.
    """
    if isinstance(name, Preset):
        return name
    if name is None:
        return PRESETS["none"]
    if hasattr(name, "mean") and hasattr(name, "std") and not isinstance(name, str):
        return _from_stats(name)
    key = str(name).lower()
    if key not in PRESETS:
        close = difflib.get_close_matches(key, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DataError(
            f"preset {name!r} is unknown{hint}; available presets: {', '.join(PRESETS)}"
        )
    return PRESETS[key]


def _from_stats(obj: Any) -> Preset:
    """A custom :class:`Preset` from an object with ``mean`` and ``std``."""
    try:
        mean = tuple(float(v) for v in obj.mean)
        std = tuple(float(v) for v in obj.std)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"preset must be a name, a Preset or an object with mean and std sequences, got "
            f"{type(obj).__name__} ({err})"
        ) from None
    if not mean or len(mean) != len(std) or any(v <= 0 for v in std):
        raise InputError(
            f"preset statistics must be equal-length with std > 0, got mean={mean} std={std}"
        )
    return Preset(str(getattr(obj, "name", "custom")), mean, std)


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def _check_resize(img: Image.Image, new_size: tuple[int, int]) -> None:
    """Refuse a resize of ``img`` (w, h) to ``new_size`` (w, h) beyond the bounds."""
    iw, ih = img.size
    ratio = max(iw, ih) / max(1, min(iw, ih))
    if ratio > MAX_ASPECT:
        raise InputError(
            f"img is {iw}x{ih}, an aspect ratio of {ratio:.0f}:1, beyond the limit of "
            f"{MAX_ASPECT}:1 for resizing; crop it first"
        )
    if max(new_size) > MAX_SIDE:
        raise InputError(
            f"img ({iw}x{ih}) would be resized to {new_size[0]}x{new_size[1]}, beyond "
            f"{MAX_SIDE} pixels a side"
        )


def to_tensor(
    img: Image.Image | str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    preset: str | Preset | None = None,
    channels: int | None = None,
    crop: bool = False,
    resize: int | None = None,
    interpolation: str = "bilinear",
) -> Tensor:
    """Turn an image into a normalized float32 tensor (C, H, W) ready for a model.

    Steps: convert to ``channels`` (1: greyscale, 3: RGB; transparency composited on white),
    resize (bilinear with antialiasing), scale to [0, 1], normalize with ``preset``.

    With ``crop=True`` the usual ImageNet evaluation transform is applied instead of a plain
    resize: the shorter side is resized to ``resize`` (default ``round(S * 256 / 224)``) and
    the centre ``S x S`` (or ``H x W``) is cut out, where ``S`` defaults to 224 — the same
    sizes and offsets as torchvision's ``ImageClassification`` transform.
    :func:`cnnlens.data.geometry` tells where the result lies on the photo.

    Args:
        img: a PIL image or a path (read with :func:`load_image`).
        size: output size, an int (square) or (H, W); ``None`` keeps the image's size
            (224 with ``crop=True``).
        preset: normalization preset name or :class:`Preset`; ``None`` leaves [0, 1] values.
        channels: 1 or 3; ``None`` keeps greyscale images greyscale and makes others RGB.
        crop: resize-256 + centre-crop-224 style preprocessing.
        resize: with ``crop``, the short side before the crop (a weights' ``resize_size``).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (a weights' choice).

    Returns:
        A float32 tensor (C, H, W).

    Raises:
        InputError: ``channels`` not 1, 3 or None; bad ``size`` (not a positive int or pair,
            or over :data:`MAX_SIDE`); preset/channel mismatch; an image whose aspect ratio
            is over :data:`MAX_ASPECT` or whose resized side would exceed :data:`MAX_SIDE`.
        ImageError: ``img`` is a path that cannot be read.

    Example:
        >>> x = to_tensor("cat.jpg", size=224, preset="imagenet", crop=True)  # doctest: +SKIP
        >>> x.shape
        torch.Size([3, 224, 224])
    """
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be 1, 3 or None, got {channels!r}")
    p = get_preset(preset)
    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    if isinstance(img, (str, os.PathLike)):
        img = load_image(img, mode=mode)
    elif not isinstance(img, Image.Image):
        raise InputError(f"img must be a PIL image or a file path, got {type(img).__name__}")
    else:
        img = convert_mode(img, mode)
    if p.channels is not None and len(img.getbands()) != p.channels:
        raise InputError(
            f"preset {p.name!r} needs {p.channels}-channel images, got a {img.mode} image; "
            f"pass channels={p.channels} or another preset"
        )
    if interpolation not in _RESAMPLE:
        raise InputError(
            f"interpolation must be one of {', '.join(_RESAMPLE)}, got {interpolation!r}"
        )
    resize_wh, box = crop_plan(img.size, size, crop=crop, resize=resize)
    if resize_wh is not None:
        _check_resize(img, resize_wh)
        img = img.resize(resize_wh, _RESAMPLE[interpolation])
    if box is not None:
        img = img.crop(box)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    return p.normalize(x).contiguous()


def to_image(x: Tensor, *, preset: str | Preset | None = None) -> Image.Image:
    """Turn a normalized tensor (C, H, W) back into a PIL image for display.

    Args:
        x: float tensor (1 or 3, H, W), normalized with ``preset``.
        preset: the preset ``x`` was normalized with (``None``: values already in [0, 1]).

    Returns:
        An ``L`` or ``RGB`` image; values outside [0, 1] after denormalizing are clipped.
    """
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise InputError(f"x must be a (1 or 3, H, W) tensor, got shape {tuple(x.shape)}")
    y = get_preset(preset).denormalize(x.detach().float().cpu()).clamp(0.0, 1.0)
    arr = (y * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
