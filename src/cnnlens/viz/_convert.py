"""Turn the many shapes an image or a map can arrive in into float numpy arrays for display.

Everything here is private to :mod:`cnnlens.viz`; the public functions live in
:mod:`cnnlens.viz.overlay` and :mod:`cnnlens.viz.figures`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlens.data.presets import get_preset
from cnnlens.errors import InputError

logger = logging.getLogger(__name__)


def preset_mean_std(preset: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Return ``(mean, std)`` as 1-D float arrays for a preset name or Preset-like object.

    Args:
        preset: None (no normalization), a preset name (``"imagenet"``, ``"cifar10"``,
            ``"mnist"``, ``"none"``) looked up with :func:`cnnlens.data.get_preset`, an object
            with ``mean`` and ``std`` attributes, or a ``(mean, std)`` pair.

    Returns:
        None when ``preset`` is None, else the per-channel mean and std.
    """
    if preset is None:
        return None
    if isinstance(preset, str):
        found = get_preset(preset)  # DataError naming the presets for an unknown name
        mean, std = found.mean, found.std
    elif hasattr(preset, "mean") and hasattr(preset, "std"):
        mean, std = preset.mean, preset.std
    elif isinstance(preset, Sequence) and len(preset) == 2:
        mean, std = preset
    else:
        raise InputError(
            f"preset must be a preset name, an object with mean and std, or a (mean, std) pair; "
            f"got {type(preset).__name__}"
        )
    mean_a = np.atleast_1d(np.asarray(_as_numpy(mean), dtype=np.float64)).reshape(-1)
    std_a = np.atleast_1d(np.asarray(_as_numpy(std), dtype=np.float64)).reshape(-1)
    if mean_a.size != std_a.size:
        raise InputError(
            f"preset mean and std must have the same length; got {mean_a.size} and {std_a.size}"
        )
    return mean_a, std_a


def _as_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).numpy()
    return value


def to_display(image: Any, preset: Any = None) -> np.ndarray:
    """Convert an image to float64 ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB) in [0, 1].

    Accepted: PIL images; torch tensors ``(C, H, W)``, ``(1, C, H, W)`` or ``(H, W)``; numpy
    arrays ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in {1, 3} (4 for HWC: alpha is
    dropped). Integer arrays are divided by their type's maximum. Float inputs are
    un-normalized with ``preset`` (``x * std + mean``); float inputs outside [0, 1] without a
    preset are min-max rescaled (and a warning is logged).
    """
    if isinstance(image, Image.Image):
        return _pil_to_float(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().to("cpu")
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.is_floating_point():
            t = t.to(torch.float64)
        arr = t.numpy()
        chw = True
    elif isinstance(image, np.ndarray):
        arr = image
        chw = False
    else:
        raise InputError(
            "image must be a PIL image, a torch tensor or a numpy array; "
            f"got {type(image).__name__}"
        )
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        if chw and arr.shape[0] not in (1, 3):
            raise InputError(
                f"image tensor must be (C, H, W) with C 1 or 3, or (H, W); got {tuple(arr.shape)}"
            )
        if not chw:
            if arr.shape[-1] in (1, 3, 4):
                arr = np.moveaxis(arr[..., :3] if arr.shape[-1] == 4 else arr, -1, 0)
            elif arr.shape[0] in (1, 3):
                pass
            else:
                raise InputError(
                    f"image array must be (H, W), (H, W, C) or (C, H, W) with C 1 or 3; "
                    f"got {tuple(arr.shape)}"
                )
    else:
        raise InputError(
            f"image must have 2 or 3 dimensions (a single image); got shape {tuple(arr.shape)}"
        )
    if np.issubdtype(arr.dtype, np.bool_):
        out = arr.astype(np.float64)
    elif np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    else:
        out = arr.astype(np.float64)
        stats = preset_mean_std(preset)
        if stats is not None:
            mean, std = stats
            c = out.shape[0]
            if mean.size not in (1, c):
                raise InputError(
                    f"preset has {mean.size} channels but the image has {c}; "
                    "pass the preset the image was normalized with"
                )
            out = out * std.reshape(-1, 1, 1) + mean.reshape(-1, 1, 1)
        elif out.size and (np.nanmin(out) < -1e-6 or np.nanmax(out) > 1 + 1e-6):
            lo, hi = float(np.nanmin(out)), float(np.nanmax(out))
            logger.warning(
                "image values lie in [%.3g, %.3g] and no preset was given; rescaling to [0, 1] "
                "for display (pass preset= to un-normalize exactly)",
                lo,
                hi,
            )
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    out = np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)
    return out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1)


def _pil_to_float(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.float64) / 65535.0
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
    if img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        return np.clip(arr / (65535.0 if arr.max(initial=0) > 255 else 255.0), 0.0, 1.0)
    if img.mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """A display array ``(H, W)`` or ``(H, W, 3)`` as ``(H, W, 3)``."""
    return np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 2 else arr


def to_map(m: Any, size: tuple[int, int] | None = None, *, name: str = "map") -> np.ndarray:
    """Convert a saliency map to float64 ``(H, W)`` in [0, 1], resized bilinearly to ``size``.

    Resizing uses ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    the same upsampling the explanation methods use.
    """
    if isinstance(m, Image.Image):
        arr = _pil_to_float(m)
        t = torch.from_numpy(arr.mean(-1) if arr.ndim == 3 else arr)
    elif isinstance(m, torch.Tensor):
        t = m.detach().to("cpu", torch.float64)
    elif isinstance(m, np.ndarray):
        t = torch.from_numpy(np.asarray(m, dtype=np.float64))
    else:
        raise InputError(
            f"{name} must be a torch tensor, numpy array or PIL image; got {type(m).__name__}"
        )
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise InputError(f"{name} must be a single (H, W) map; got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or infinite values; expected values in [0, 1]")
    if size is not None and tuple(t.shape) != tuple(size):
        t = F.interpolate(t[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return t.clamp(0.0, 1.0).numpy()


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Float [0, 1] to uint8 with rounding."""
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_pil(arr: np.ndarray) -> Image.Image:
    """Float [0, 1] ``(H, W)`` or ``(H, W, 3)`` array to a PIL image (mode L or RGB)."""
    return Image.fromarray(to_uint8(arr))


def place_map(
    m: np.ndarray, geometry: Any, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Put a map made at the model input's size back onto the photo it was cut from.

    Every photo pixel centre is mapped into the input's pixel grid with ``geometry`` (a
    :class:`cnnlens.data.Geometry`) and the map is sampled there bilinearly
    (``grid_sample``, ``align_corners=False``: the same pixel-centre convention as the
    resize that made the input).

    Returns:
        ``(values, inside)``: ``(H, W)`` map values on the photo, and a boolean mask of the
        photo pixels that lie in the model's input (outside it the model saw nothing).
    """
    h0, w0 = (int(v) for v in geometry.image_size)
    if (h0, w0) != tuple(shape):
        raise InputError(
            f"geometry is for a {h0}x{w0} photo but the image is {shape[0]}x{shape[1]}; "
            "pass the photo the input was made from"
        )
    if tuple(int(v) for v in geometry.input_size) != tuple(m.shape):
        h, w = geometry.input_size
        raise InputError(
            f"geometry is for a {h}x{w} model input but the map is {m.shape[0]}x{m.shape[1]}; "
            "pass a map at the input's size"
        )
    left, top, right, bottom = (float(v) for v in geometry.box)
    xs = (torch.arange(w0, dtype=torch.float64) + 0.5 - left) / (right - left) * 2.0 - 1.0
    ys = (torch.arange(h0, dtype=torch.float64) + 0.5 - top) / (bottom - top) * 2.0 - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]
    t = torch.from_numpy(np.asarray(m, dtype=np.float64))[None, None]
    values = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (gx.abs() <= 1.0) & (gy.abs() <= 1.0)
    return values[0, 0].clamp(0.0, 1.0).numpy(), inside.numpy()


def check_geometry(image_shape: tuple[int, int], map_shape: tuple[int, int], what: str) -> None:
    """Warn when a map is stretched over an image of another aspect ratio.

    A map of the model input's size stretched over a photo of another shape lands beside
    where the model looked (a centre crop, or a non-uniform resize); the warning says how to
    place it.
    """
    (h, w), (mh, mw) = image_shape, map_shape
    if (h, w) == (mh, mw) or mh < 2 or mw < 2:
        return
    ratio = (w / h) / (mw / mh)
    if abs(ratio - 1.0) > 0.02:
        warnings.warn(
            f"{what}: the map is {mh}x{mw} but the image is {h}x{w} (another aspect ratio), so "
            "stretching it would draw it beside where the model looked; pass "
            "geometry=cnnlens.data.geometry(img, size=..., crop=...) or overlay on the model "
            "input",
            GeometryWarning,
            stacklevel=4,
        )


class GeometryWarning(UserWarning):
    """A map is drawn over an image whose shape does not match the model input's."""
