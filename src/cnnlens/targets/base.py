"""The base of the target objects and what they share: output selection, per-image rows,
the backbone layer of torchvision's segmentation models and detectors."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cnnlens.errors import TargetError


def select_output(outputs: Any, key: str | int | None = None) -> Tensor:
    """The score tensor of a model's ``outputs``: the tensor itself, ``outputs[key]``, or
    (``key`` None) a mapping's ``"out"``/``"logits"`` entry or an object's ``.logits``."""
    if key is not None:
        try:
            got = outputs[key]
        except (KeyError, IndexError, TypeError) as err:
            raise TargetError(
                f"output key {key!r} not found in the model's {type(outputs).__name__} output"
            ) from err
    elif isinstance(outputs, Tensor):
        got = outputs
    elif isinstance(outputs, Mapping):
        names = [k for k in ("out", "logits") if k in outputs]
        if not names:
            raise TargetError(
                f"the model returns a mapping with keys {list(outputs)}; give output= one of them"
            )
        got = outputs[names[0]]
    elif isinstance(getattr(outputs, "logits", None), Tensor):
        got = outputs.logits
    else:
        raise TargetError(
            f"the model returns {type(outputs).__name__}; give output= (a key or an index)"
        )
    if not isinstance(got, Tensor):
        raise TargetError(f"output {key!r} is a {type(got).__name__}, not a tensor")
    return got


def _take_rows(value: Tensor | None, rows: Tensor) -> Tensor | None:
    """Per-image ``value`` (B, ...) indexed by ``rows``; a shared value (no batch axis) as is."""
    if value is None or value.dim() == 0 or not getattr(value, "_per_image", False):
        return value
    out = value[rows.to(value.device)]
    out._per_image = True  # type: ignore[attr-defined]
    return out


def _per_image(value: Any, dims: int, name: str) -> Tensor | None:
    """``value`` as a tensor; flagged per image when it has one more axis than ``dims``."""
    if value is None:
        return None
    t = torch.as_tensor(value).detach().clone()  # never flag the caller's tensor
    if t.dim() not in (dims, dims + 1):
        raise TargetError(f"{name} must have {dims} or {dims + 1} axes, got {tuple(t.shape)}")
    if t.dim() == dims + 1:
        t._per_image = True  # type: ignore[attr-defined]
    return t


def _rows_of(t: Tensor | None, batch: int, name: str) -> Tensor | None:
    """A per-image tensor checked against the batch size, or a shared one expanded to it."""
    if t is None:
        return None
    if getattr(t, "_per_image", False):
        if t.shape[0] != batch:
            raise TargetError(f"{name} has {t.shape[0]} rows but the batch has {batch} images")
        return t
    return t.unsqueeze(0).expand(batch, *t.shape)


class Target:
    """Base of the target objects: a score of the outputs, (B,), and what the engine may ask.

    Attributes:
        reads: which part of the model's output the target scores (for documentation).
    """

    reads: ClassVar[str] = "the model's output"

    def __call__(self, outputs: Any) -> Tensor:
        raise NotImplementedError

    def rows(self, rows: Tensor) -> Target:
        """The target for a batch whose row ``i`` is a variant of image ``rows[i]``."""
        return self

    def layer_for(self, model: nn.Module, x: Tensor | None = None) -> str | None:
        """The layer to explain when ``layer=None`` (``x``: the explained batch); None lets
        the engine choose."""
        return backbone_layer(model)

    @contextmanager
    def bind(self, model: nn.Module) -> Iterator[None]:
        """A context around one explain call on ``model`` (nothing here)."""
        yield

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({fields})"


def backbone_layer(model: nn.Module) -> str | None:
    """The backbone's last spatial feature map of a torchvision segmentation model or detector.

    Segmentation (``fcn_*``, ``deeplabv3_*``, ``lraspp_*``): ``backbone.<last returned
    layer>``. Detectors with an FPN: its finest level ``backbone.fpn.layer_blocks.0``; SSD /
    SSDlite: the backbone's last stage ``backbone.features.<last>``. None for any other
    model (the engine chooses).
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return None
    returned = getattr(backbone, "return_layers", None)
    if isinstance(returned, dict) and returned:
        order = [n for n, _ in backbone.named_children()]
        last = max(returned, key=lambda n: order.index(n) if n in order else -1)
        return f"backbone.{last}"
    if hasattr(backbone, "fpn"):
        return "backbone.fpn.layer_blocks.0"
    features = getattr(backbone, "features", None)
    if isinstance(features, nn.Sequential) and len(features):
        return f"backbone.features.{len(features) - 1}"
    return None


def head_inputs(model: nn.Module) -> list[str]:
    """The feature maps a torchvision detector's heads read: the FPN's levels (P6/P7
    included), or SSD's backbone stages and extra layers."""
    out = []
    for name, _ in model.named_modules():
        parts = name.split(".")
        if len(parts) == 4 and parts[:2] == ["backbone", "fpn"]:
            if parts[2] in ("layer_blocks", "extra_blocks"):
                out.append(name)
        elif len(parts) == 3 and parts[0] == "backbone" and parts[1] in ("features", "extra"):
            out.append(name)
    return out


class TargetScore(nn.Module):
    """``model`` followed by ``target``: a one-output "classifier" (B, 1) of the target's score.

    The adapter lets the trust metrics of :mod:`cnnlens.metrics` (deletion, insertion,
    confidence change, ...) read a detection's or a region's score: pass
    ``TargetScore(model, target)`` as the model, ``target=0`` and ``activation=None``. The
    target's :meth:`Target.bind` context is entered around each forward. A target with one
    reference per image (a (B, 4) box, a (B, H, W) mask) needs the batch the metric feeds,
    so give such a target one image at a time (a mismatch raises).

    Example:
        >>> score = TargetScore(detector, Detection(box=box, label=3))  # doctest: +SKIP
        >>> cnnlens.metrics.deletion(score, x, exp.maps, target=0, activation=None)
    """

    def __init__(self, model: nn.Module, target: Any) -> None:
        super().__init__()
        if not callable(target):
            raise TargetError(f"target must be a target object or callable, got {target!r}")
        self.model = model
        self.target = target

    def forward(self, x: Tensor) -> Tensor:
        bind = getattr(self.target, "bind", None)
        with bind(self.model) if callable(bind) else contextmanager(_nothing)():
            score = self.target(self.model(x))
        return score.reshape(-1, 1)


def _nothing() -> Iterator[None]:
    yield
