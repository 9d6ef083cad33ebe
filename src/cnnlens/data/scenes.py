"""``shapes-scenes``: cluttered scenes where a map has to find a small, off-centre object.

Each image holds **exactly one labelled object**, one of :data:`~cnnlens.data.shapes.
SHAPE_CLASSES` (circle, square, triangle, star, cross), and one to three **distractors**
drawn from shapes outside the label set (:data:`DISTRACTOR_CLASSES`: ring, bar, ell), on a
textured background with low-contrast blobs (clutter). The label is therefore well defined
for single-label classification: it is the class of the one object whose shape is in the
label set. Distractors have the same contrast polarity as the labelled object (a random
colour of the opposite lightness to the background), so "the salient thing" is not enough
to find it: a map must point at the object the class depends on.

Positions are uniform over the whole image (objects reach the borders), radii vary by a
factor of two, rotation and colours are random, and objects never overlap (their bounding
circles are at least 2 pixels apart). Per-object class indices (into
:data:`OBJECT_CLASSES`), boxes and masks are kept; ``masks(i)`` is the labelled object's
mask, the ground truth of localization metrics.

Everything is a pure function of ``(seed, split, n, size)``, drawn with vectorized numpy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cnnlens.data.base import ImageTensorDataset
from cnnlens.data.shapes import SHAPE_CLASSES, _render, _shapes_dataset, draw_shapes
from cnnlens.errors import InputError

__all__ = [
    "DISTRACTOR_CLASSES",
    "MAX_OBJECTS",
    "OBJECT_CLASSES",
    "ShapesScenesDataset",
    "draw_distractors",
    "load_shapes_scenes",
    "make_shapes_scenes",
]

DISTRACTOR_CLASSES = ["ring", "bar", "ell"]
#: Class names of :meth:`ShapesScenesDataset.object_classes` (labels first, distractors after).
OBJECT_CLASSES = SHAPE_CLASSES + DISTRACTOR_CLASSES
MAX_OBJECTS = 4  # the labelled object + up to 3 distractors
_SPLIT_STREAM = {"train": 0, "test": 1}
_CHUNK = 256
_RADIUS = (0.12, 0.2)  # circumradius of the labelled object, fraction of the size
_DISTRACTOR_RADIUS = (0.08, 0.15)
_BLOBS = (4, 10)  # number of clutter blobs per image
_BLOB_CONTRAST = 0.18  # max lightness change of a clutter blob


def draw_distractors(
    kind: int, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, angle: np.ndarray, size: int
) -> np.ndarray:
    """Boolean masks (n, size, size) of ``n`` distractors of one kind (index into
    :data:`DISTRACTOR_CLASSES`), each inside the circle of radius ``r`` around (cx, cy)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = c[None, :, None], c[None, None, :]
    cx, cy, r, angle = (np.asarray(a, dtype=np.float32)[:, None, None] for a in (cx, cy, r, angle))
    dx, dy = xx - cx, yy - cy
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / r
    v = (-dx * sin + dy * cos) / r
    name = DISTRACTOR_CLASSES[kind] if 0 <= kind < len(DISTRACTOR_CLASSES) else None
    if name == "ring":  # an annulus: hollow, unlike the filled circle
        rho2 = u * u + v * v
        return (rho2 <= 1.0) & (rho2 >= 0.45)
    if name == "bar":  # a long thin rectangle
        return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.22)
    if name == "ell":  # an L of two thick strokes
        return ((np.abs(u + 0.45) <= 0.25) & (np.abs(v) <= 0.9)) | (
            (np.abs(v - 0.65) <= 0.25) & (np.abs(u) <= 0.7)
        )
    raise InputError(f"distractor kind must be in 0..{len(DISTRACTOR_CLASSES) - 1}, got {kind}")


def _place(rng: np.random.Generator, r: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres (n, K) for radii (n, K) (NaN radius = no object) with every bounding circle
    inside the image and 2 pixels apart from the others; vectorized rejection sampling."""
    k = r.shape[1]
    rr = np.nan_to_num(r, nan=0.0)
    cx = rng.uniform(rr + 1, size - 1 - rr)
    cy = rng.uniform(rr + 1, size - 1 - rr)
    present = ~np.isnan(r)
    for attempt in range(10_000):
        d = np.hypot(cx[:, :, None] - cx[:, None, :], cy[:, :, None] - cy[:, None, :])
        need = rr[:, :, None] + rr[:, None, :] + 2
        clash = (d < need) & present[:, :, None] & present[:, None, :]
        clash &= ~np.eye(k, dtype=bool)[None]
        # move the later object of each clashing pair, keep the labelled object fixed
        move = np.triu(clash, 1).any(axis=1)
        if not move.any():
            return cx, cy
        if attempt % 50 == 49:  # stuck around a badly placed first object: redraw the image
            move |= move.any(axis=1, keepdims=True)
        cx[move] = rng.uniform(rr[move] + 1, size - 1 - rr[move])
        cy[move] = rng.uniform(rr[move] + 1, size - 1 - rr[move])
    raise InputError(
        f"could not place the objects apart in {size}x{size} images"
    )  # pragma: no cover


def _clutter(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Low-contrast soft blobs (n, 1, size, size), values in about [-0.18, 0.18]."""
    c = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = c[None, None, :, None], c[None, None, None, :]
    m = _BLOBS[1]
    count = rng.integers(_BLOBS[0], _BLOBS[1] + 1, n)
    on = (np.arange(m)[None, :] < count[:, None]).astype(np.float32)
    bx = rng.uniform(0, size, (n, m, 1, 1)).astype(np.float32)
    by = rng.uniform(0, size, (n, m, 1, 1)).astype(np.float32)
    s = rng.uniform(0.03, 0.08, (n, m, 1, 1)).astype(np.float32) * size
    a = rng.uniform(-_BLOB_CONTRAST, _BLOB_CONTRAST, (n, m, 1, 1)).astype(np.float32)
    blobs = a * on[:, :, None, None] * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * s * s))
    return blobs.sum(axis=1, keepdims=True)


def make_shapes_scenes(
    n: int, *, size: int = 64, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate the ``shapes-scenes`` data (see the module docstring).

    Labels are balanced (``n // 5`` or one more each) in random order; each image has 1 to 3
    distractors of random kinds.

    Returns:
        images uint8 (n, 3, size, size), labels int64 (n,), object classes int64
        (n, MAX_OBJECTS) into :data:`OBJECT_CLASSES` (slot 0 the labelled object, -1 for
        no object), object map uint8 (n, size, size) (0 background, ``k + 1`` on slot k).
    """
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if size < 32:
        raise InputError(f"size must be >= 32 pixels, got {size}")
    if split not in _SPLIT_STREAM:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], 7])
    nl, nd = len(SHAPE_CLASSES), len(DISTRACTOR_CLASSES)
    labels = rng.permutation(np.arange(n) % nl)
    n_distract = rng.integers(1, MAX_OBJECTS, n)
    kinds = np.full((n, MAX_OBJECTS), -1, dtype=np.int64)
    kinds[:, 0] = labels
    slots = np.arange(1, MAX_OBJECTS)[None, :] <= n_distract[:, None]
    kinds[:, 1:] = np.where(slots, nl + rng.integers(0, nd, (n, MAX_OBJECTS - 1)), -1)
    r = np.full((n, MAX_OBJECTS), np.nan)
    r[:, 0] = rng.uniform(*_RADIUS, n) * size
    r[:, 1:] = np.where(
        slots, rng.uniform(*_DISTRACTOR_RADIUS, (n, MAX_OBJECTS - 1)) * size, np.nan
    )
    cx, cy = _place(rng, r, size)
    angle = rng.uniform(0.0, 2 * math.pi, (n, MAX_OBJECTS))
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    objects = np.zeros((n, size, size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        m = np.zeros((sl.stop - sl.start, MAX_OBJECTS, size, size), dtype=bool)
        for slot in range(MAX_OBJECTS):
            for kind in range(nl + nd):
                sel = np.flatnonzero(kinds[sl, slot] == kind)
                if not len(sel):
                    continue
                j = sel + sl.start
                args = (cx[j, slot], cy[j, slot], r[j, slot], angle[j, slot], size)
                m[sel, slot] = (
                    draw_shapes(kind, *args) if kind < nl else draw_distractors(kind - nl, *args)
                )
        for slot in range(MAX_OBJECTS):
            objects[sl][m[:, slot]] = slot + 1
        raw = _render(rng, [m[:, s] for s in range(MAX_OBJECTS)], size).astype(np.float32)
        clutter = _clutter(rng, sl.stop - sl.start, size) * (~m.any(axis=1))[:, None]
        images[sl] = np.clip(np.rint(raw + 255.0 * clutter), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64), kinds, objects


class ShapesScenesDataset(ImageTensorDataset):
    """``shapes-scenes``: one labelled shape among distractors and clutter; label = its class.

    ``masks(i)`` is the labelled object's mask (the ground truth of localization metrics);
    :meth:`object_classes`, :meth:`object_masks` and :meth:`object_boxes` describe every
    object of the image, the labelled one first.

    Example:
        >>> ds = get_dataset("shapes-scenes", split="test", n=100)   # doctest: +SKIP
        >>> x, y = ds[0]; m = ds.masks(0); ds.object_boxes(0)
    """

    _per_sample = ("_objects", "_kinds")

    def masks(self, index: int) -> Tensor:
        """Ground-truth mask of image ``index``: bool (H, W), True on the labelled object."""
        return self._objects[index] == 1

    def object_classes(self, index: int) -> Tensor:
        """Class indices into :data:`OBJECT_CLASSES` of the image's objects, long (K,)."""
        kinds = self._kinds[index]
        return kinds[kinds >= 0]

    def object_masks(self, index: int) -> Tensor:
        """Masks of the image's objects, bool (K, H, W), in :meth:`object_classes` order."""
        k = len(self.object_classes(index))
        return (
            self._objects[index][None] == torch.arange(1, k + 1, dtype=torch.uint8)[:, None, None]
        )

    def object_boxes(self, index: int) -> Tensor:
        """Boxes (x0, y0, x1, y1) in pixels, inclusive-exclusive, long (K, 4), from the masks."""
        boxes = []
        for m in self.object_masks(index):
            ys, xs = m.any(dim=1).nonzero().flatten(), m.any(dim=0).nonzero().flatten()
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        return torch.tensor(boxes, dtype=torch.long).view(-1, 4)


def load_shapes_scenes(
    split: str = "train", *, n: int | None = None, size: int = 64, seed: int = 0
) -> ShapesScenesDataset:
    """The ``shapes-scenes`` dataset: ``n`` images (default 8,000 train / 1,000 test)."""
    n = n if n is not None else (8000 if split == "train" else 1000)
    images, labels, kinds, objects = make_shapes_scenes(n, size=size, seed=seed, split=split)
    return _shapes_dataset(
        ShapesScenesDataset,
        images,
        labels,
        name="shapes-scenes",
        split=split,
        seed=seed,
        _objects=objects,
        _kinds=kinds,
    )
