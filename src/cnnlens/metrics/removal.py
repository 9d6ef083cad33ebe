"""Faithfulness by feature removal: does removing what the map rates high cost score?

* :func:`faithfulness_correlation` (Bhatt et al. 2020): random subsets removed; their map
  mass correlated with the score drop.
* :func:`monotonicity_correlation` (Nguyen & Martínez 2020): groups replaced in map order;
  each group's mass rank-correlated with the variance it causes.
* :func:`pixel_flipping` (Bach et al. 2015), :func:`region_perturbation` (Samek et al.
  2017), :func:`selectivity` (Montavon et al. 2018): values or patches removed
  cumulatively, most relevant first; the class score's curve.

All follow Quantus 0.6 (same features, baselines, orders and correlations), so the numbers
agree on the same random draws (``tests/test_removal.py``), and run batched on the model's
device: the perturbed copies go through the model ``batch_size`` images at a time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.core.checks import check_int
from cnnlens.errors import InputError
from cnnlens.metrics._common import (
    Activation,
    check_activation,
    check_batch_size,
    check_images,
    check_maps,
    fit_maps,
    frozen_eval,
    probabilities,
    resolve_class_targets,
)
from cnnlens.metrics.registry import MetricInputs, register_metric
from cnnlens.metrics.similarity import rank

__all__ = [
    "faithfulness_correlation",
    "monotonicity_correlation",
    "pixel_flipping",
    "random_subsets",
    "region_perturbation",
    "selectivity",
]


def random_subsets(n_runs: int, batch: int, n_features: int, size: int, seed: int = 0) -> Tensor:
    """Indices (n_runs, batch, size) of random subsets of ``n_features`` features, drawn
    without replacement per (run, image) from a CPU generator seeded with ``seed``."""
    if not 1 <= size <= n_features:
        raise InputError(f"subset_size must be in 1..{n_features} (C*H*W), got {size!r}")
    if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 2:
        raise InputError(f"n_runs must be an integer >= 2 (a correlation), got {n_runs!r}")
    g = torch.Generator().manual_seed(int(seed))
    keys = torch.rand(n_runs, batch, n_features, generator=g)
    return keys.topk(size, dim=2).indices


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation along the last axis, float64; NaN where either is constant."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return torch.where(den > 0, (a * b).sum(-1) / den.clamp(min=1e-300), torch.nan)


def faithfulness_correlation(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    n_runs: int = 100,
    subset_size: int = 224,
    subsets: Tensor | None = None,
    seed: int = 0,
    activation: Activation = None,
    batch_size: int = 64,
) -> Tensor:
    """Faithfulness correlation (Bhatt, Weller & Moura, "Evaluating and aggregating
    feature-based model explanations", IJCAI 2020, arXiv:2005.00631).

    For ``n_runs`` random subsets $S$ of $|S|$ input values (over channels and pixels; the
    map is shared by a pixel's channels), each set to the image's minimum value $b$:

    $$\\mu_F = \\operatorname{corr}_S\\Big(\\sum_{i \\in S} \\Phi_i,\\;
    f_c(x) - f_c(x_{[x_S = b]})\\Big)$$

    with $f_c$ the class score (logits by default, as in Quantus).

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: (B, H, W) maps (any sign).
        target: class per image (None: the top class).
        n_runs: number of subsets per image.
        subset_size: $|S|$ (Quantus' default 224).
        subsets: the subsets themselves, long (n_runs, B, subset_size), indices into the
            image flattened as (C, H, W); default :func:`random_subsets` with ``seed``.
        seed: seed of the subsets.
        activation: ``None`` (logits), ``"softmax"`` or ``"sigmoid"``.
        batch_size: most images per forward pass.

    Returns:
        float (B,) in [-1, 1], higher is better; NaN where the map is constant on the
        drawn subsets or the score never moves.

    Example:
        >>> faithfulness_correlation(model, x, exp.maps, n_runs=50)      # doctest: +SKIP
    """
    x = check_images(x)
    b, c, h, w = x.shape
    maps = fit_maps(check_maps(maps, b), (h, w)).double()
    check_batch_size(batch_size)
    check_activation(activation)
    n_features = c * h * w
    if subsets is None:
        subsets = random_subsets(n_runs, b, n_features, subset_size, seed)
    if not isinstance(subsets, Tensor) or subsets.dim() != 3 or subsets.shape[1] != b:
        shape = tuple(subsets.shape) if isinstance(subsets, Tensor) else type(subsets).__name__
        raise InputError(f"subsets must have shape (n_runs, {b}, subset_size), got {shape}")
    subsets = subsets.to(x.device).long()
    runs = subsets.shape[0]
    flat = x.reshape(b, -1)
    fill = flat.min(dim=1, keepdim=True).values
    a = maps.flatten(1).repeat(1, c)  # the map on every channel, (B, C*H*W)
    att = torch.stack([a.gather(1, s) for s in subsets])  # (R, B, |S|)
    with frozen_eval(model):
        out = probabilities(model(x), activation)
        target = resolve_class_targets(target, out)
        ref = out.gather(1, target.view(-1, 1)).squeeze(1).double()
        per_call = max(1, batch_size // b)
        drops = []
        for start in range(0, runs, per_call):
            idx = subsets[start : start + per_call]  # (k, B, |S|)
            xp = flat.unsqueeze(0).repeat(idx.shape[0], 1, 1)
            xp.scatter_(2, idx, fill.unsqueeze(0).expand(idx.shape[0], b, idx.shape[2]))
            probs = probabilities(model(xp.reshape(-1, c, h, w)), activation)
            score = probs.gather(1, target.repeat(idx.shape[0]).view(-1, 1)).double()
            drops.append(ref.unsqueeze(0) - score.view(idx.shape[0], b))
    drop = torch.cat(drops)  # (R, B)
    return _pearson(att.sum(2).T, drop.T).float()


def monotonicity_correlation(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    n_samples: int = 100,
    features_in_step: int = 1,
    fills: Tensor | None = None,
    seed: int = 0,
    absolute: bool = True,
    eps: float = 1e-5,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """Monotonicity correlation (Nguyen & Martínez, "On quantitative aspects of model
    interpretability", 2020, arXiv:2007.07584).

    The input values (channels and pixels; a pixel's channels share its map value) are
    taken in ascending order of $|\\Phi|$, ``features_in_step`` at a time. Each group $G_k$
    alone is replaced ``n_samples`` times by one uniform value $u \\sim U[0, 1)$ per image,
    and the class score's mean squared change, relative to the score, is rank-correlated
    with the group's mass ($f_c$: the softmax probability by default, as in Quantus):

    $$\rho = \\operatorname{Spearman}_k\\Big(\\sum_{i \\in G_k} |\\Phi_i|,\\;
    \frac{\\mathbb E_u\\,(f_c(x_{[x_{G_k} = u]}) - f_c(x))^2}{f_c(x)^2}\\Big)$$

    (Quantus' defaults; $f_c(x)^2$ is replaced by 1 when $|f_c(x)| < \\epsilon$.)

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: (B, H, W) maps.
        target: class per image (None: the top class).
        n_samples: uniform fills per group.
        features_in_step: group size (a multiple of C keeps each pixel's channels together).
        fills: the fill values themselves, (n_groups, n_samples, B); default drawn from a
            CPU generator seeded with ``seed``.
        absolute: rank by $|\\Phi|$ (Quantus' ``abs=True``); False: by $\\Phi$.
        eps: the $\\epsilon$ above.
        activation: ``"softmax"`` (default, as Quantus), ``"sigmoid"`` or ``None``.
        batch_size: most images per forward pass.

    Returns:
        float (B,) in [-1, 1], higher is better.
    """
    x = check_images(x)
    b, c, h, w = x.shape
    maps = fit_maps(check_maps(maps, b), (h, w)).double()
    check_batch_size(batch_size)
    check_activation(activation)
    if isinstance(features_in_step, bool) or not isinstance(features_in_step, int):
        raise InputError(f"features_in_step must be a positive integer, got {features_in_step!r}")
    n_features = c * h * w
    if not 1 <= features_in_step <= n_features:
        raise InputError(f"features_in_step must be in 1..{n_features}, got {features_in_step}")
    steps = -(-n_features // features_in_step)
    if fills is None:
        g = torch.Generator().manual_seed(int(seed))
        fills = torch.rand(steps, n_samples, b, generator=g, dtype=torch.float64)
    if not isinstance(fills, Tensor) or tuple(fills.shape[::2]) != (steps, b):
        shape = tuple(fills.shape) if isinstance(fills, Tensor) else type(fills).__name__
        raise InputError(f"fills must have shape ({steps}, n_samples, {b}), got {shape}")
    fills = fills.to(x.device, x.dtype)
    a = maps.flatten(1).repeat(1, c)
    a = a.abs() if absolute else a
    order = a.argsort(dim=1, stable=True)
    flat = x.reshape(b, -1)
    with frozen_eval(model):
        out = probabilities(model(x), activation)
        target = resolve_class_targets(target, out)
        ref = out.gather(1, target.view(-1, 1)).squeeze(1).double()
        inv = torch.where(ref.abs() >= eps, 1.0 / ref.abs().clamp(min=1e-300), 1.0) ** 2
        group = torch.arange(n_features, device=x.device) // features_in_step  # by rank
        rank_group = torch.empty_like(order)
        rank_group.scatter_(1, order, group.expand(b, -1))  # each value's group
        jobs = [(k, s) for k in range(steps) for s in range(fills.shape[1])]
        per_call = max(1, batch_size // b)
        sq = torch.zeros(steps, b, dtype=torch.float64, device=x.device)
        for start in range(0, len(jobs), per_call):
            chunk = jobs[start : start + per_call]
            ks = torch.tensor([k for k, _ in chunk], device=x.device)
            fill = torch.stack([fills[k, s] for k, s in chunk])  # (n, B)
            hit = rank_group.unsqueeze(0) == ks.view(-1, 1, 1)  # (n, B, F)
            xp = torch.where(hit, fill.unsqueeze(2), flat.unsqueeze(0))
            probs = probabilities(model(xp.reshape(-1, c, h, w)), activation)
            score = probs.gather(1, target.repeat(len(chunk)).view(-1, 1)).double()
            sq.index_add_(0, ks, (score.view(len(chunk), b) - ref) ** 2)
    var = (sq / fills.shape[1]) * inv  # (steps, B)
    mass = torch.zeros(b, steps, dtype=torch.float64, device=x.device)
    mass.scatter_add_(1, rank_group, a)
    rho = _pearson(rank(mass), rank(var.T))
    return rho.float()


def _patch_curve(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object,
    patch_size: int,
    descending: bool,
    regions: int | None,
    activation: Activation,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """The class score on the image (B,) and after removing 1, 2, ... patches (K, B), the
    patches ranked by map mass, each set to the image's minimum (Quantus' "black")."""
    check_int("patch_size", patch_size)
    b, c, h, w = x.shape
    ph, pw = -(-h // patch_size), -(-w // patch_size)
    n = ph * pw if regions is None else min(ph * pw, regions)
    patch = (torch.arange(h, device=x.device) // patch_size).view(-1, 1) * pw + (
        torch.arange(w, device=x.device) // patch_size
    ).view(1, -1)  # patch index of each pixel, row-major
    mass = torch.zeros(b, ph * pw, dtype=torch.float64, device=x.device)
    mass.index_add_(1, patch.flatten(), maps.flatten(1) * c)  # a pixel counts once per channel
    order = mass.argsort(dim=1, descending=descending, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(ph * pw, device=x.device).expand(b, -1))
    pixel_rank = rank.gather(1, patch.flatten().expand(b, -1)).view(b, 1, h, w)
    fill = x.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    per_call = max(1, batch_size // b)
    curve = []
    with frozen_eval(model):
        probs = probabilities(model(x), activation)
        target = resolve_class_targets(target, probs)
        ref = probs.gather(1, target.view(-1, 1)).squeeze(1).double()
        for start in range(0, n, per_call):
            ks = torch.arange(start, min(n, start + per_call), device=x.device)
            gone = pixel_rank.unsqueeze(0) <= ks.view(-1, 1, 1, 1, 1)  # (k, B, 1, H, W)
            xp = torch.where(gone, fill.unsqueeze(0), x.unsqueeze(0)).reshape(-1, c, h, w)
            probs = probabilities(model(xp), activation)
            score = probs.gather(1, target.repeat(len(ks)).view(-1, 1)).double()
            curve.append(score.view(len(ks), b))
    return ref, torch.cat(curve)


def pixel_flipping(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    features_in_step: int = 1,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """Pixel flipping (Bach et al., "On pixel-wise explanations for non-linear classifier
    decisions by layer-wise relevance propagation", PLoS ONE 2015): the class score as the
    input values are set to the image's minimum, cumulatively, ``features_in_step`` at a
    time, in descending order of the map (a pixel's channels share its value):

    $$p_k = f_c(x^{(k)}), \\qquad k = 1..\\lceil CHW / s \\rceil$$

    A fast fall means the map put the decisive values first. Equal to Quantus 0.6's
    ``PixelFlipping`` (ties in the map are taken in (channel, row, column) order).

    Returns:
        float (B, K): the curve per image.
    """
    x = check_images(x)
    b, c, h, w = x.shape
    maps = fit_maps(check_maps(maps, b), (h, w)).double()
    check_batch_size(batch_size)
    check_activation(activation)
    n_features = c * h * w
    if isinstance(features_in_step, bool) or not isinstance(features_in_step, int):
        raise InputError(f"features_in_step must be a positive integer, got {features_in_step!r}")
    if not 1 <= features_in_step <= n_features:
        raise InputError(f"features_in_step must be in 1..{n_features}, got {features_in_step}")
    steps = -(-n_features // features_in_step)
    order = maps.flatten(1).repeat(1, c).argsort(dim=1, descending=True, stable=True)
    step_of = torch.empty_like(order)  # the step at which each value is flipped
    step_of.scatter_(
        1, order, (torch.arange(n_features, device=x.device) // features_in_step).expand(b, -1)
    )
    flat = x.reshape(b, -1)
    fill = flat.min(dim=1, keepdim=True).values
    per_call = max(1, batch_size // b)
    curve = []
    with frozen_eval(model):
        target = resolve_class_targets(target, model(x))
        for start in range(0, steps, per_call):
            ks = torch.arange(start, min(steps, start + per_call), device=x.device)
            gone = step_of.unsqueeze(0) <= ks.view(-1, 1, 1)  # (k, B, F)
            xp = torch.where(gone, fill.unsqueeze(0), flat.unsqueeze(0)).reshape(-1, c, h, w)
            probs = probabilities(model(xp), activation)
            score = probs.gather(1, target.repeat(len(ks)).view(-1, 1)).double()
            curve.append(score.view(len(ks), b))
    return torch.cat(curve).T.float()


def region_perturbation(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    patch_size: int = 8,
    order: str = "morf",
    regions: int = 100,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """Region perturbation (Samek et al., "Evaluating the visualization of what a deep
    neural network has learned", IEEE TNNLS 2017, arXiv:1509.06321): the drop of the class
    score as the ``regions`` first patches are removed cumulatively, most relevant first
    (``"morf"``) or least relevant first (``"lerf"``),

    $$d_k = f_c(x) - f_c(x^{(k)}), \\qquad k = 1..K$$

    The paper's AOPC is the mean of the curve (higher is better for MoRF). Patches and
    removal as in :func:`selectivity`; the numbers equal Quantus' ``RegionPerturbation``.

    Returns:
        float (B, K): the curve per image, K = min(regions, number of patches).
    """
    x = check_images(x)
    maps = fit_maps(check_maps(maps, x.shape[0]), tuple(x.shape[-2:])).double()
    check_batch_size(batch_size)
    check_activation(activation)
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', got {order!r}")
    check_int("regions", regions)
    ref, y = _patch_curve(
        model, x, maps, target, patch_size, order == "morf", regions, activation, batch_size
    )
    return (ref.unsqueeze(0) - y).T.float()


def selectivity(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    patch_size: int = 8,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """Selectivity (Montavon, Samek & Müller, "Methods for interpreting and understanding
    deep neural networks", DSP 2018, arXiv:1706.07979).

    The image is split into ``patch_size`` squares, ranked by their map mass (highest
    first); patches are set, cumulatively, to the image's minimum value, and the class
    score $f_c$ after each removal forms a curve whose area (trapezoid rule, unit steps,
    as Quantus' ``get_auc_score``) is the score:

    $$\\mathrm{Sel} = \\sum_{k=1}^{K-1} \\frac{f_c(x^{(k)}) + f_c(x^{(k+1)})}{2}$$

    with $x^{(k)}$ the image with its $k$ first patches removed. A fast drop (small area)
    means the map ranked the decisive regions first. When the size is not a multiple of
    ``patch_size`` the last patches (right, bottom) are smaller; Quantus pads the image
    instead, which can shift its grid, so the two agree when the size is a multiple.

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: (B, H, W) maps.
        target: class per image (None: the top class).
        patch_size: side of the square patches.
        activation: ``"softmax"`` (default, as Quantus), ``"sigmoid"`` or ``None``.
        batch_size: most images per forward pass.

    Returns:
        float (B,), lower is better.
    """
    x = check_images(x)
    b, _, h, w = x.shape
    maps = fit_maps(check_maps(maps, b), (h, w)).double()
    check_batch_size(batch_size)
    check_activation(activation)
    _, y = _patch_curve(model, x, maps, target, patch_size, True, None, activation, batch_size)
    return ((y[1:] + y[:-1]) / 2).sum(dim=0).float()


def _run(metric: Any, inputs: MetricInputs, options: dict[str, Any], **defaults: Any) -> Tensor:
    """``metric`` on ``inputs`` with the registry's activation and batch size, then
    ``defaults``, then the user's ``options`` (each overriding the one before)."""
    settings = {
        "activation": inputs.activation,
        "batch_size": inputs.batch_size,
        **defaults,
        **options,
    }
    return metric(inputs.model, inputs.x, inputs.maps, inputs.target, **settings)


def _patch_side(inputs: MetricInputs) -> int:
    """Side of the patches of an 8x8 grid on the images."""
    h, w = inputs.x.shape[-2:]
    return max(1, min(h, w) // 8)


def _pixel_step(inputs: MetricInputs) -> int:
    """Values in 1/64 of the image's whole pixels (all channels of a pixel together)."""
    c, h, w = inputs.x.shape[1:]
    return c * max(1, (h * w) // 64)


@register_metric(
    "selectivity",
    family="faithfulness",
    higher_is_better=False,
    label="selectivity",
    summary="area under the score as top patches are removed",
)
def _selectivity(inputs: MetricInputs, **options: Any) -> Tensor:
    return _run(selectivity, inputs, options, patch_size=_patch_side(inputs))


@register_metric(
    "pixel_flipping",
    family="faithfulness",
    higher_is_better=False,
    label="pix-flip",
    summary="mean class probability as the top pixels are flipped",
)
def _pixel_flipping(inputs: MetricInputs, **options: Any) -> Tensor:
    # 64 steps of whole pixels
    return _run(pixel_flipping, inputs, options, features_in_step=_pixel_step(inputs)).mean(1)


@register_metric(
    "region_perturbation",
    family="faithfulness",
    higher_is_better=True,
    label="AOPC",
    summary="mean score drop as the top patches are removed (MoRF)",
)
def _region_perturbation(inputs: MetricInputs, **options: Any) -> Tensor:
    return _run(region_perturbation, inputs, options, patch_size=_patch_side(inputs)).mean(1)


@register_metric(
    "faithfulness_correlation",
    family="faithfulness",
    higher_is_better=True,
    label="faith-corr",
    summary="corr. of map mass on random subsets with the score drop",
)
def _faithfulness_correlation(inputs: MetricInputs, **options: Any) -> Tensor:
    h, w = inputs.x.shape[-2:]
    return _run(
        faithfulness_correlation,
        inputs,
        options,
        n_runs=50,
        subset_size=max(1, (h * w) // 20),  # 5% of the pixels
        seed=inputs.seed,
    )


@register_metric(
    "monotonicity_correlation",
    family="faithfulness",
    higher_is_better=True,
    label="mono-corr",
    summary="rank corr. of group mass with the score variance it causes",
)
def _monotonicity_correlation(inputs: MetricInputs, **options: Any) -> Tensor:
    return _run(
        monotonicity_correlation,
        inputs,
        options,
        n_samples=5,
        features_in_step=_pixel_step(inputs),  # 64 groups of whole pixels
        seed=inputs.seed,
    )
