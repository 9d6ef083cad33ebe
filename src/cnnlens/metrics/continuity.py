"""Continuity: how much the explanation jumps while the image slides sideways.

Montavon, Samek & Müller ("Methods for interpreting and understanding deep neural networks",
Digital Signal Processing 2018, arXiv:1706.07979) ask that an explanation vary continuously
with the input. As in Quantus 0.6's ``Continuity``, the image is shifted horizontally in
``n_steps`` equal steps from (almost) one width to the left to (almost) one width to the
right, the uncovered columns filled with the image's minimum ("black"), each shifted image
is re-explained, and the largest ratio of map change to input change is kept. The shifted
images are explained in stacked batches on the model's device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.errors import InputError
from cnnlens.metrics._common import (
    ExplainFn,
    check_batch_size,
    check_images,
    check_maps,
    explainer,
    frozen_eval,
)
from cnnlens.metrics._common import resolve_class_targets as _targets
from cnnlens.metrics.registry import MetricInputs, register_metric

__all__ = ["continuity", "translate_x"]


def translate_x(x: Tensor, shift: int) -> Tensor:
    """Images shifted ``shift`` pixels to the right (left when negative), the uncovered
    columns filled with each image's minimum value."""
    w = x.shape[-1]
    fill = x.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    out = fill.expand_as(x).clone()
    if abs(shift) < w:
        if shift >= 0:
            out[..., shift:] = x[..., : w - shift]
        else:
            out[..., :shift] = x[..., -shift:]
    return out


def _prepared(maps: Tensor, absolute: bool, normalise: bool) -> Tensor:
    m = maps.flatten(1).double()
    if normalise:
        peak = m.abs().amax(dim=1, keepdim=True)
        m = m / torch.where(peak > 0, peak, torch.ones_like(peak))
    return m.abs() if absolute else m


def continuity(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object = None,
    *,
    n_steps: int = 28,
    absolute: bool = True,
    normalise: bool = True,
    batch_size: int = 64,
    nan_when_prediction_changes: bool = False,
    **options: Any,
) -> Tensor:
    """Continuity (Montavon et al. 2018), in Quantus' form.

    With $x_t$ the image shifted by $t = -W + k\\,\\Delta$ pixels, $k = 1..n$,
    $\\Delta = \\lfloor (2W + 1) / n \\rfloor$, and maps scaled to a maximum of 1 and made
    absolute:

    $$C(x) = \\max_t \\frac{\\|\\Phi(x) - \\Phi(x_t)\\|_1}{\\|x - x_t\\|_2 + 10^{-9}}$$

    (The shifted map is compared with the unshifted one, as Quantus does.)

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: the maps $\\Phi(x)$ (B, H, W) of ``explain`` on ``x``.
        explain: a method name or ``explain(x, target) -> maps``.
        target: class per image (None: the top class).
        n_steps: number of shifts $n$.
        absolute: compare $|\\Phi|$ (Quantus' ``abs=True``).
        normalise: scale each map by its largest absolute value (Quantus' ``normalise``).
        batch_size: most images per explain call.
        nan_when_prediction_changes: a shift that changes the top class gives NaN there
            (the maximum is then NaN, as in Quantus).
        **options: options of the named method.

    Returns:
        float (B,), lower is better.
    """
    x = check_images(x)
    b, w = x.shape[0], x.shape[-1]
    check_batch_size(batch_size)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or not 1 <= n_steps <= 2 * w + 1:
        raise InputError(f"n_steps must be an integer in 1..{2 * w + 1} (2W+1), got {n_steps!r}")
    fn = explainer(model, explain, options)
    ref = _prepared(check_maps(maps, b), absolute, normalise)
    with frozen_eval(model):
        target = _targets(target, model(x))
    dx = (2 * w + 1) // n_steps
    shifts = [-w + dx * (k + 1) for k in range(n_steps)]
    per_call = max(1, batch_size // b)
    xf = x.flatten(1).double()
    scores = []
    for start in range(0, n_steps, per_call):
        chunk = shifts[start : start + per_call]
        xs = torch.cat([translate_x(x, s) for s in chunk])
        moved = _prepared(
            check_maps(fn(xs, target.repeat(len(chunk))), len(xs)), absolute, normalise
        )
        if nan_when_prediction_changes:
            with frozen_eval(model):
                changed = model(xs).argmax(dim=1) != target.repeat(len(chunk))
        for j in range(len(chunk)):
            rows = slice(j * b, (j + 1) * b)
            dist = (xf - xs[rows].flatten(1).double()).norm(dim=1)
            r = (ref - moved[rows]).abs().sum(dim=1) / (dist + 1e-9)
            if nan_when_prediction_changes:
                r = torch.where(changed[rows], torch.full_like(r, float("nan")), r)
            scores.append(r)
    return torch.stack(scores).amax(dim=0).float()


@register_metric(
    "continuity",
    family="robustness",
    higher_is_better=False,
    label="continuity",
    summary="max L1 map change / input change under horizontal shifts",
    needs_explain=True,
)
def _continuity(inputs: MetricInputs, **options: Any) -> Tensor:
    if inputs.explain is None:
        raise InputError("continuity re-explains shifted inputs; give an explain fn")
    settings = {"n_steps": 8, "batch_size": inputs.batch_size, **options}
    return continuity(
        inputs.model, inputs.x, inputs.maps, inputs.explain, inputs.target, **settings
    )
