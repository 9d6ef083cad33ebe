"""Several labelled objects per image, for detection and segmentation: ``shapes-objects``.

The images are those of ``shapes-pair`` (:func:`~cnnlens.data.shapes.make_shapes_pair`: two
shapes of different classes per image, never touching); this module adds what a detector and
a segmenter train and are checked on: per-object boxes, per-object masks and a per-pixel
class map, with class 0 the background (``OBJECT_TASK_CLASSES``). One generator, so the
classification, detection and segmentation views of an image agree pixel for pixel.

Example:
    >>> data = make_shapes_objects(8, size=64, split="test")
    >>> data.boxes.shape, data.segmentation().shape
    (torch.Size([8, 2, 4]), torch.Size([8, 64, 64]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cnnlens.data.shapes import SHAPE_CLASSES, boxes_from_masks, make_shapes_pair

__all__ = ["OBJECT_TASK_CLASSES", "ShapesObjects", "boxes_from_masks", "make_shapes_objects"]

#: Class names of detection/segmentation on shapes: index 0 is the background.
OBJECT_TASK_CLASSES = ["background", *SHAPE_CLASSES]


@dataclass(frozen=True)
class ShapesObjects:
    """Generated images with two labelled objects each (see the module docstring).

    Attributes:
        images: float32 (N, 3, H, W) in [0, 1].
        labels: long (N, 2), the objects' classes into :data:`OBJECT_TASK_CLASSES` (1..5).
        masks: bool (N, 2, H, W), one per object, in the order of ``labels``.
        boxes: float32 (N, 2, 4), ``(x0, y0, x1, y1)`` pixels, tight around each mask.
        classes: :data:`OBJECT_TASK_CLASSES`.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    boxes: Tensor
    classes: tuple[str, ...] = tuple(OBJECT_TASK_CLASSES)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def segmentation(self) -> Tensor:
        """The per-pixel class map, long (N, H, W): 0 background, the object's class on it."""
        n, _, h, w = self.masks.shape
        out = torch.zeros(n, h, w, dtype=torch.long)
        for slot in range(self.masks.shape[1]):
            cls = self.labels[:, slot, None, None].expand(n, h, w)
            out = torch.where(self.masks[:, slot], cls, out)
        return out

    def detection_targets(self, indices: Tensor | None = None) -> list[dict[str, Tensor]]:
        """torchvision's training targets: one ``{"boxes", "labels"}`` per image."""
        idx = torch.arange(len(self)) if indices is None else torch.as_tensor(indices)
        return [{"boxes": self.boxes[i], "labels": self.labels[i]} for i in idx.tolist()]


def make_shapes_objects(
    n: int, *, size: int = 64, seed: int = 0, split: str = "train"
) -> ShapesObjects:
    """``n`` images of two shapes of different classes, with boxes, masks and class maps.

    A pure function of ``(n, size, seed, split)``; the images equal ``shapes-pair``'s.
    """
    images, pair, masks = make_shapes_pair(n, size=size, seed=seed, split=split)
    m = torch.from_numpy(masks)
    return ShapesObjects(
        images=torch.from_numpy(images).float().div_(255.0),
        labels=torch.from_numpy(pair) + 1,
        masks=m,
        boxes=boxes_from_masks(m),
    )
