"""Object detection targets: one detection of a torchvision detector, scored with the
post-processing opened (no threshold, no NMS), and the FPN level it reaches."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.core.checks import check_float
from cnnlens.errors import TargetError
from cnnlens.targets.base import (
    Target,
    _per_image,
    _rows_of,
    _take_rows,
    backbone_layer,
    head_inputs,
)

# The post-processing settings of torchvision's detectors, opened so that no candidate is
# dropped: (owner attribute, or "" for the model itself, setting, opened value)
_OPEN = (
    ("roi_heads", "score_thresh", 0.0),
    ("roi_heads", "nms_thresh", 1.0),
    ("roi_heads", "detections_per_img", 10**6),
    ("", "score_thresh", 0.0),
    ("", "nms_thresh", 1.0),
    ("", "detections_per_img", 10**6),
    ("", "topk_candidates", 10**6),
)


@contextmanager
def open_postprocessing(model: nn.Module) -> Iterator[None]:
    """Open a torchvision detector's post-processing for one call, then restore it.

    The score threshold becomes 0, the NMS IoU threshold 1.0 (no box suppresses another),
    and the per-image and per-level caps become unlimited, so every candidate (anchor or
    proposal x class) reaches the output; a :class:`Detection` then reads its matched
    candidate's score whatever the deployed thresholds and NMS are. Faster R-CNN's region
    proposals (the RPN's own NMS) are part of the model and stay as they are.
    """
    saved = []
    try:
        for owner_name, attr, value in _OPEN:
            owner = getattr(model, owner_name, None) if owner_name else model
            if owner is not None and hasattr(owner, attr):
                saved.append((owner, attr, getattr(owner, attr)))
                setattr(owner, attr, value)
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU (N, M) of boxes ``(x0, y0, x1, y1)``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


class Detection(Target):
    """One detection of an object detector, by index or matched to a reference box.

    By ``box`` (and ``label``): among the image's detections of that label, the one with the
    highest IoU with the box, if IoU >= ``iou``; its class score is the score (plus its IoU
    with the box when ``box_fit``, which also explains how well the box fits):

    $$s_b = p_{b,d^*} \\;[+\\ \\mathrm{IoU}(B_{d^*}, B_{ref})], \\quad
    d^* = \\arg\\max_{d:\\,\\ell_d = \\ell} \\mathrm{IoU}(B_d, B_{ref})$$

    No match gives 0 (graph-connected) and a warning. By ``index``: detection ``index`` of
    the image's list (sorted by score), which may be a different object in a perturbed image,
    so prefer ``box`` for perturbation methods.

    Outputs: torchvision's list of dicts (``boxes``, ``labels``, ``scores``) from Faster
    R-CNN, RetinaNet, FCOS, SSD/SSDlite. During the call the detector's post-processing is
    opened (:func:`open_postprocessing`), so the matched candidate is found among all
    pre-NMS candidates and its score does not depend on the score threshold or the NMS.
    Boxes are in input-image pixels, as the detector returns them. ``box`` is 4 numbers (every
    image) or (B, 4).

    For a YOLO-style model whose head returns raw predictions (B, N, 5 + C) (box, objectness,
    class scores), write the score directly; it never passes through NMS::

        def yolo_target(raw):           # raw: (B, N, 5 + C); pick anchors by IoU first
            return (raw[:, anchor, 4].sigmoid() * raw[:, anchor, 5 + cls].sigmoid())
    """

    reads = "a detector's list of {boxes, labels, scores}, post-processing opened"

    def __init__(
        self,
        index: int | None = None,
        *,
        box=None,
        label: int | None = None,
        iou: float = 0.5,
        box_fit: bool = False,
    ):
        if (index is None) == (box is None):
            raise TargetError("Detection needs either index= or box= (not both)")
        self.index = None if index is None else int(index)
        self.box = (
            _per_image(torch.as_tensor(box, dtype=torch.float32), 1, "box")
            if box is not None
            else None
        )
        self.label = None if label is None else int(label)
        self.iou = check_float("iou", iou, minimum=0.0, maximum=1.0, error=TargetError)
        self.box_fit = bool(box_fit)

    def rows(self, rows: Tensor) -> Detection:
        if self.box is None:
            return self
        new = Detection(box=[0, 0, 1, 1], label=self.label, iou=self.iou, box_fit=self.box_fit)
        new.box = _take_rows(self.box, rows)
        return new

    def bind(self, model: nn.Module):  # type: ignore[override]
        return open_postprocessing(model)

    def layer_for(self, model: nn.Module, x: Tensor | None = None) -> str | None:
        """The FPN level of the detection's scale.

        With the batch ``x``: the level the score reaches, found by one forward and backward
        (the FPN level, P6/P7 included, or SSD's feature map, with the largest gradient of
        the score); a one-stage
        detector's candidate depends on its own level only, so this is the level of the
        matched anchor. Otherwise (or when nothing matches), the reference box's size:
        Faster/Mask R-CNN: torchvision's RoI level rule (Lin et al., 2017, eq. 1),
        $k = \\lfloor 4 + \\log_2(\\sqrt{wh}/224) \\rfloor$ clipped to the FPN's levels;
        RetinaNet/FCOS: anchor sizes 32 * 2^l on P3..P7. The box's size is read in input
        pixels (exact when the input is at the detector's ``min_size``). By index, or without
        an FPN: see
        :func:`backbone_layer`.
        """
        fpn = getattr(getattr(model, "backbone", None), "fpn", None)
        if x is not None and head_inputs(model):
            reached = self._reached_level(model, x)
            if reached is not None:
                return reached
        if self.box is None or fpn is None or self.box.dim() != 1:
            return backbone_layer(model)
        w, h = float(self.box[2] - self.box[0]), float(self.box[3] - self.box[1])
        side = math.sqrt(max(w * h, 1.0))
        n = len(fpn.layer_blocks)
        if hasattr(model, "roi_heads"):
            # the RoI pooler's level range once it has seen the feature maps; else P2..
            mapper = getattr(getattr(model.roi_heads, "box_roi_pool", None), "map_levels", None)
            k_min = int(getattr(mapper, "k_min", 2))
            level = math.floor(4 + math.log2(side / 224 + 1e-6)) - k_min
        else:
            level = round(math.log2(max(side, 1.0) / 32))
        return f"backbone.fpn.layer_blocks.{min(max(level, 0), n - 1)}"

    def _reached_level(self, model: nn.Module, x: Tensor) -> str | None:
        """The FPN level whose activation the score depends on most, or None."""
        names = head_inputs(model)
        acts: dict[str, Tensor] = {}
        handles = [
            model.get_submodule(n).register_forward_hook(
                lambda _m, _i, o, n=n: acts.__setitem__(n, o) if isinstance(o, Tensor) else None
            )
            for n in names
        ]
        try:
            with torch.enable_grad():
                score = self(model(x.detach().requires_grad_(True))).sum()
                found = [n for n in names if n in acts]
                if not score.requires_grad or not found:
                    return None
                grads = torch.autograd.grad(score, [acts[n] for n in found], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        mass = [0.0 if g is None else float(g.detach().abs().sum()) for g in grads]
        best = max(range(len(found)), key=mass.__getitem__)
        return found[best] if mass[best] > 0 else None

    def __call__(self, outputs: Any) -> Tensor:
        if not isinstance(outputs, (list, tuple)) or not all(
            isinstance(o, Mapping) and "scores" in o for o in outputs
        ):
            raise TargetError(
                "Detection expects a detector's list of dicts with boxes, labels and scores; "
                f"got {type(outputs).__name__}"
            )
        refs = None if self.box is None else _rows_of(self.box, len(outputs), "box")
        return torch.stack(
            [self._one(o, None if refs is None else refs[i]) for i, o in enumerate(outputs)]
        )

    def _one(self, out: Mapping[str, Tensor], ref: Tensor | None) -> Tensor:
        scores, boxes, labels = out["scores"], out["boxes"], out["labels"]
        zero = scores.sum() * 0.0
        if ref is None:
            if self.index is None or self.index >= scores.shape[0]:
                return zero
            return scores[self.index]
        keep = torch.ones_like(labels, dtype=torch.bool)
        if self.label is not None:
            keep = labels == self.label
        if not bool(keep.any()):
            return zero
        ious = _box_iou(ref.to(boxes).reshape(1, 4), boxes)[0]
        ious = torch.where(keep, ious, torch.full_like(ious, -1.0))
        best = int(ious.argmax())
        if float(ious[best].detach()) < self.iou:
            warnings.warn(
                f"Detection: no candidate of label {self.label} overlaps box {ref.tolist()} "
                f"with IoU >= {self.iou}; its score is 0 (a map of it means nothing)",
                RuntimeWarning,
                stacklevel=2,
            )
            return zero
        score = scores[best]
        return score + ious[best] if self.box_fit else score
