"""More faithfulness measures: IROF, Sensitivity-n, Infidelity and Sufficiency.

* :func:`irof` (Rieger & Hansen 2020): superpixels removed in map order; the area over
  the class probability's curve.
* :func:`sensitivity_n` (Ancona et al. 2018): does the map's mass on the removed values
  track the score they cost, for each number ``n`` of removed values?
* :func:`infidelity` (Yeh et al. 2019): the squared error between the map's prediction of
  a perturbation's effect, $I^\\top\\Phi$, and the real score change, over given
  perturbations (or Quantus' cumulative square patches).
* :func:`sufficiency` (Dasgupta et al. 2022): of the other images whose maps are close,
  the share the model puts in the same class.

Each follows Quantus 0.6 on the same inputs (``tests/test_faithfulness_extra.py``; the
deliberate differences, fixes of Quantus bugs, are named in each docstring) and runs
batched on the model's device: the perturbed copies go through the model ``batch_size``
images at a time, on the CPU through cnnlens' fast path (channels-last inputs, BatchNorm
folded into a private copy; :func:`cnnlens.metrics._common.fast_forward`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.core.checks import check_float, check_int
from cnnlens.errors import InputError
from cnnlens.methods.superpixel import segment_images
from cnnlens.metrics._common import (
    Activation,
    check_activation,
    check_batch_size,
    check_images,
    check_maps,
    fast_forward,
    fit_maps,
    frozen_eval,
    probabilities,
    resolve_class_targets,
)
from cnnlens.metrics.registry import MetricInputs, register_metric

__all__ = ["SensitivityN", "infidelity", "irof", "sensitivity_n", "sufficiency"]


def _prepare(x: Tensor, maps: Tensor, activation: Activation, batch_size: int):
    x = check_images(x)
    maps = fit_maps(check_maps(maps, x.shape[0]), tuple(x.shape[-2:])).double()
    check_batch_size(batch_size)
    check_activation(activation)
    return x, maps


def _scores(
    model: Callable[[Tensor], Tensor], xs: Tensor, target: Tensor, activation: Activation
) -> Tensor:
    """The target's score of each of k stacked batches xs (k, B, C, H, W), float64 (k, B)."""
    k, b = xs.shape[:2]
    probs = probabilities(model(xs.reshape(-1, *xs.shape[2:])), activation)
    return probs.gather(1, target.repeat(k).view(-1, 1)).double().view(k, b)


def _reference(
    model: nn.Module, x: Tensor, target: object, activation: Activation
) -> tuple[Tensor, Tensor]:
    """Class per image, long (B,), and its score on ``x``, float64 (B,) (in frozen_eval)."""
    out = probabilities(model(x), activation)
    target = resolve_class_targets(target, out)
    return target, out.gather(1, target.view(-1, 1)).squeeze(1).double()


def _cumulative_curve(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    step_of: Tensor,
    n_steps: int,
    fill: Tensor,
    activation: Activation,
    batch_size: int,
) -> Tensor:
    """The target's score (K, B) as values are set to ``fill`` cumulatively: at step k every
    value with ``step_of <= k`` (``step_of`` broadcasts to x) is replaced."""
    per_call = max(1, batch_size // x.shape[0])
    fast = fast_forward(model, x)
    curve = []
    for start in range(0, n_steps, per_call):
        ks = torch.arange(start, min(n_steps, start + per_call), device=x.device)
        gone = step_of.unsqueeze(0) <= ks.view(-1, 1, 1, 1, 1)
        xs = torch.where(gone, fill.unsqueeze(0), x.unsqueeze(0))
        curve.append(_scores(fast, xs, target, activation))
    return torch.cat(curve)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation along the last axis, float64; NaN where either is constant."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return torch.where(den > 0, (a * b).sum(-1) / den.clamp(min=1e-300), torch.nan)


def irof(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    segments: str | Tensor = "slic",
    n_segments: int = 50,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """Iterative Removal Of Features (Rieger & Hansen, "IROF: a low resource evaluation
    metric for explanation methods", ICLR 2020 workshop, arXiv:2003.08747).

    The image is cut into superpixels $S_1..S_n$, ranked by the mean map value inside them
    (highest first); they are set, cumulatively, to the image's mean value $\\bar x$, and
    the class probability relative to the original's forms a curve whose area (trapezoid
    rule, unit steps, as Quantus) is subtracted from $n$:

    $$\\mathrm{IROF} = n - \\sum_{k=1}^{n-1}
    \\frac{p_c(x^{(k)}) + p_c(x^{(k+1)})}{2\\,p_c(x)}$$

    with $x^{(k)}$ the image with its $k$ first superpixels replaced. Higher is better (a
    fast fall). Equal to Quantus 0.6's ``IROF`` on the same segments with the fill given
    as the image's mean; two deliberate differences: Quantus' ``"mean"`` fill is the mean of
    the whole *current* batch (it drifts as segments are replaced and depends on the other
    images), and its curves are zero-padded to the batch's largest segment count (one
    image's score depends on its neighbours); cnnlens scores each image on its own.

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: (B, H, W) maps.
        target: class per image (None: the top class).
        segments: ``"slic"``, ``"felzenszwalb"``, ``"quickshift"``, ``"grid"`` or labels
            (H, W) / (B, H, W) (see :func:`cnnlens.methods.superpixel.segment_images`).
        n_segments: superpixels asked of SLIC and the grid.
        activation: ``"softmax"`` (default, as Quantus), ``"sigmoid"`` or ``None``.
        batch_size: most images per forward pass.

    Returns:
        float (B,), higher is better, in [0, n] (more when the score rises).

    Example:
        >>> irof(model, x, exp.maps, segments="grid", n_segments=16)     # doctest: +SKIP
    """
    x, maps = _prepare(x, maps, activation, batch_size)
    b = x.shape[0]
    seg = segment_images(x, segments, n_segments=check_int("n_segments", n_segments))
    counts = seg.flatten(1).amax(1) + 1  # segments per image
    n = int(counts.max())
    flat = seg.flatten(1)
    total = torch.zeros(b, n, dtype=torch.float64, device=x.device)
    total.scatter_add_(1, flat, maps.flatten(1))
    size = torch.zeros_like(total).scatter_add_(1, flat, torch.ones_like(maps.flatten(1)))
    mean = torch.where(size > 0, total / size.clamp(min=1), -torch.inf)  # absent: last
    order = mean.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(n, device=x.device).expand(b, -1)
    )
    step_of = rank.gather(1, flat).view(b, 1, *x.shape[-2:])
    fill = x.flatten(1).mean(1).view(-1, 1, 1, 1)
    with frozen_eval(model):
        target, ref = _reference(model, x, target, activation)
        curve = _cumulative_curve(model, x, target, step_of, n, fill, activation, batch_size)
    ratio = (curve / ref).T  # (B, n)
    valid = torch.arange(n, device=x.device) < counts.view(-1, 1)
    inner = torch.where(valid[:, 1:], (ratio[:, 1:] + ratio[:, :-1]) / 2, 0.0).sum(1)
    return (counts.double() - inner).float()


@dataclass
class SensitivityN:
    """Sensitivity-n of a batch.

    Attributes:
        mass: float64 (B, K), the map's mass on the values removed after step k.
        drop: float64 (B, K), the class score's drop when they are removed.
        per_n: float (K,), the Pearson correlation of mass and drop over the images, for
            each step (Quantus' numbers).
        per_image: float (B,), the Pearson correlation of mass and drop over the steps,
            for each image (the registry's per-image score).
    """

    mass: Tensor
    drop: Tensor
    per_n: Tensor
    per_image: Tensor


def sensitivity_n(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    features_in_step: int = 1,
    max_fraction: float = 0.8,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> SensitivityN:
    """Sensitivity-n (Ancona, Ceolini, Öztireli & Gross, "Towards better understanding of
    gradient-based attribution methods for deep neural networks", ICLR 2018,
    arXiv:1711.06104).

    A map is *sensitive-n* when, for subsets $S$ of $n$ input values, the map's mass on
    $S$ equals the score's drop when $S$ is set to a baseline $b$ (the image's minimum):

    $$\\rho_n = \\operatorname{corr}\\Big(\\sum_{i \\in S_n} \\Phi_i,\\;
    f_c(x) - f_c(x_{[x_{S_n} = b]})\\Big)$$

    As in Quantus 0.6, $S_n$ holds the $n$ highest-ranked values (channels and pixels; a
    pixel's channels share its map value), $n$ grows by ``features_in_step`` up to
    ``max_fraction`` of the values, and $\\rho_n$ is taken over the batch's images.
    :attr:`SensitivityN.per_image` reads the same curves per image (correlation over $n$).
    A deliberate difference: Quantus correlates the cumulative drop with the mass of the
    *last step's* values only, not of all of $S_n$ (a linear model with its exact map
    scores 1 here and less in Quantus; ``tests/test_faithfulness_extra.py``). Quantus' cut
    is ``max_fraction`` of H*W steps' worth of values; cnnlens' of C*H*W.

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: (B, H, W) maps.
        target: class per image (None: the top class).
        features_in_step: values removed per step (a multiple of C keeps a pixel whole).
        max_fraction: the share of the C*H*W values removed at the last step.
        activation: ``"softmax"`` (default, as Quantus), ``"sigmoid"`` or ``None``.
        batch_size: most images per forward pass.

    Returns:
        a :class:`SensitivityN`; higher correlations are better.
    """
    x, maps = _prepare(x, maps, activation, batch_size)
    b, c, h, w = x.shape
    n_features = c * h * w
    step = check_int("features_in_step", features_in_step, maximum=n_features)
    check_float("max_fraction", max_fraction, minimum=0.0, maximum=1.0, strict_minimum=True)
    n_steps = int(max_fraction * n_features // step)
    if n_steps < 2:
        raise InputError(
            f"max_fraction * C*H*W / features_in_step must allow >= 2 steps, got {n_steps}"
        )
    a = maps.flatten(1).repeat(1, c)
    order = a.argsort(dim=1, descending=True, stable=True)
    step_of = torch.empty_like(order)
    step_of.scatter_(1, order, (torch.arange(n_features, device=x.device) // step).expand(b, -1))
    per_step = torch.zeros(b, -(-n_features // step), dtype=torch.float64, device=x.device)
    mass = per_step.scatter_add_(1, step_of, a).cumsum(1)[:, :n_steps]
    fill = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    with frozen_eval(model):
        target, ref = _reference(model, x, target, activation)
        curve = _cumulative_curve(
            model, x, target, step_of.view(b, c, h, w), n_steps, fill, activation, batch_size
        )
    drop = ref.unsqueeze(1) - curve.T
    per_n = _pearson(mass.T, drop.T).float()
    return SensitivityN(mass, drop, per_n, _pearson(mass, drop).float())


def _patch_steps(x: Tensor, patch_size: int) -> Tensor:
    """Raster index of each pixel's square patch, long (1, 1, H, W)."""
    h, w = x.shape[-2:]
    cols = -(-w // patch_size)
    rows = torch.arange(h, device=x.device) // patch_size
    return (rows.view(-1, 1) * cols + torch.arange(w, device=x.device) // patch_size).view(
        1, 1, h, w
    )


def infidelity(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    perturbations: Tensor | None = None,
    patch_size: int = 4,
    rescale: bool = False,
    activation: Activation = None,
    batch_size: int = 64,
) -> Tensor:
    """Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, "On the (in)fidelity and
    sensitivity of explanations", NeurIPS 2019, arXiv:1901.09392).

    Over perturbations $I$ (the input becomes $x - I$), the mean squared error between the
    change the map predicts and the real one:

    $$\\mathrm{INFD} = \\mathbb E_I\\Big[\\big(I^\\top \\Phi -
    (f_c(x) - f_c(x - I))\\big)^2\\Big]$$

    (a pixel's map value applies to each of its channels). Without ``perturbations``, as
    Quantus 0.6's ``Infidelity``: square patches of ``patch_size`` (raster order) set,
    cumulatively, to the image's minimum; one perturbation per patch. ``rescale=True``
    first scales each map by the least-squares factor $\\beta = \\mathbb E[I^\\top\\Phi\\,
    \\Delta f] / \\mathbb E[(I^\\top\\Phi)^2]$ (the paper's code), which makes the score
    independent of the map's scale (cnnlens' maps are normalized to [0, 1]).

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: (B, H, W) maps.
        target: class per image (None: the top class).
        perturbations: $I$ itself, (N, B, C, H, W) (or (N, B, 1, H, W), shared by the
            channels), e.g. Gaussian noise; None: the patches above.
        patch_size: side of the patches (when ``perturbations`` is None).
        rescale: scale each map by $\\beta$ first.
        activation: ``None`` (logits, default, as Quantus), ``"softmax"`` or ``"sigmoid"``.
        batch_size: most images per forward pass.

    Returns:
        float (B,), lower is better.
    """
    x, maps = _prepare(x, maps, activation, batch_size)
    b = x.shape[0]
    phi = maps.unsqueeze(1)  # (B, 1, H, W), shared by the channels
    with frozen_eval(model):
        target, ref = _reference(model, x, target, activation)
        if perturbations is None:
            patch = check_int("patch_size", patch_size)
            steps = _patch_steps(x, patch)
            n = int(steps.max()) + 1
            fill = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
            moved = (phi * (x - fill)).sum(1).flatten(1)  # (B, H*W)
            per_step = torch.zeros(b, n, dtype=torch.float64, device=x.device)
            per_step.index_add_(1, steps.flatten(), moved)
            pred = per_step.cumsum(1)  # (B, N): I^T Phi of each cumulative perturbation
            curve = _cumulative_curve(model, x, target, steps, n, fill, activation, batch_size)
        else:
            pred, curve = _given_perturbations(
                model, x, phi, target, perturbations, activation, batch_size
            )
    delta = ref.unsqueeze(1) - curve.T  # (B, N)
    if rescale:
        beta = (pred * delta).mean(1) / pred.square().mean(1).clamp(min=1e-300)
        pred = pred * beta.unsqueeze(1)
    return (pred - delta).square().mean(1).float()


def _given_perturbations(
    model: nn.Module,
    x: Tensor,
    phi: Tensor,
    target: Tensor,
    perturbations: Tensor,
    activation: Activation,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """$I^\\top\\Phi$ (B, N) and the scores of $x - I$ (N, B) for given perturbations."""
    b, c, h, w = x.shape
    if (
        not isinstance(perturbations, Tensor)
        or perturbations.dim() != 5
        or perturbations.shape[1] != b
        or perturbations.shape[2] not in (1, c)
        or tuple(perturbations.shape[-2:]) != (h, w)
    ):
        shape = tuple(perturbations.shape) if isinstance(perturbations, Tensor) else None
        raise InputError(f"perturbations must have shape (N, {b}, {c} or 1, {h}, {w}), got {shape}")
    pert = perturbations.to(x.device, x.dtype)
    pred = (pert.double() * phi.unsqueeze(0)).flatten(2).sum(2)
    if pert.shape[2] == 1 and c > 1:
        pred = pred * c
    per_call = max(1, batch_size // b)
    fast = fast_forward(model, x)
    curve = [
        _scores(fast, x.unsqueeze(0) - pert[s : s + per_call], target, activation)
        for s in range(0, pert.shape[0], per_call)
    ]
    return pred.T, torch.cat(curve)


def sufficiency(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    threshold: float = 0.6,
    absolute: bool = True,
) -> Tensor:
    """Sufficiency (Dasgupta, Frost & Moshkovitz, "Framework for evaluating faithfulness of
    local explanations", ICML 2022, arXiv:2202.00734).

    An explanation is *sufficient* when the images it applies to get the same prediction.
    Maps apply to each other when their standardized Euclidean distance (each pixel divided
    by its variance over the batch), divided by the batch's largest, is at most
    ``threshold``; the score of image $i$ is the share of those other images $j$ whose
    predicted class $\\hat y_j$ equals its own:

    $$\\mathrm{Suff}_i = \\frac{\\sum_{j \\ne i} [d_{ij} \\le t]\\,[\\hat y_j = \\hat y_i]}
    {\\sum_{j \\ne i} [d_{ij} \\le t]}$$

    (0 when no other map is close). Equal to Quantus 0.6's ``Sufficiency`` (``abs=True``);
    one deliberate difference: a pixel whose map value is the same in every image (a
    constant corner, a clipped zero) has zero variance, and Quantus' ``seuclidean`` then
    divides 0 by 0, so every distance is NaN and every score 0; cnnlens leaves such pixels
    out (they add nothing to any distance).

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W), B >= 2.
        maps: (B, H, W) maps.
        threshold: the largest normalized distance of maps that apply to each other.
        absolute: compare $|\\Phi|$ (Quantus' default).

    Returns:
        float (B,) in [0, 1], higher is better.
    """
    x = check_images(x)
    b = x.shape[0]
    if b < 2:
        raise InputError(f"sufficiency compares the images of a batch; x must hold >= 2, got {b}")
    a = check_maps(maps, b).flatten(1).double()
    a = a.abs() if absolute else a
    check_float("threshold", threshold, minimum=0.0)
    var = a.var(dim=0)
    a = a[:, var > 0] / var[var > 0].sqrt()
    dist = torch.cdist(a, a)
    if bool((dist > 0).any()):
        dist = dist / dist.max()
    close = (dist <= threshold) & ~torch.eye(b, dtype=torch.bool, device=a.device)
    with frozen_eval(model):
        pred = model(x).argmax(1).to(a.device)
    same = close & (pred.view(-1, 1) == pred.view(1, -1))
    n_close = close.sum(1)
    return torch.where(n_close > 0, same.sum(1) / n_close.clamp(min=1), 0.0).float()


def _run(metric: Any, inputs: MetricInputs, options: dict[str, Any], **defaults: Any) -> Any:
    """``metric`` on ``inputs`` with the registry's activation and batch size, then
    ``defaults``, then the user's ``options`` (each overriding the one before)."""
    settings = {
        "activation": inputs.activation,
        "batch_size": inputs.batch_size,
        **defaults,
        **options,
    }
    return metric(inputs.model, inputs.x, inputs.maps, inputs.target, **settings)


@register_metric(
    "irof",
    family="faithfulness",
    higher_is_better=True,
    label="IROF",
    summary="area over the probability as top superpixels go, per superpixel",
    options_of=irof,
)
def _irof(inputs: MetricInputs, **options: Any) -> Tensor:
    # 16 superpixels on a grid (no scikit-image needed), the area per superpixel
    segments = options.pop("segments", "grid")
    seg = segment_images(inputs.x, segments, n_segments=options.pop("n_segments", 16))
    return _run(irof, inputs, options, segments=seg) / (seg.flatten(1).amax(1) + 1).float()


@register_metric(
    "sensitivity_n",
    family="faithfulness",
    higher_is_better=True,
    label="sens-n",
    summary="corr. over n of the top-n map mass with the score drop",
    options_of=sensitivity_n,
)
def _sensitivity_n(inputs: MetricInputs, **options: Any) -> Tensor:
    c, h, w = inputs.x.shape[1:]
    step = c * max(1, (h * w) // 64)  # 64 steps of whole pixels, to 80% of them
    return _run(sensitivity_n, inputs, options, features_in_step=step).per_image


@register_metric(
    "infidelity",
    family="faithfulness",
    higher_is_better=False,
    label="infid.",
    summary="squared error of the rescaled map's predicted score change",
    options_of=infidelity,
)
def _infidelity(inputs: MetricInputs, **options: Any) -> Tensor:
    h, w = inputs.x.shape[-2:]
    patch = max(1, min(h, w) // 8)  # an 8x8 grid of patches
    return _run(infidelity, inputs, options, patch_size=patch, rescale=True)


@register_metric(
    "sufficiency",
    family="faithfulness",
    higher_is_better=True,
    label="suff.",
    summary="share of images with a close map that get the same class",
    options_of=sufficiency,
)
def _sufficiency(inputs: MetricInputs, **options: Any) -> Tensor:
    if inputs.x.shape[0] < 2:
        warnings.warn(
            "sufficiency compares the images of a batch; a batch of one image scores NaN",
            stacklevel=2,
        )
        return torch.full((1,), float("nan"))
    return sufficiency(inputs.model, inputs.x, inputs.maps, **options)
