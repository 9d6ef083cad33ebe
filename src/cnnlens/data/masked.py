"""Images with ground-truth masks: the ``AssessData`` container and the masked-folder loader.

``cnnlens assess --dataset folder`` reads your images with a parallel folder of binary mask
PNGs (:func:`load_masked_folder`); the generated datasets with masks (``shapes``,
``shapes-pair``) are read into the same container by :func:`cnnlens.assess.load_data`.

Example:
    >>> data = load_masked_folder("mydata", size=64, preset="none")   # doctest: +SKIP
    >>> data.images.shape, data.masks.shape
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cnnlens.errors import DataError, InputError

logger = logging.getLogger(__name__)

__all__ = ["MaskedImages", "load_masked_folder"]


@dataclass
class MaskedImages:
    """Images with the classes to explain and (optionally) their ground-truth masks.

    Attributes:
        name: dataset name (``"shapes"``, ``"folder"``, ...).
        images: (N, C, H, W), normalized as the model expects.
        labels: long (N, K): the K classes to explain per image (K = 2 for
            ``shapes-pair``), -1 where unknown (the model's top class is explained).
        masks: bool (N, K, H, W), the ground truth of each class, or None.
        classes: class names.
        multilabel: True when the model scores classes with a sigmoid (``shapes-pair``).
        preset: the normalization preset name of ``images``.
        files: a name per image (file paths for ``folder``), for the report.
    """

    name: str
    images: Tensor
    labels: Tensor
    masks: Tensor | None
    classes: list[str]
    multilabel: bool = False
    preset: str = "none"
    files: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, n: int) -> MaskedImages:
        """The first ``n`` images."""
        return MaskedImages(
            self.name,
            self.images[:n],
            self.labels[:n],
            None if self.masks is None else self.masks[:n],
            self.classes,
            self.multilabel,
            self.preset,
            None if self.files is None else self.files[:n],
        )


def _mask_file(masks: Path, rel: Path) -> Path | None:
    for cand in (masks / rel.with_suffix(".png"), masks / rel):
        if cand.is_file():
            return cand
    return None


def _read_mask(path: Path, size: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """A binary mask PNG as bool (H, W) at the model's ``size`` (nearest neighbour)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            img = im.copy()
    except (OSError, ValueError) as err:
        raise DataError(f"mask {str(path)!r} cannot be read as an image: {err}") from None
    if img.size != image_size:
        raise DataError(
            f"mask {str(path)!r} is {img.size[0]}x{img.size[1]} pixels but its image is "
            f"{image_size[0]}x{image_size[1]}; masks must have their image's size"
        )
    if img.mode in ("RGBA", "LA"):
        img = img.convert(img.mode[:-1])
    arr = np.asarray(img.convert("L") if img.mode in ("P", "1") else img)
    if arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise DataError(
                f"mask {str(path)!r} has colours; a mask must be black (0) and white (255) "
                "or 0 and 1"
            )
        arr = arr[..., 0]
    values = np.unique(arr)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise DataError(
            f"mask {str(path)!r} is not binary: it holds the values {shown}; a mask must "
            "hold 0 (background) and one other value (255 or 1) for the object"
        )
    mask = Image.fromarray((arr != 0).astype(np.uint8) * 255)
    if mask.size != (size[1], size[0]):
        mask = mask.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(mask) > 0)


def load_masked_folder(
    root: str | os.PathLike[str],
    *,
    masks: str | os.PathLike[str] | None = None,
    model_info: Any = None,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    preset: str | None = None,
) -> MaskedImages:
    """Your images with a parallel folder of binary mask PNGs (``--dataset folder``).

    The layout::

        ROOT/images/<class>/<name>.<jpg|png|...>    or  ROOT/images/<name>.<ext>
        ROOT/masks/<class>/<name>.png               same relative path, .png

    Every image needs a mask with the same relative path (the extension becomes ``.png``)
    and the same width and height; a mask holds 0 for the background and one other value
    (255 or 1) for the object (greyscale, palette or grey RGB). With class subfolders an
    image's class is its folder, matched to the model's class names (or a class index as
    the folder name); without them the model's top class is explained. Images and masks are
    resized to the model's input size (masks by nearest neighbour).

    Args:
        root: the folder holding ``images/`` (or the image folder itself when ``masks``
            is given).
        masks: the mask folder (default ``ROOT/masks``).
        model_info: the model's ``ModelInfo`` (input size, channels, preset, class names).
        size: overrides the input size.
        channels: overrides the channels.
        preset: overrides the normalization preset.

    Raises:
        DataError: a missing folder or mask, a mask of the wrong size or not binary, an
            unknown class folder.
        ImageError: an image that cannot be decoded.
    """
    from cnnlens.data import load_image, to_tensor

    base = Path(root).expanduser()
    images_dir = base / "images" if (base / "images").is_dir() else base
    mask_dir = Path(masks).expanduser() if masks is not None else base / "masks"
    files = _image_files(base, images_dir, mask_dir)
    if size is None:
        size = tuple(model_info.input_size) if model_info is not None else None
    if size is None:
        raise InputError("load_masked_folder needs size= or model_info= (the model's input size)")
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    channels = channels or (int(model_info.in_channels) if model_info is not None else 3)
    preset = preset or (model_info.preset if model_info is not None else "none")
    names = list(getattr(model_info, "class_names", None) or [])
    num = getattr(model_info, "num_classes", None) or len(names) or None
    xs, labels, ms = [], [], []
    for f in files:
        rel = f.relative_to(images_dir)
        mfile = _mask_file(mask_dir, rel)
        if mfile is None:
            raise DataError(
                f"image {str(f)!r} has no mask: expected {mask_dir / rel.with_suffix('.png')}"
            )
        img = load_image(f, mode="L" if channels == 1 else "RGB")
        xs.append(to_tensor(img, size=hw, preset=preset, channels=channels))
        ms.append(_read_mask(mfile, hw, img.size))
        labels.append(_class_of(f, rel, names, num))
    return MaskedImages(
        name="folder",
        images=torch.stack(xs),
        labels=torch.tensor(labels, dtype=torch.long).view(-1, 1),
        masks=torch.stack(ms).unsqueeze(1),
        classes=names or [str(i) for i in range(num or 0)],
        multilabel=bool((getattr(model_info, "extra", None) or {}).get("multilabel")),
        preset=str(preset),
        files=[str(f) for f in files],
    )


def _image_files(base: Path, images_dir: Path, mask_dir: Path) -> list[Path]:
    """The image files under ``images_dir`` (hidden ones and the mask folder left out)."""
    from cnnlens.data import IMAGE_EXTENSIONS

    if not images_dir.is_dir():
        raise DataError(f"--data-dir {str(base)!r} does not exist or is not a folder")
    if not mask_dir.is_dir():
        raise DataError(
            f"mask folder {str(mask_dir)!r} does not exist; put one binary PNG per image in "
            f"{base}/masks/ with the image's relative path"
        )
    files = sorted(
        f
        for f in images_dir.rglob("*")
        if f.is_file()
        and f.suffix.lower() in IMAGE_EXTENSIONS
        and not any(p.startswith(".") for p in f.relative_to(images_dir).parts)
        and mask_dir not in f.parents
    )
    if not files:
        raise DataError(
            f"image folder {str(images_dir)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


def _class_of(f: Path, rel: Path, names: list[str], num: int | None) -> int:
    """The class of an image from its class folder (a class name or index); -1 without one."""
    if len(rel.parts) < 2:
        return -1
    cls = rel.parts[0]
    if cls in names:
        return names.index(cls)
    if cls.isdigit() and (num is None or int(cls) < num):
        return int(cls)
    if not names:
        logger.info("class folder %r is not a class index; the top class is explained", cls)
        return -1
    raise DataError(
        f"class folder {cls!r} ({f}) is not a class of the model; classes: "
        f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
    )
