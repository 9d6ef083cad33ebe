"""Reading image files safely: any common format and mode in, an ``RGB`` or ``L`` image out.

Every failure a user can cause (missing file, not an image, truncated data, an image so
large that decoding it would exhaust memory) raises :class:`cnnlens.errors.ImageError` with
one sentence naming the path.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlens.errors import ImageError, InputError

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "conversion", "convert_mode", "load_image"]

logger = logging.getLogger(__name__)

#: Largest image (width x height) that :func:`load_image` decodes by default: 64 megapixels,
#: e.g. 8000 x 8000, about 190 MB once decoded as RGB. Larger files are refused as possible
#: decompression bombs. Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``) applies as well.
MAX_PIXELS = 64_000_000

#: File name endings that the ``folder`` dataset treats as images (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_MODES = ("RGB", "L", None)


def load_image(
    path: str | os.PathLike[str],
    *,
    mode: str | None = "RGB",
    max_pixels: int | None = MAX_PIXELS,
) -> Image.Image:
    """Read an image file into memory as an ``RGB`` or greyscale (``L``) PIL image.

    Handles JPEG, PNG, BMP, TIFF, WebP (and GIF, first frame). The EXIF orientation tag is
    applied, so a photo shot in portrait comes out upright. Transparent images (RGBA, LA,
    palette images with a transparent colour) are composited on white; CMYK, YCbCr and other
    colour spaces are converted to RGB; 16-bit and 32-bit greyscale (``I;16``, ``I``) are
    scaled from 0..65535 to 0..255 rather than clipped; float images (``F``) in [0, 1] are
    scaled by 255, others are clipped to 0..255.

    Args:
        path: the image file.
        mode: ``"RGB"`` (three channels), ``"L"`` (one channel, ITU-R 601-2 luma) or ``None``
            (``L`` for greyscale files, ``RGB`` for everything else).
        max_pixels: refuse images with more than this many pixels (width x height) before
            decoding them; ``None`` leaves only Pillow's own limit.

    Returns:
        A fully decoded image (the file is closed) in mode ``"RGB"`` or ``"L"``.

    Raises:
        ImageError: the file is missing, not an image, truncated or corrupt, or too large.
        InputError: ``path`` is not a str or path; ``mode`` is not ``"RGB"``, ``"L"``, ``None``.

    Example:
        >>> img = load_image("cat.jpg")                    # doctest: +SKIP
        >>> img.mode, img.size
        ('RGB', (640, 480))
    """
    if mode not in _MODES:
        raise InputError(f"mode must be 'RGB', 'L' or None, got {mode!r}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"path must be an image file path (str or Path), got {path!r}")
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image file {str(p)!r} does not exist")
    if not p.is_file():
        raise ImageError(f"image path {str(p)!r} is not a file")
    with warnings.catch_warnings():
        # Pillow warns (rather than fails) between MAX_IMAGE_PIXELS and twice that.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(p) as im:
                width, height = im.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageError(
                        f"image {str(p)!r} has {width}x{height} = {width * height:,} pixels, "
                        f"more than the limit of {max_pixels:,} (possible decompression bomb)"
                    )
                im.load()
                img = _upright(im, p)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(
                f"image {str(p)!r} is refused as a possible decompression bomb ({err})"
            ) from None
        except UnidentifiedImageError:
            raise ImageError(
                f"file {str(p)!r} is not an image Pillow can read "
                f"(expected JPEG, PNG, BMP, TIFF, WebP or GIF)"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise ImageError(f"image {str(p)!r} is truncated or corrupt ({err})") from None
    try:
        return convert_mode(img, mode)
    except (ValueError, OSError) as err:
        raise ImageError(
            f"image {str(p)!r} (mode {img.mode}) cannot be converted to {mode or 'RGB/L'} ({err})"
        ) from None


def _upright(im: Image.Image, path: Path) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored with a warning."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception as err:  # Pillow raises many types for malformed EXIF data
        logger.warning("ignoring the unreadable EXIF orientation of %s (%s)", path, err)
        return im.copy()


def convert_mode(img: Image.Image, mode: str | None = "RGB") -> Image.Image:
    """Convert a PIL image of any mode to ``RGB`` or ``L`` the way :func:`load_image` does.

    Transparency is composited on white, 16/32-bit greyscale is scaled (not clipped).

    Args:
        img: a PIL image of any mode.
        mode: ``"RGB"``, ``"L"`` or ``None`` (``L`` for greyscale input, ``RGB`` otherwise).

    Returns:
        An image in mode ``"RGB"`` or ``"L"`` (``img`` itself when it already is).
    """
    if mode not in _MODES:
        raise InputError(f"mode must be 'RGB', 'L' or None, got {mode!r}")
    if mode is None:
        mode = "L" if img.mode in _GREY_MODES else "RGB"
    if img.mode == mode:
        return img
    src = img.mode
    if src == "P":
        has_alpha = "transparency" in img.info or img.palette.mode == "RGBA"
        img = img.convert("RGBA" if has_alpha else "RGB")
        src = img.mode
    if src in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    elif src.startswith("I") or src == "F":
        img = _wide_grey_to_l(img)
    return img.convert(mode)


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float greyscale images to 8-bit ``L``."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        out = np.clip(np.rint(arr), 0, 255)
    else:
        # 16-bit sources (mode I;16*, or I as older Pillow versions opened 16-bit PNGs).
        out = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255)
    return Image.fromarray(out.astype(np.uint8))


def conversion(path: str | os.PathLike[str], mode: str | None) -> str | None:
    """What :func:`load_image` with ``mode`` changes about a file's pixels, in a few words
    (``"greyscale, its channel repeated to RGB"``), or None when nothing is changed (or the
    file cannot be read: :func:`load_image` says why). Reads the file's header only."""
    if mode is None:
        return None
    try:
        with Image.open(path) as img:
            src, transparent = img.mode, "transparency" in img.info
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    alpha = src in ("RGBA", "LA", "La", "RGBa", "PA") or transparent
    if mode == "L" and src not in _GREY_MODES:
        return f"colour ({src}), converted to greyscale for a 1-channel model"
    if mode == "RGB" and src in _GREY_MODES:
        extra = ", transparency composited on white" if alpha else ""
        return f"greyscale ({src}), its channel repeated to RGB for a 3-channel model{extra}"
    if alpha:
        return f"transparent ({src}), composited on white"
    return None
