"""Numbers that describe one prediction and one map, as written to ``results.json`` and the
report: class probabilities, the top classes, a map's mean, coverage and peak, and the
per-map scalars an explanation carries (integrated gradients' ``delta``).

Example:
    >>> probs = probabilities(model(x))                                  # doctest: +SKIP
    >>> top_predictions(probs[0], class_names, k=3)                      # doctest: +SKIP
    [{'class': 'cat', 'index': 281, 'prob': 0.91}, ...]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from cnnlens.core.checks import check_choice
from cnnlens.errors import InputError

__all__ = ["map_stats", "probabilities", "scalar_extras", "top_predictions"]


def probabilities(scores: Tensor, activation: str | None = "softmax") -> Tensor:
    """Class probabilities (B, N) as float32 on the scores' device: ``"softmax"``
    (single-label), ``"sigmoid"`` (one per class, multi-label) or the raw scores (``None``).

    Raises:
        InputError: when ``scores`` is not a (B, N) tensor, or for another ``activation``.
    """
    check_choice("activation", activation, ("softmax", "sigmoid", None))
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise InputError(f"the model must return class scores of shape (B, N), got {shape}")
    s = scores.detach().float()
    if activation == "softmax":
        return torch.softmax(s, dim=-1)
    if activation == "sigmoid":
        return torch.sigmoid(s)
    return s


def top_predictions(probs: Tensor, class_names: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one image: ``[{"class", "index", "prob"}, ...]``."""
    k = min(k, int(probs.numel()))
    values, indices = probs.float().topk(k)
    return [
        {"class": class_names[i], "index": int(i), "prob": float(p)}
        for p, i in zip(values.tolist(), indices.tolist())
    ]


def map_stats(
    map_: Tensor, raw: Tensor | None = None, extras: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Numbers that describe one map: ``mean`` (of the [0, 1] map), ``coverage`` (share of
    pixels at 0.5 or above), ``peak_y`` / ``peak_x`` (where the maximum is, as a share of the
    height and width), for pixel attributions ``sum`` (the total attribution, for integrated
    gradients about the score difference to the baseline), plus ``extras`` (e.g. ``delta``)."""
    m = map_.detach().float().cpu()
    h, w = m.shape[-2:]
    flat = int(m.argmax())
    out = {
        "mean": round(float(m.mean()), 4),
        "coverage": round(float((m >= 0.5).float().mean()), 4),
        "peak_y": round((flat // w + 0.5) / h, 3),
        "peak_x": round((flat % w + 0.5) / w, 3),
    }
    if raw is not None and raw.dim() == m.dim() + 1:
        out["sum"] = float(f"{float(raw.detach().double().sum()):.4g}")
    for key, value in (extras or {}).items():
        if math.isfinite(value):
            out[key] = float(f"{value:.4g}")
    return out


def scalar_extras(
    extras: Mapping[str, Any], index: tuple[int, ...], shape: Sequence[int]
) -> dict[str, float]:
    """Per-map scalars from an explanation's ``extras``: the float tensors of exactly the
    targets' ``shape`` ((B,) or (B, K), e.g. integrated gradients' ``delta``), read at
    ``index`` = ``(i,)`` or ``(i, k)``."""
    out: dict[str, float] = {}
    for key, value in extras.items():
        if (
            isinstance(value, Tensor)
            and value.is_floating_point()
            and tuple(value.shape) == tuple(shape)
        ):
            out[key] = float(value[index])
    return out
