"""Where a model's input lies on the original photo: the resize / centre-crop geometry.

:func:`cnnlens.data.to_tensor` resizes (and with ``crop=True`` centre-crops) a photo before
the model sees it, so a map at the input's size covers only part of the photo, stretched.
:class:`Geometry` records that box in the photo's pixel coordinates; :mod:`cnnlens.viz` uses
it to put a map back where the model looked (``viz.overlay(img, m, geometry=geo)``).

A resized pixel's centre maps back as PIL's resampling does: input pixel ``j`` of a box
``[left, right)`` of width ``W`` sampled at ``w`` pixels has its centre at

$$x = \\text{left} + (j + \\tfrac12)\\,\\frac{W}{w}$$

>>> geo = geometry(img, size=224, crop=True)        # doctest: +SKIP
>>> geo.box                                         # (left, top, right, bottom) on the photo
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image

from cnnlens.core.checks import check_pair
from cnnlens.errors import InputError

__all__ = ["Geometry", "geometry"]


@dataclass(frozen=True)
class Geometry:
    """The part of a photo a model input was made from.

    Attributes:
        image_size: ``(H, W)`` of the original photo.
        input_size: ``(h, w)`` of the model input.
        box: ``(left, top, right, bottom)`` of the input's area on the photo, in photo pixels
            (floats; the whole photo ``(0, 0, W, H)`` for a plain resize).
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    box: tuple[float, float, float, float]

    @property
    def cropped(self) -> bool:
        """Whether the input covers less than the whole photo."""
        h, w = self.image_size
        left, top, right, bottom = self.box
        return left > 1e-6 or top > 1e-6 or right < w - 1e-6 or bottom < h - 1e-6

    def to_image(self, row: float, col: float) -> tuple[float, float]:
        """Photo coordinates ``(y, x)`` of the centre of input pixel ``(row, col)``."""
        left, top, right, bottom = self.box
        h, w = self.input_size
        return top + (row + 0.5) * (bottom - top) / h, left + (col + 0.5) * (right - left) / w


#: Largest output side :func:`cnnlens.data.to_tensor` produces (``size``, and each side after
#: the resize of ``crop=True``): 16,384 pixels.
MAX_SIDE = 16384

#: Largest aspect ratio (long side / short side) :func:`cnnlens.data.to_tensor` accepts when
#: it resizes: 64. A 1 x 40,000 strip resized so its short side is 256 would be 256 x 10,240,000.
MAX_ASPECT = 64


def _pair(size: int | tuple[int, int] | list[int], arg: str) -> tuple[int, int]:
    h, w = check_pair(arg, size)
    if max(h, w) > MAX_SIDE:
        raise InputError(f"{arg} must be at most {MAX_SIDE} pixels a side, got {size!r}")
    return h, w


def crop_plan(
    image_wh: tuple[int, int],
    size: int | tuple[int, int] | None,
    *,
    crop: bool,
    resize: int | None = None,
) -> tuple[tuple[int, int] | None, tuple[int, int, int, int] | None]:
    """The resize (W, H) and crop box (left, top, right, bottom) that ``to_tensor`` applies.

    ``None`` for a step that is not taken. With ``crop``, torchvision's evaluation transform
    (``ImageClassification``): the short side becomes ``resize`` (default
    ``round(S * 256 / 224)``), the long side ``int(resize * long / short)``, and the centre
    crop starts at ``int(round((n - S) / 2))``. Shared by :func:`cnnlens.data.to_tensor` and
    :func:`geometry`, so the two never disagree.
    """
    iw, ih = image_wh
    if crop:
        h, w = _pair(size if size is not None else 224, "size")
        short = int(resize) if resize is not None else round(min(h, w) * 256 / 224)
        if short < 1:
            raise InputError(f"resize must be a positive side length, got {resize!r}")
        if iw <= ih:
            nw, nh = short, int(short * ih / iw)
        else:
            nw, nh = int(short * iw / ih), short
        nw, nh = max(w, nw), max(h, nh)
        left, top = round((nw - w) / 2.0), round((nh - h) / 2.0)
        return (nw, nh), (left, top, left + w, top + h)
    if size is not None:
        h, w = _pair(size, "size")
        return ((w, h) if (w, h) != (iw, ih) else None), None
    return None, None


def geometry(
    img: Image.Image | tuple[int, int] | str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    crop: bool = False,
    resize: int | None = None,
) -> Geometry:
    """The geometry :func:`cnnlens.data.to_tensor` applies with the same ``size`` and ``crop``.

    Args:
        img: the photo (PIL image or a path), or its ``(H, W)``.
        size: as for ``to_tensor``.
        crop: as for ``to_tensor`` (resize the short side to ``S * 256 / 224``, centre crop).
        resize: as for ``to_tensor`` (the short side before the crop).

    Returns:
        A :class:`Geometry` for ``viz.overlay(img, map, geometry=...)``.

    Example:
        >>> geometry((300, 451), size=224, crop=True).box      # doctest: +SKIP
        (82.0..., 18.75, 344.4..., 281.25)
    """
    if isinstance(img, Image.Image):
        iw, ih = img.size
    elif isinstance(img, (str, os.PathLike)):
        from cnnlens.data.io import load_image  # upright (EXIF), as to_tensor reads it

        iw, ih = load_image(img).size
    else:
        ih, iw = _pair(img, "img")
    resize_wh, box = crop_plan((iw, ih), size, crop=crop, resize=resize)
    nw, nh = resize_wh if resize_wh is not None else (iw, ih)
    sx, sy = iw / nw, ih / nh
    if box is None:
        return Geometry((ih, iw), (nh, nw), (0.0, 0.0, float(iw), float(ih)))
    left, top, right, bottom = box
    return Geometry(
        (ih, iw), (bottom - top, right - left), (left * sx, top * sy, right * sx, bottom * sy)
    )
