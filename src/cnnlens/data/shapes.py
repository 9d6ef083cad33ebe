"""Synthetic shape images with pixel-exact ground truth, for checking where a model looks.

``shapes``: one shape per image (circle, square, triangle, star, cross) of random size,
rotation, colour and position on a textured background (colour gradient, stripes, noise),
so neither colour nor position gives the class away. Half the images have a light shape on
a dark background, half a dark shape on a light one, each colour of random hue.
``shapes-pair``: two shapes of different classes per image, never overlapping, with a
multi-hot target.

Everything is drawn with vectorized numpy (no per-pixel Python loops) and is a pure
function of ``(seed, split, n, size)``: the train and test splits use different random
streams of the same seed.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from cnnlens.core.checks import check_choice, check_int
from cnnlens.data.base import ImageTensorDataset
from cnnlens.errors import InputError

__all__ = [
    "SHAPE_CLASSES",
    "ShapesDataset",
    "ShapesPairDataset",
    "boxes_from_masks",
    "draw_shapes",
    "make_shapes",
    "make_shapes_pair",
]

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "cross"]
_SPLIT_STREAM = {"train": 0, "test": 1}
_CHUNK = 256  # images rendered at once (bounds temporary memory to ~50 MB at 64x64)

# Rendering parameters. Hue, lightness polarity, texture and noise are random and carry no
# class information; what makes the task learnable in a minute or two of CPU time by a small
# CNN is that object and background always differ in lightness (mean of R, G, B) by at least
# 0.5 before shading/gradient: with random hue *and* random contrast the same network needs
# ~10 times more samples (measured: 88% test accuracy after 40,000 samples).
_LUMA = (0.25, 0.75)  # dark colours: mean RGB <= 0.25; light colours: >= 0.75
_GRADIENT = 0.3  # max per-channel difference between the two ends of the colour gradient
_STRIPES = 0.12  # max stripe amplitude
_NOISE = (0.01, 0.05)  # range of the per-image pixel noise standard deviation
_RADIUS = (0.2, 0.36)  # circumradius range of a single shape, as a fraction of the size
_PAIR_RADIUS = (0.13, 0.22)  # the same for shapes-pair


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (1, size, size) float32."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, :, None], c[None, None, :]


def draw_shapes(
    kind: int, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, angle: np.ndarray, size: int
) -> np.ndarray:
    """Boolean masks (n, size, size) of ``n`` shapes of one class.

    Every shape fits in the circle of radius ``r`` around its centre (``cx``, ``cy``), in
    pixels; ``angle`` rotates it (radians).

    Args:
        kind: class index into :data:`SHAPE_CLASSES`.
        cx: (n,) centre x.
        cy: (n,) centre y.
        r: (n,) circumradius.
        angle: (n,) rotation.
        size: image side in pixels.
    """
    yy, xx = _grid(size)
    cx, cy, r, angle = (np.asarray(a, dtype=np.float32)[:, None, None] for a in (cx, cy, r, angle))
    dx, dy = xx - cx, yy - cy
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / r
    v = (-dx * sin + dy * cos) / r
    name = SHAPE_CLASSES[kind]
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7
    if name == "triangle":
        # three half-planes with inradius 1/2, so the circumradius is 1
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = -math.pi / 2 + 2 * math.pi * k / 3
            inside &= u * math.cos(a) + v * math.sin(a) <= 0.5
        return inside
    if name == "star":
        # five-pointed star, outer radius 1, inner radius 0.45: fold each point into the
        # half-sector [0, pi/5] and test against the edge from outer to inner vertex
        sector = 2 * math.pi / 5
        phi = np.arctan2(v, u)
        psi = np.abs(np.mod(phi + sector / 2, sector) - sector / 2)
        rho = np.sqrt(u * u + v * v)
        px, py = 1.0, 0.0
        qx, qy = 0.45 * math.cos(sector / 2), 0.45 * math.sin(sector / 2)
        nx, ny = qy - py, -(qx - px)
        norm = math.hypot(nx, ny)
        nx, ny = nx / norm, ny / norm
        h = nx * px + ny * py
        if h < 0:
            nx, ny, h = -nx, -ny, -h
        return rho * (np.cos(psi) * nx + np.sin(psi) * ny) <= h
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    raise InputError(f"shape kind must be in 0..{len(SHAPE_CLASSES) - 1}, got {kind}")


def _colours(rng: np.random.Generator, light: np.ndarray) -> np.ndarray:
    """Random RGB colours (n, 3) of any hue: light ones (mean of R, G, B >= ``_LUMA[1]``)
    where ``light`` is True, dark ones (mean <= ``_LUMA[0]``) elsewhere.

    Dark colours are uniform on the corner ``{c >= 0, c_R + c_G + c_B <= 3 _LUMA[0]}`` of the
    RGB cube (a Dirichlet draw, scaled); light colours mirror them (``1 - c``).
    """
    e = rng.exponential(size=(len(light), 4))
    dark = 3 * _LUMA[0] * e[:, :3] / e.sum(axis=1, keepdims=True)
    return np.where(light[:, None], 1.0 - dark, dark).astype(np.float32)


def _backgrounds(rng: np.random.Generator, light: np.ndarray, size: int) -> np.ndarray:
    """Textured backgrounds (n, 3, size, size) in about [0, 1]: a colour gradient from a
    light (or dark) colour to a nearby one, plus stripes of random frequency and direction."""
    n = len(light)
    yy, xx = _grid(size)
    c0 = _colours(rng, light)[:, :, None, None]
    c1 = np.clip(c0 + rng.uniform(-_GRADIENT, _GRADIENT, (n, 3, 1, 1)), 0, 1).astype(np.float32)
    g = rng.uniform(0.0, 2 * math.pi, (n, 1, 1)).astype(np.float32)
    t = ((xx - size / 2) * np.cos(g) + (yy - size / 2) * np.sin(g)) / (size * math.sqrt(2))
    t = (t + 0.5)[:, None]  # (n, 1, H, W) in [0, 1]
    amp = rng.uniform(0.0, _STRIPES, (n, 1, 1)).astype(np.float32)
    freq = rng.uniform(2.0, 8.0, (n, 1, 1)).astype(np.float32)
    phi = rng.uniform(0.0, 2 * math.pi, (n, 1, 1)).astype(np.float32)
    phase = rng.uniform(0.0, 2 * math.pi, (n, 1, 1)).astype(np.float32)
    proj = (xx * np.cos(phi) + yy * np.sin(phi)) / size
    stripes = amp * np.sin(2 * math.pi * freq * proj + phase)
    return c0 * (1 - t) + c1 * t + stripes[:, None]


def _render(rng: np.random.Generator, masks: list[np.ndarray], size: int) -> np.ndarray:
    """uint8 images (n, 3, H, W): a textured background, light or dark at random, with each
    mask painted in a random colour of the opposite lightness, plus pixel noise."""
    n = masks[0].shape[0]
    light_bg = rng.random(n) < 0.5
    img = _backgrounds(rng, light_bg, size)
    for m in masks:
        col = _colours(rng, ~light_bg)
        shade = rng.uniform(-0.1, 0.1, (n, 1, 1, 1)).astype(np.float32)
        img = np.where(m[:, None], col[:, :, None, None] + shade, img)
    sigma = rng.uniform(*_NOISE, (n, 1, 1, 1)).astype(np.float32)
    img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


#: Largest ``size`` (pixels a side) of generated shapes images.
MAX_SIZE = 1024

#: Largest float32 working array ``n x 3 x size x size`` generated in one call: 2 GiB
#: (checked before anything is allocated).
MAX_BYTES = 2 * 1024**3


def _check(n: int, size: int, split: str) -> None:
    check_int("n", n)
    check_int("size (pixels)", size, minimum=16, maximum=MAX_SIZE)
    check_choice("split", split, _SPLIT_STREAM)
    need = n * 3 * size * size * 4
    if need > MAX_BYTES:
        raise InputError(
            f"n={n} images of size {size} need {need / 1024**3:.1f} GiB while generating, more "
            f"than the limit of {MAX_BYTES / 1024**3:.0f} GiB; lower n or size"
        )


def make_shapes(
    n: int, *, size: int = 64, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate the ``shapes`` data.

    Classes are balanced (``n // 5`` or one more each) in random order. Radii are drawn in
    [0.2, 0.36] x ``size``; every shape lies fully inside the image.

    Returns:
        images uint8 (n, 3, size, size), labels int64 (n,), masks bool (n, size, size).
    """
    _check(n, size, split)
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    k = len(SHAPE_CLASSES)
    labels = rng.permutation(np.arange(n) % k)
    r = rng.uniform(*_RADIUS, n) * size
    cx = rng.uniform(r + 1, size - 1 - r)
    cy = rng.uniform(r + 1, size - 1 - r)
    angle = rng.uniform(0.0, 2 * math.pi, n)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        m = np.zeros((sl.stop - sl.start, size, size), dtype=bool)
        for kind in range(k):
            sel = np.flatnonzero(labels[sl] == kind)
            if len(sel):
                j = sel + sl.start
                m[sel] = draw_shapes(kind, cx[j], cy[j], r[j], angle[j], size)
        masks[sl] = m
        images[sl] = _render(rng, [m], size)
    return images, labels.astype(np.int64), masks


def make_shapes_pair(
    n: int, *, size: int = 64, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate the ``shapes-pair`` data: two shapes of different classes per image.

    The two shapes' bounding circles are at least 2 pixels apart, so the shapes never
    overlap or touch. Class pairs are uniform over ordered pairs of distinct classes.

    Returns:
        images uint8 (n, 3, size, size), pair labels int64 (n, 2), masks bool
        (n, 2, size, size) in the order of the pair labels.
    """
    _check(n, size, split)
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    k = len(SHAPE_CLASSES)
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    pair = np.stack([a, b], axis=1)
    r = rng.uniform(*_PAIR_RADIUS, (n, 2)) * size
    cx = rng.uniform(r + 1, size - 1 - r)
    cy = rng.uniform(r + 1, size - 1 - r)
    for _ in range(10_000):  # rejection sampling, vectorized over the images still clashing
        bad = np.hypot(cx[:, 0] - cx[:, 1], cy[:, 0] - cy[:, 1]) < r.sum(axis=1) + 2
        if not bad.any():
            break
        rb = r[bad]
        cx[bad] = rng.uniform(rb + 1, size - 1 - rb)
        cy[bad] = rng.uniform(rb + 1, size - 1 - rb)
    else:  # pragma: no cover - practically unreachable for size >= 16
        raise InputError(f"could not place two shapes apart in {size}x{size} images")
    angle = rng.uniform(0.0, 2 * math.pi, (n, 2))
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    masks = np.empty((n, 2, size, size), dtype=bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        m = np.zeros((sl.stop - sl.start, 2, size, size), dtype=bool)
        for slot in range(2):
            for kind in range(k):
                sel = np.flatnonzero(pair[sl, slot] == kind)
                if len(sel):
                    j = sel + sl.start
                    m[sel, slot] = draw_shapes(
                        kind, cx[j, slot], cy[j, slot], r[j, slot], angle[j, slot], size
                    )
        masks[sl] = m
        images[sl] = _render(rng, [m[:, 0], m[:, 1]], size)
    return images, pair.astype(np.int64), masks


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Tight boxes ``(x0, y0, x1, y1)`` in pixels (inclusive-exclusive) of boolean masks.

    Args:
        masks: bool (..., H, W); every mask must hold at least one pixel.

    Returns:
        float32 (..., 4).
    """
    if masks.dim() < 2:
        raise InputError(f"masks must be (..., H, W), got shape {tuple(masks.shape)}")
    m = masks.bool()
    rows, cols = m.any(dim=-1), m.any(dim=-2)  # (..., H), (..., W)
    if not bool(rows.any(dim=-1).all()):
        raise InputError("boxes_from_masks: a mask is empty, it has no box")
    h, w = m.shape[-2:]
    ys = torch.arange(h, device=m.device)
    xs = torch.arange(w, device=m.device)
    big = max(h, w) + 1
    y0 = torch.where(rows, ys, big).amin(dim=-1)
    y1 = torch.where(rows, ys, -1).amax(dim=-1) + 1
    x0 = torch.where(cols, xs, big).amin(dim=-1)
    x1 = torch.where(cols, xs, -1).amax(dim=-1) + 1
    return torch.stack([x0, y0, x1, y1], dim=-1).float()


class ShapesDataset(ImageTensorDataset):
    """``shapes``: one shape per image, label = shape class, with its ground-truth mask.

    Images are (3, size, size) with values in [0, 1] (the ``none`` preset, as ``gap-cnn``
    expects).

    Example:
        >>> ds = get_dataset("shapes", split="test", n=100)      # doctest: +SKIP
        >>> x, y = ds[0]; m = ds.masks(0)       # m: bool (64, 64), True on the shape
    """

    _per_sample = ("_masks",)

    def masks(self, index: int) -> Tensor:
        """Ground-truth mask of image ``index``: bool (H, W), True on the object."""
        return self._masks[index]


class ShapesPairDataset(ImageTensorDataset):
    """``shapes-pair``: two shapes of different classes per image, multi-hot float targets.

    ``masks(i)`` is bool (2, H, W), one mask per shape, in the order of ``pair_labels(i)``.
    """

    _per_sample = ("_masks", "_pairs")

    def masks(self, index: int) -> Tensor:
        """Ground-truth masks of image ``index``: bool (2, H, W), one per shape."""
        return self._masks[index]

    def pair_labels(self, index: int) -> Tensor:
        """The two class indices of image ``index``, in the order of :meth:`masks`."""
        return self._pairs[index]

    def object_classes(self, index: int) -> Tensor:
        """Class indices into :data:`SHAPE_CLASSES` of the image's objects, long (2,)."""
        return self._pairs[index]

    def object_masks(self, index: int) -> Tensor:
        """Masks of the image's objects, bool (2, H, W), in :meth:`object_classes` order."""
        return self._masks[index]

    def object_boxes(self, index: int) -> Tensor:
        """Boxes (x0, y0, x1, y1) in pixels, inclusive-exclusive, long (2, 4), from the masks
        (the detection view; :func:`cnnlens.data.objects.make_shapes_objects` has them all)."""
        return boxes_from_masks(self._masks[index]).long()


_D = TypeVar("_D", bound=ImageTensorDataset)


def _shapes_dataset(
    cls: type[_D],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    name: str,
    split: str,
    seed: int,
    multilabel: bool = False,
    **arrays: np.ndarray,
) -> _D:
    """The dataset ``cls`` of generated ``images`` and ``labels`` (the shape classes, no
    normalization preset), each of ``arrays`` set as the attribute of its name (a tensor),
    ``seed`` kept."""
    ds = cls(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        SHAPE_CLASSES,
        "none",
        name=name,
        split=split,
        multilabel=multilabel,
    )
    for attr, values in arrays.items():
        setattr(ds, attr, torch.from_numpy(values))
    ds.seed = seed
    return ds


def load_shapes(
    split: str = "train", *, n: int | None = None, size: int = 64, seed: int = 0
) -> ShapesDataset:
    """The ``shapes`` dataset: ``n`` images (default 5,000 train / 1,000 test)."""
    n = n if n is not None else (5000 if split == "train" else 1000)
    images, labels, masks = make_shapes(n, size=size, seed=seed, split=split)
    return _shapes_dataset(
        ShapesDataset, images, labels, name="shapes", split=split, seed=seed, _masks=masks
    )


def load_shapes_pair(
    split: str = "train", *, n: int | None = None, size: int = 64, seed: int = 0
) -> ShapesPairDataset:
    """The ``shapes-pair`` dataset: ``n`` images (default 5,000 train / 1,000 test)."""
    n = n if n is not None else (5000 if split == "train" else 1000)
    images, pairs, masks = make_shapes_pair(n, size=size, seed=seed, split=split)
    targets = np.zeros((n, len(SHAPE_CLASSES)), dtype=np.float32)
    np.put_along_axis(targets, pairs, 1.0, axis=1)
    return _shapes_dataset(
        ShapesPairDataset,
        images,
        targets,
        name="shapes-pair",
        split=split,
        seed=seed,
        multilabel=True,
        _masks=masks,
        _pairs=pairs,
    )
