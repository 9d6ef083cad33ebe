"""Faithfulness: does the model's confidence follow the pixels a map calls important?

* :func:`deletion` / :func:`insertion`: probability curves while pixels are removed from the
  image (or added to a substrate) in the map's order, and their area (Petsiuk et al. 2018).
* :func:`average_drop` / :func:`increase_in_confidence`: the model's confidence on the image
  masked by its own map (Chattopadhyay et al. 2018; Wang et al. 2020).
* ROAD (remove and debias, Rong et al. 2022) is in :mod:`cnnlens.metrics.road`; it shares
  the batched perturbation loop of this module.

Every function is batched over images and over perturbation steps (the perturbed copies of
several steps go through the model together, at most ``batch_size`` at a time), runs on the
model's device under :func:`cnnlens.core.capture.frozen` and ``torch.no_grad``, and scores the
target's probability: softmax for single-label models, sigmoid for multi-label ones
(``activation="sigmoid"``), or the raw score (``activation=None``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.checks import check_int
from cnnlens.core.progress import progress_bar
from cnnlens.errors import InputError
from cnnlens.metrics._common import (
    Activation,
    batched_target_probs,
    check_activation,
    check_batch_size,
    check_images,
    check_maps,
    fit_maps,
    frozen_eval,
    model_device,
    order_ranks,
    probabilities,
    resolve_class_targets,
)
from cnnlens.metrics.registry import MetricInputs, register_metric

__all__ = [
    "ConfidenceResult",
    "CurveResult",
    "average_drop",
    "confidence_change",
    "deletion",
    "increase_in_confidence",
    "insertion",
]

SubstrateLike = str | float | Tensor


def _on(inputs: MetricInputs) -> dict[str, object]:
    """The arguments every faithfulness metric takes from the batch's inputs."""
    return {
        "target": inputs.target,
        "activation": inputs.activation,
        "batch_size": inputs.batch_size,
    }


@dataclass
class CurveResult:
    """Scores of perturbed images along a curve.

    Attributes:
        name: ``"deletion"``, ``"insertion"``, ``"road-morf"`` or ``"road-lerf"``.
        fractions: float (S,), the fraction of pixels perturbed at each point.
        scores: float (B, S), the target's probability at each point.
        original: float (B,), the target's probability on the unperturbed image.
        targets: long (B,), the class scored for each image.
    """

    name: str
    fractions: Tensor
    scores: Tensor
    original: Tensor
    targets: Tensor

    @property
    def auc(self) -> Tensor:
        """Area under each curve by the trapezoid rule over ``fractions``, divided by the
        span of ``fractions`` (the span is 1 for deletion and insertion), (B,)."""
        f = self.fractions.to(self.scores.device, self.scores.dtype)
        if f.numel() < 2:
            return self.scores[:, 0].clone()
        return torch.trapezoid(self.scores, f, dim=1) / (f[-1] - f[0])

    @property
    def mean(self) -> Tensor:
        """Mean score over the curve's points, (B,) (ROAD's summary)."""
        return self.scores.mean(dim=1)

    def to_dict(self) -> dict[str, object]:
        """Plain Python lists, for JSON and reports."""
        return {
            "name": self.name,
            "fractions": self.fractions.tolist(),
            "scores": self.scores.tolist(),
            "original": self.original.tolist(),
            "targets": self.targets.tolist(),
            "auc": self.auc.tolist(),
        }


@dataclass
class ConfidenceResult:
    """The target's probability on the image and on the image masked by its map.

    Attributes:
        original: float (B,), $Y_i^c$, on the image.
        masked: float (B,), $O_i^c$, on the explanation map $E = b + M \\odot (x - b)$.
        targets: long (B,).
    """

    original: Tensor
    masked: Tensor
    targets: Tensor

    @property
    def drop(self) -> Tensor:
        """$\\max(0, Y - O) / Y$ per image, (B,) (NaN where $Y \\le 0$)."""
        y, o = self.original, self.masked
        nan = torch.full_like(y, float("nan"))
        return torch.where(y > 0, (y - o).clamp(min=0) / y.clamp(min=1e-30), nan)

    @property
    def increase(self) -> Tensor:
        """1.0 where the masked image's probability exceeds the original's, else 0.0, (B,)."""
        return (self.masked > self.original).float()


def _prepare(
    model: nn.Module, x: Tensor, maps: Tensor, activation: Activation, batch_size: int
) -> tuple[Tensor, Tensor, torch.device]:
    check_activation(activation)
    check_batch_size(batch_size)
    x = check_images(x)
    maps = check_maps(maps, batch=x.shape[0])
    device = model_device(model, x.device)
    x = x.to(device)
    maps = fit_maps(maps.to(device), tuple(x.shape[-2:]))
    return x, maps, device


def _original(
    model: nn.Module, x: Tensor, target: object, activation: Activation, batch_size: int
) -> tuple[Tensor, Tensor]:
    """The target classes (B,) and their probabilities (B,) on the unperturbed images."""
    outs = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    for o in outs:
        probabilities(o, activation)  # raises a clear error for a non-classifier output
    logits = torch.cat(outs)
    probs = probabilities(logits, activation)
    targets = resolve_class_targets(target, logits)
    return targets, probs.gather(1, targets.view(-1, 1)).squeeze(1)


def _gaussian_kernel(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    r = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(r**2) / (2 * sigma**2))
    return (k / k.sum()).to(dtype)


def blur(x: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Gaussian blur of (B, C, H, W) images, separable, replicate padding at the borders.

    Petsiuk et al. (2018) blur with an 11-pixel kernel and $\\sigma = 5$ for insertion.
    """
    if kernel_size < 1 or kernel_size % 2 == 0 or sigma <= 0:
        raise InputError(
            f"blur needs an odd kernel_size >= 1 and sigma > 0, got {kernel_size}, {sigma}"
        )
    c = x.shape[1]
    k = _gaussian_kernel(kernel_size, sigma, x.device, x.dtype)
    pad = kernel_size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_substrate(
    x: Tensor, substrate: SubstrateLike, *, blur_kernel: int = 11, blur_sigma: float = 5.0
) -> Tensor:
    """What removed pixels are replaced with, (B, C, H, W), in the model's input space.

    Args:
        x: images (B, C, H, W), preprocessed as the model expects.
        substrate: ``"zero"`` (zeros of the input space: the normalization's mean colour for
            normalized inputs), ``"blur"`` (a Gaussian blur of the image), ``"mean"`` (each
            image's per-channel mean), a number, or a tensor broadcastable to ``x``.
        blur_kernel: kernel size of ``"blur"``.
        blur_sigma: standard deviation of ``"blur"``.
    """
    if isinstance(substrate, Tensor):
        try:
            return substrate.to(x.device, x.dtype).expand_as(x)
        except RuntimeError as err:
            raise InputError(
                f"substrate tensor of shape {tuple(substrate.shape)} does not broadcast to the "
                f"images {tuple(x.shape)}"
            ) from err
    if isinstance(substrate, bool):
        raise InputError(
            f"substrate must be 'zero', 'blur', 'mean', a number or a tensor, got {substrate!r}"
        )
    if isinstance(substrate, (int, float)):
        return torch.full_like(x, float(substrate))
    if substrate == "zero":
        return torch.zeros_like(x)
    if substrate == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if substrate == "blur":
        return blur(x, blur_kernel, blur_sigma)
    raise InputError(
        f"substrate must be 'zero', 'blur', 'mean', a number or a tensor, got {substrate!r}"
    )


def _pairs(batch: int, steps: int, chunk: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(image index, step index) for every pair, ``chunk`` pairs at a time (CPU tensors)."""
    total = batch * steps
    for start in range(0, total, chunk):
        t = torch.arange(start, min(start + chunk, total))
        yield t // steps, t % steps


def _curve(
    name: str,
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    target: object,
    substrate: SubstrateLike,
    step: int | None,
    activation: Activation,
    batch_size: int,
    blur_kernel: int,
    blur_sigma: float,
    progress: bool | None,
) -> CurveResult:
    x, maps, device = _prepare(model, x, maps, activation, batch_size)
    b, _, h, w = x.shape
    n = h * w
    if step is None:
        step = max(1, math.ceil(n / 100))
    check_int("step", step)
    sub = make_substrate(x, substrate, blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    n_steps = math.ceil(n / step)
    counts = torch.clamp(torch.arange(n_steps + 1, device=device) * step, max=n)
    ranks = order_ranks(maps, descending=True)
    deleting = name == "deletion"

    with frozen_eval(model), progress_bar(progress, b * (n_steps + 1), name) as bar:
        targets, original = _original(model, x, target, activation, batch_size)

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            for bi, si in _pairs(b, n_steps + 1, batch_size):
                bi, si = bi.to(device), si.to(device)
                perturbed = (ranks[bi] < counts[si].unsqueeze(1)).view(-1, 1, h, w)
                if deleting:
                    inputs = torch.where(perturbed, sub[bi], x[bi])
                else:
                    inputs = torch.where(perturbed, x[bi], sub[bi])
                yield inputs, targets[bi]
                bar.advance(len(bi))

        scores = batched_target_probs(model, batches(), activation).view(b, n_steps + 1)
    return CurveResult(name, counts.double().cpu() / n, scores, original, targets)


def deletion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    target: object = None,
    substrate: SubstrateLike = "zero",
    step: int | None = None,
    activation: Activation = "softmax",
    batch_size: int = 64,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    progress: bool | None = None,
) -> CurveResult:
    """Deletion curve and its area (Petsiuk et al., RISE, BMVC 2018, arXiv:1806.07421).

    Pixels are replaced by the substrate ``step`` at a time, most important first (ties in
    raster order); the curve is the target's probability after each step, from the intact
    image (fraction 0) to the full substrate (fraction 1). A faithful map makes it fall
    fast: lower area is better. With $f_k$ the fraction of pixels removed after step $k$
    and $p_k$ the probability,

    $$\\mathrm{AUC} = \\sum_{k=1}^{K} (f_k - f_{k-1}) \\frac{p_{k-1} + p_k}{2}$$

    (the trapezoid rule; with equal steps it is RISE's ``(sum - (p_0 + p_K)/2) / K``).

    Args:
        model: the classifier; used frozen, in eval mode, and left unchanged.
        x: images (B, C, H, W) or (C, H, W), as the model expects them.
        maps: (B, H, W) saliency maps (resized bilinearly to the images if needed).
        target: None (each image's top class), an int, or one class per image.
        substrate: ``"zero"`` (RISE's deletion), ``"blur"``, ``"mean"``, a number or a tensor;
            see :func:`make_substrate`.
        step: pixels per step; default ``ceil(H*W / 100)`` (about 100 steps).
        activation: ``"softmax"`` (single-label), ``"sigmoid"`` (multi-label) or None.
        batch_size: most perturbed images per forward pass.
        blur_kernel: kernel size of the ``"blur"`` substrate.
        blur_sigma: sigma of the ``"blur"`` substrate.
        progress: a progress bar on stderr: None (default) shows one on a terminal once the
            curve has run a few seconds (a large model's curve takes a minute), True at once,
            False never (see :func:`cnnlens.core.progress.progress_bar`).

    Returns:
        The :class:`CurveResult`; ``.auc`` is the score (lower is better).

    Example:
        >>> res = deletion(model, x, exp.maps, target=exp.targets)   # doctest: +SKIP
        >>> res.auc.mean()
    """
    return _curve(
        "deletion",
        model,
        x,
        maps,
        target=target,
        substrate=substrate,
        step=step,
        activation=activation,
        batch_size=batch_size,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        progress=progress,
    )


@register_metric(
    "deletion",
    family="faithfulness",
    higher_is_better=False,
    label="del",
    summary="area under the deletion curve",
    options_of=deletion,
)
def _deletion(inputs: MetricInputs, **options: object) -> Tensor:
    return _curve_auc("deletion", deletion, inputs, options)


def _curve_auc(
    name: str, curve: Callable[..., CurveResult], inputs: MetricInputs, options: dict
) -> Tensor:
    """The area of ``curve`` on ``inputs``; the curve is kept in ``inputs.cache[name]``
    for figures."""
    res = curve(inputs.model, inputs.x, inputs.maps, **_on(inputs), **options)
    inputs.cache[name] = res
    return res.auc


def insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    target: object = None,
    substrate: SubstrateLike = "blur",
    step: int | None = None,
    activation: Activation = "softmax",
    batch_size: int = 64,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    progress: bool | None = None,
) -> CurveResult:
    """Insertion curve and its area (Petsiuk et al., RISE, BMVC 2018, arXiv:1806.07421).

    Starting from the substrate (a blurred copy of the image, as in RISE), the image's own
    pixels are put back ``step`` at a time, most important first; the curve is the target's
    probability after each step. A faithful map makes it rise fast: higher area is better.

    $$\\mathrm{AUC} = \\sum_{k=1}^{K} (f_k - f_{k-1}) \\frac{p_{k-1} + p_k}{2}$$

    Args and returns are those of :func:`deletion` (``fractions`` is the fraction of pixels
    inserted); ``.auc`` is the score (higher is better).
    """
    return _curve(
        "insertion",
        model,
        x,
        maps,
        target=target,
        substrate=substrate,
        step=step,
        activation=activation,
        batch_size=batch_size,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        progress=progress,
    )


@register_metric(
    "insertion",
    family="faithfulness",
    higher_is_better=True,
    label="ins",
    summary="area under the insertion curve",
    options_of=insertion,
)
def _insertion(inputs: MetricInputs, **options: object) -> Tensor:
    return _curve_auc("insertion", insertion, inputs, options)


def confidence_change(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    target: object = None,
    baseline: float | Tensor = 0.0,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> ConfidenceResult:
    """The target's probability on each image and on its explanation map.

    The explanation map keeps each pixel in proportion to the saliency map $M \\in [0, 1]$:

    $$E = b + M \\odot (x - b)$$

    with $b$ the ``baseline`` (0 in the input space, as Chattopadhyay et al. 2018 and Wang
    et al. 2020 multiply the image by the map). :func:`average_drop` and
    :func:`increase_in_confidence` are read from the result.

    Raises:
        InputError: for maps outside [0, 1].
    """
    x, maps, _ = _prepare(model, x, maps, activation, batch_size)
    lo, hi = float(maps.min()), float(maps.max())
    if lo < 0 or hi > 1:
        raise InputError(
            f"maps must lie in [0, 1] to mask the image (as cnnlens.explain's maps do); "
            f"got values in [{lo:.3g}, {hi:.3g}]"
        )
    base = baseline.to(x.device, x.dtype) if isinstance(baseline, Tensor) else float(baseline)
    with frozen_eval(model):
        targets, original = _original(model, x, target, activation, batch_size)

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            for i in range(0, x.shape[0], batch_size):
                xb, mb = x[i : i + batch_size], maps[i : i + batch_size].unsqueeze(1)
                yield base + mb.to(x.dtype) * (xb - base), targets[i : i + batch_size]

        masked = batched_target_probs(model, batches(), activation)
    return ConfidenceResult(original, masked, targets)


def average_drop(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    target: object = None,
    baseline: float | Tensor = 0.0,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """Drop in confidence on the explanation map, per image (Chattopadhyay et al.,
    Grad-CAM++, WACV 2018, arXiv:1710.11063; Wang et al., Score-CAM, CVPRW 2020).

    $$\\mathrm{Drop}_i = \\frac{\\max(0, Y_i^c - O_i^c)}{Y_i^c}, \\qquad
    \\text{Average Drop} = \\frac{100}{N} \\sum_i \\mathrm{Drop}_i$$

    with $Y_i^c$ the probability of class $c$ on image $i$ and $O_i^c$ on its explanation
    map (see :func:`confidence_change`). Lower is better. Returns the per-image fraction
    (B,); the papers report the mean times 100.
    """
    return confidence_change(
        model,
        x,
        maps,
        target=target,
        baseline=baseline,
        activation=activation,
        batch_size=batch_size,
    ).drop


@register_metric(
    "average_drop",
    family="faithfulness",
    higher_is_better=False,
    label="drop",
    summary="relative confidence drop",
    options_of=average_drop,
)
def _average_drop(inputs: MetricInputs, **options: object) -> Tensor:
    return average_drop(inputs.model, inputs.x, inputs.maps, **_on(inputs), **options)  # type: ignore[arg-type]


def increase_in_confidence(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    target: object = None,
    baseline: float | Tensor = 0.0,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """Whether confidence rises on the explanation map, per image (Chattopadhyay et al.
    2018; Wang et al. 2020).

    $$\\text{Increase} = \\frac{100}{N} \\sum_i \\mathbb{1}\\left[Y_i^c < O_i^c\\right]$$

    Higher is better. Returns 1.0 or 0.0 per image (B,); the papers report the mean times 100.
    """
    return confidence_change(
        model,
        x,
        maps,
        target=target,
        baseline=baseline,
        activation=activation,
        batch_size=batch_size,
    ).increase


@register_metric(
    "increase_in_confidence",
    family="faithfulness",
    higher_is_better=True,
    label="incr",
    summary="confidence rises (0/1)",
    binary=True,
    options_of=increase_in_confidence,
)
def _increase_in_confidence(inputs: MetricInputs, **options: object) -> Tensor:
    return increase_in_confidence(
        inputs.model,
        inputs.x,
        inputs.maps,
        **_on(inputs),
        **options,  # type: ignore[arg-type]
    )
