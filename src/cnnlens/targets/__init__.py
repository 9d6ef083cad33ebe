"""Targets beyond single-label classification: small objects that say what to explain.

A target object is a callable ``target(outputs) -> (B,)`` scores, differentiable with respect
to the model's raw ``outputs``, so it works wherever a callable target does (every method of
:func:`cnnlens.explain`). Beyond the score, a target object may say:

* ``rows(rows)``: the target of a batch whose row ``i`` is a variant (masked, noisy, on a path)
  of image ``rows[i]`` (the perturbation methods and SmoothGrad batch such rows), so per-image
  references (a mask, a box, an embedding) follow their image;
* ``layer_for(model)``: the layer to read when ``layer=None`` (the backbone's last spatial map;
  for a detector the FPN level of the detection's scale), never a head layer the target does
  not reach;
* ``bind(model)``: a context for the call (a detector's post-processing thresholds opened, so
  the score does not depend on them; restored afterwards).

Plain ints, sequences, tensors and callables keep working as targets.

Example:
    >>> from cnnlens.targets import SegmentationRegion, Detection
    >>> region = SegmentationRegion(15)
    >>> exp = cnnlens.explain(seg_model, x, "gradcam", target=region)  # doctest: +SKIP
    >>> exp = cnnlens.explain(detector, x, "gradcam",
    ...                       target=Detection(box=[10, 20, 60, 80], label=3))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.checks import check_choice
from cnnlens.errors import TargetError
from cnnlens.targets.base import (
    Target,
    TargetScore,
    _per_image,
    _rows_of,
    _take_rows,
    backbone_layer,
    select_output,
)
from cnnlens.targets.detection import Detection, open_postprocessing

__all__ = [
    "Binary",
    "ClassTarget",
    "Detection",
    "EmbeddingSimilarity",
    "MultiLabel",
    "Regression",
    "SegmentationRegion",
    "Target",
    "TargetScore",
    "backbone_layer",
    "open_postprocessing",
    "select_output",
]


class ClassTarget(Target):
    """One class of a classifier: its logit, or its softmax probability.

    $$s_b = z_{b,c} \\quad\\text{or}\\quad s_b = \\frac{e^{z_{b,c}}}{\\sum_j e^{z_{b,j}}}$$

    Batches: ``index`` an int (every image) or one index per image.

    Args:
        index: the class (int) or one class per image (sequence / 1-D tensor).
        probability: score the softmax probability instead of the logit.
        output: key or index of the score tensor in a dict/tuple output (None: automatic).
    """

    reads = "class logits (B, N)"

    def __init__(
        self, index: int | Sequence[int] | Tensor, *, probability: bool = False, output=None
    ):
        self.index = _per_image(index, 0, "index")
        self.probability = bool(probability)
        self.output = output

    def rows(self, rows: Tensor) -> ClassTarget:
        new = ClassTarget(0, probability=self.probability, output=self.output)
        new.index = _take_rows(self.index, rows)
        return new

    def __call__(self, outputs: Any) -> Tensor:
        z = select_output(outputs, self.output)
        if z.dim() != 2:
            raise TargetError(f"ClassTarget expects scores (B, N), got {tuple(z.shape)}")
        if self.probability:
            z = z.float().softmax(dim=1)
        idx = _rows_of(self.index, z.shape[0], "index").to(z.device).long()
        if bool(((idx < 0) | (idx >= z.shape[1])).any()):
            raise TargetError(f"class index out of range 0..{z.shape[1] - 1}: {idx.tolist()}")
        return z.gather(1, idx.reshape(-1, 1))[:, 0]


class MultiLabel(ClassTarget):
    """One label of a multi-label head (independent sigmoids): its logit, or its sigmoid.

    $$s_b = z_{b,l} \\quad\\text{or}\\quad s_b = \\sigma(z_{b,l})$$

    For every label above a threshold, :meth:`labels_above` gives a (B, K) index tensor to
    pass as ``target`` (K maps per image, one per label).
    """

    reads = "label logits (B, L)"

    def rows(self, rows: Tensor) -> MultiLabel:
        new = MultiLabel(0, probability=self.probability, output=self.output)
        new.index = _take_rows(self.index, rows)
        return new

    def __call__(self, outputs: Any) -> Tensor:
        z = select_output(outputs, self.output)
        if z.dim() != 2:
            raise TargetError(f"MultiLabel expects label scores (B, L), got {tuple(z.shape)}")
        idx = _rows_of(self.index, z.shape[0], "index").to(z.device).long()
        if bool(((idx < 0) | (idx >= z.shape[1])).any()):
            raise TargetError(f"label index out of range 0..{z.shape[1] - 1}: {idx.tolist()}")
        s = z.gather(1, idx.reshape(-1, 1))[:, 0]
        return torch.sigmoid(s.float()) if self.probability else s

    @staticmethod
    def labels_above(outputs: Any, threshold: float = 0.5, *, output=None) -> Tensor:
        """Labels whose sigmoid exceeds ``threshold``, as a (B, K) long tensor for ``target``.

        K is the largest count in the batch; an image with fewer labels above the threshold
        is filled with its next most probable labels (so check ``sigmoid >= threshold`` when
        reading its maps). Raises when no image has a label above the threshold.
        """
        p = torch.sigmoid(select_output(outputs, output).detach().float())
        k = int((p > threshold).sum(dim=1).max())
        if k == 0:
            raise TargetError(
                f"no label has a sigmoid above threshold={threshold}; lower the threshold"
            )
        return p.topk(k, dim=1).indices


class Binary(Target):
    """A single-unit binary classifier: evidence for (``positive``) or against the class.

    $$s_b = +z_b \\ \\text{(positive)} \\quad\\text{or}\\quad s_b = -z_b \\ \\text{(negative)}$$

    The logit's sign flips the gradients, so a map of the negative target shows what speaks
    against the class. Output (B,), (B, 1) or (B, N) with ``unit``.
    """

    reads = "one output unit (B,) or (B, 1)"
    sign: ClassVar[dict[str, float]] = {"positive": 1.0, "negative": -1.0}

    def __init__(self, evidence: str = "positive", *, unit: int = 0, output=None):
        self.evidence = check_choice("evidence", evidence, tuple(self.sign), error=TargetError)
        self.unit = int(unit)
        self.output = output

    def _unit(self, outputs: Any) -> Tensor:
        z = select_output(outputs, self.output)
        if z.dim() == 1:
            return z
        if z.dim() == 2 and 0 <= self.unit < z.shape[1]:
            return z[:, self.unit]
        raise TargetError(
            f"{type(self).__name__} expects (B,) or (B, N) outputs with unit < N; got "
            f"{tuple(z.shape)} and unit={self.unit}"
        )

    def __call__(self, outputs: Any) -> Tensor:
        return self.sign[self.evidence] * self._unit(outputs)


class Regression(Binary):
    """A regression output: the value (what raises it) or its decrease (what lowers it).

    $$s_b = +y_b \\ \\text{(increase)} \\quad\\text{or}\\quad s_b = -y_b \\ \\text{(decrease)}$$
    """

    reads = "one regression output (B,) or (B, N)"
    sign: ClassVar[dict[str, float]] = {"increase": 1.0, "decrease": -1.0}

    def __init__(self, direction: str = "increase", *, unit: int = 0, output=None):
        super().__init__(direction, unit=unit, output=output)


class EmbeddingSimilarity(Target):
    """Similarity of the model's embedding to a reference embedding (retrieval, siamese nets).

    $$s_b = \\frac{e_b \\cdot r}{\\lVert e_b\\rVert\\,\\lVert r\\rVert} \\ \\text{(cosine)}
    \\quad\\text{or}\\quad s_b = e_b \\cdot r \\ \\text{(dot)}$$

    The map shows what of the image "looks like" the reference. Build the reference from an
    image with :meth:`from_image`. ``reference`` is (D,) for every image or (B, D) per image.
    """

    reads = "the embedding (B, D) (any trailing axes are flattened)"

    def __init__(self, reference: Tensor, *, metric: str = "cosine", output=None):
        self.reference = _per_image(torch.as_tensor(reference).detach(), 1, "reference")
        self.metric = check_choice("metric", metric, ("cosine", "dot"), error=TargetError)
        self.output = output

    @classmethod
    def from_image(
        cls, model: nn.Module, image: Tensor, *, metric: str = "cosine", output=None
    ) -> EmbeddingSimilarity:
        """The target whose reference is ``model``'s embedding of ``image`` (C, H, W)."""
        from cnnlens.core.capture import frozen

        with frozen(model), torch.no_grad():
            emb = select_output(model(image.unsqueeze(0) if image.dim() == 3 else image), output)
        return cls(emb.flatten(1)[0], metric=metric, output=output)

    def rows(self, rows: Tensor) -> EmbeddingSimilarity:
        new = EmbeddingSimilarity(self.reference[:1] * 0, metric=self.metric, output=self.output)
        new.reference = _take_rows(self.reference, rows)
        return new

    def __call__(self, outputs: Any) -> Tensor:
        e = select_output(outputs, self.output).flatten(1).float()
        r = _rows_of(self.reference, e.shape[0], "reference").to(e.device).float()
        if r.shape[1] != e.shape[1]:
            raise TargetError(f"reference has {r.shape[1]} dimensions, the embedding {e.shape[1]}")
        if self.metric == "cosine":
            return F.cosine_similarity(e, r, dim=1)
        return (e * r).sum(dim=1)


class SegmentationRegion(Target):
    """A class of a semantic segmentation model summed over a region.

    $$s_b = \\sum_{(i,j) \\in R_b} z_{b,c,i,j}$$

    The region ``R`` is a mask (H, W) or (B, H, W), a box ``(x0, y0, x1, y1)`` in output pixels
    (``x1``/``y1`` exclusive), or, when neither is given, the model's own predicted region of
    the class (pixels whose argmax is ``c``, read from the outputs being scored; for the
    perturbation methods fix it first with :meth:`predicted`). Masks are resized (nearest) to
    the logits' size. Outputs: torchvision ``fcn_*``/``deeplabv3_*``/``lraspp_*`` dicts
    (``"out"``) or any (B, C, H, W) logits. The same score as pytorch-grad-cam's
    ``SemanticSegmentationTarget`` (with the mask given).
    """

    reads = "per-pixel class logits (B, C, H, W)"

    def __init__(self, cls: int, *, mask: Tensor | None = None, box=None, output=None):
        if mask is not None and box is not None:
            raise TargetError("give either mask or box, not both")
        self.cls = int(cls)
        self.mask = (
            _per_image(torch.as_tensor(mask).float(), 2, "mask") if mask is not None else None
        )
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            if x1 <= x0 or y1 <= y0:
                raise TargetError(f"box must be (x0, y0, x1, y1) with x1 > x0, y1 > y0; got {box}")
            self.box = (x0, y0, x1, y1)
        else:
            self.box = None
        self.output = output

    @classmethod
    def predicted(cls, model: nn.Module, x: Tensor, c: int, *, output=None) -> SegmentationRegion:
        """The target over the model's predicted region of class ``c`` for ``x``, fixed."""
        from cnnlens.core.capture import frozen

        with frozen(model), torch.no_grad():
            z = select_output(model(x if x.dim() == 4 else x.unsqueeze(0)), output)
        return cls(c, mask=(z.argmax(dim=1) == c).float(), output=output)

    def rows(self, rows: Tensor) -> SegmentationRegion:
        new = SegmentationRegion(self.cls, box=self.box, output=self.output)
        new.mask = _take_rows(self.mask, rows)
        return new

    def region(self, z: Tensor) -> Tensor:
        """The region (B, H, W) in [0, 1] at the logits' size."""
        b, _, h, w = z.shape
        if self.mask is not None:
            m = _rows_of(self.mask, b, "mask").to(z.device, torch.float32)
            if m.shape[-2:] != (h, w):
                m = F.interpolate(m.unsqueeze(1), size=(h, w), mode="nearest")[:, 0]
            return m
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            m = z.new_zeros((b, h, w), dtype=torch.float32)
            m[:, max(y0, 0) : y1, max(x0, 0) : x1] = 1.0
            return m
        return (z.detach().argmax(dim=1) == self.cls).float()

    def __call__(self, outputs: Any) -> Tensor:
        z = select_output(outputs, self.output)
        if z.dim() != 4 or not 0 <= self.cls < z.shape[1]:
            raise TargetError(
                f"SegmentationRegion expects logits (B, C, H, W) with class < C; got "
                f"{tuple(z.shape)} and class {self.cls}"
            )
        return (z[:, self.cls].float() * self.region(z)).sum(dim=(1, 2))
