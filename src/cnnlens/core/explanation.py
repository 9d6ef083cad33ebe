"""The result of an explanation method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from cnnlens.core.display import Displayable


@dataclass(repr=False)
class Explanation(Displayable):
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
        inputs: the explained input (set by :func:`cnnlens.explain`), for pictures.
        class_names: names of the model's classes, for pictures (``None``: indices).
        preset: the input's normalization (a preset name or mean/std object), for pictures.

    An explanation draws itself (see :class:`cnnlens.core.display.Displayable`): in Jupyter
    it shows each input with every map overlaid, the class names and probabilities, the
    method and the layer; ``exp.show()``, ``exp.plot(ax=ax)``, ``exp.save("out.png")`` do
    the same in matplotlib and on disk, and take the options of
    :func:`cnnlens.viz.explanation_grid` (``image=``/``geometry=`` to draw on the photo).

    Example:
        >>> exp = cnnlens.explain(model, x, method="gradcam", topk=2)   # doctest: +SKIP
        >>> exp.maps.shape                                              # (B, 2, H, W)
        >>> exp.class_names, exp.preset = weights.meta["categories"], "imagenet"  # doctest: +SKIP
        >>> exp.save("cat_gradcam.png")                                 # doctest: +SKIP
    """

    maps: Tensor
    raw: Tensor
    targets: Tensor
    scores: Tensor | Any
    method: str
    layer: str | None = None
    per_layer: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    inputs: Tensor | None = None
    class_names: list[str] | None = None
    preset: Any = None
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
            inputs=move(self.inputs),
            class_names=self.class_names,
            preset=self.preset,
            output=self.output,
        )

    def facts(self) -> list[tuple[str, str]]:
        """Method, layer, map shape and explained classes, for the notebook view."""
        out = [("method", self.method)]
        if self.layer:
            out.append(("layer", self.layer))
        out.append(("maps", " x ".join(str(v) for v in self.maps.shape)))
        t = self.targets.reshape(self.targets.shape[0], -1).tolist()
        names = self.class_names
        shown = [
            ", ".join(names[c] if names and 0 <= c < len(names) else str(c) for c in row)
            for row in t[:8]
        ]
        out.append(("classes", "; ".join(shown) + ("; ..." if len(t) > 8 else "")))
        return out

    def __repr__(self) -> str:
        layer = f", layer={self.layer!r}" if self.layer else ""
        return (
            f"Explanation(method={self.method!r}{layer}, maps={tuple(self.maps.shape)}, "
            f"targets={self.targets.tolist() if self.targets.numel() <= 16 else '...'})"
        )
