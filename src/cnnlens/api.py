"""``cnnlens.explain``: one call for every registered method."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from cnnlens.core.explanation import Explanation
from cnnlens.core.layers import LayersLike
from cnnlens.core.registry import check_options, get_method
from cnnlens.core.targets import TargetLike
from cnnlens.errors import InputError, MethodNotFoundError


def explain(
    model: nn.Module,
    x: Tensor,
    method: str = "gradcam",
    target: TargetLike = None,
    layer: LayersLike = None,
    *,
    topk: int | None = None,
    **options: Any,
) -> Explanation:
    """Explain the model's predictions for ``x`` with a registered method.

    Args:
        model: any CNN (``nn.Module``); it is never changed.
        x: images (B, C, H, W) or (C, H, W), preprocessed as the model expects.
        method: a name from :func:`cnnlens.list_methods`.
        target: None (top class), an int, one class per image, a (B, K) tensor, or a
            callable ``f(outputs) -> (B,)`` scores.
        layer: for CAM methods: None (automatic), a dotted name, a module, or a list.
        topk: explain each image's K top classes (maps (B, K, H, W)).
        **options: the method's own options (e.g. ``n_steps`` for integrated gradients).

    Returns:
        The :class:`Explanation`.

    Example:
        >>> exp = cnnlens.explain(model, x, "gradcam", layer="layer4", topk=2)  # doctest: +SKIP
    """
    if not isinstance(method, str):
        raise MethodNotFoundError(
            f"method must be a name from cnnlens.list_methods(), got {type(method).__name__}"
        )
    cls = get_method(method)
    check_options(cls, options)
    if layer is not None:
        if not cls.takes_layer(options):
            raise InputError(f"method {cls.name!r} works on the input and takes no layer argument")
        options["layer"] = layer
    return cls(model, **options)(x, target, topk=topk)
