"""The result of an explanation method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Explanation:
    """Maps that explain a batch of predictions.

    Attributes:
        maps: float32 tensor with values in [0, 1] at the input's spatial size, on the
            input's device: (B, H, W) for one class per image, (B, K, H, W) for K classes.
        raw: the unnormalized attribution: (B[, K], h, w) for CAM methods (at the layer's
            resolution), (B[, K], C, H, W) for pixel methods.
        targets: long tensor of the explained classes, (B,) or (B, K); -1 where the target
            was a callable.
        scores: the model's outputs for the input, detached.
        method: the registry name of the method.
        layer: dotted name of the layer used ("a+b" for several fused layers), or None for
            pixel methods.
        per_layer: maps of each layer when several layers were fused.
        extras: method-specific results (e.g. ``delta`` for integrated gradients).
        output: which part of the model's output the scores were read from (``"tensor"``,
            ``"logits"``, ``"out"``, the ``output=`` key or index, ``"whole output"`` for a
            callable target); see :mod:`cnnlens.core.outputs`.

    Example:
        >>> exp = cnnlens.explain(model, x, method="gradcam", topk=2)   # doctest: +SKIP
        >>> exp.maps.shape                                              # (B, 2, H, W)
    """

    maps: Tensor
    raw: Tensor
    targets: Tensor
    scores: Tensor | Any
    method: str
    layer: str | None = None
    per_layer: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    output: str | None = None

    @property
    def batch_size(self) -> int:
        return int(self.maps.shape[0])

    def to(self, device: torch.device | str) -> Explanation:
        """A copy with every tensor moved to ``device``."""

        def move(v: Any) -> Any:
            return v.to(device) if isinstance(v, Tensor) else v

        return Explanation(
            maps=move(self.maps),
            raw=move(self.raw),
            targets=move(self.targets),
            scores=move(self.scores),
            method=self.method,
            layer=self.layer,
            per_layer={k: move(v) for k, v in self.per_layer.items()},
            extras={k: move(v) for k, v in self.extras.items()},
            output=self.output,
        )

    def __repr__(self) -> str:
        layer = f", layer={self.layer!r}" if self.layer else ""
        return (
            f"Explanation(method={self.method!r}{layer}, maps={tuple(self.maps.shape)}, "
            f"targets={self.targets.tolist() if self.targets.numel() <= 16 else '...'})"
        )
