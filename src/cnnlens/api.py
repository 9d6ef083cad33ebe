"""``cnnlens.explain``: one call for every registered method."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from cnnlens.core.explanation import Explanation
from cnnlens.core.keras import nchw_images
from cnnlens.core.layers import LayersLike
from cnnlens.core.outputs import OutputLike
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
    output: OutputLike = None,
    layout: str | None = None,
    **options: Any,
) -> Explanation:
    """Explain the model's predictions for ``x`` with a registered method.

    Args:
        model: any CNN (``nn.Module``), or the ``(model, info)`` pair of
            :func:`cnnlens.models.load`; it is never changed.
        x: images (B, C, H, W) or (C, H, W), preprocessed as the model expects.
        method: a name from :func:`cnnlens.list_methods`.
        target: None (top class), an int, one class per image, a (B, K) tensor, or a
            callable ``f(outputs) -> (B,)`` scores.
        layer: for CAM methods: None (automatic), a dotted name, a module, or a list.
        topk: explain each image's K top classes (maps (B, K, H, W)).
        output: which part of the model's output holds the scores: None (automatic: a
            tensor, an object's ``.logits``, a mapping's ``"logits"``/``"out"``), a key, an
            index or a callable ``f(outputs) -> (B, N)`` (see :mod:`cnnlens.core.outputs`);
            recorded in ``Explanation.output``.
        layout: for CAM methods, how the layer's output is laid out: ``"nchw"``,
            ``"nhwc"``, ``"tokens"`` (``"tokens:p"``) or ``"ncthw"``; None: read from the
            shapes, an error when ambiguous (see :mod:`cnnlens.core.layouts`).
        **options: the method's own options (e.g. ``n_steps`` for integrated gradients);
            CAM methods also take ``aug_smooth`` and ``eigen_smooth`` (see
            :mod:`cnnlens.methods.cam_smoothing`).

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
    model = _unwrap_loaded(model)
    from cnnlens.methods.cam_smoothing import SMOOTHING_OPTIONS, smooth_cam

    smoothing = {k: options.pop(k) for k in SMOOTHING_OPTIONS if k in options}
    check_options(cls, options)
    if layer is not None:
        if not cls.takes_layer(options):
            raise InputError(f"method {cls.name!r} works on the input and takes no layer argument")
        options["layer"] = layer
    if layout is not None:
        if not cls.takes_layer(options):
            raise InputError(f"method {cls.name!r} works on the input and takes no layout")
        options["layout"] = layout
    explainer = cls(model, **options)
    run = smooth_cam(explainer, **smoothing) if smoothing else explainer
    exp = run(x, target, topk=topk, output=output)
    # a reference (no copy), so the result can draw itself; a Keras model's (B, H, W, C)
    # images as (B, C, H, W), like its maps and raw attributions
    exp.inputs = nchw_images(x.detach()) if explainer.channels_last_input else x.detach()
    return exp


def _unwrap_loaded(model: Any) -> Any:
    """The network of a ``(model, info)`` pair as :func:`cnnlens.models.load` returns it (the
    info: an object with ``arch`` and ``preset``); anything else unchanged."""
    if (
        isinstance(model, tuple)
        and len(model) == 2
        and isinstance(model[0], nn.Module)
        and hasattr(model[1], "arch")
        and hasattr(model[1], "preset")
    ):
        return model[0]
    return model
