"""Faithfulness: does the model's confidence follow the pixels a map calls important?

* :func:`deletion` / :func:`insertion`: probability curves while pixels are removed from the
  image (or added to a substrate) in the map's order, and their area (Petsiuk et al. 2018).
* :func:`average_drop` / :func:`increase_in_confidence`: the model's confidence on the image
  masked by its own map (Chattopadhyay et al. 2018; Wang et al. 2020).
* :func:`road`: remove-and-debias with noisy linear imputation, most- or least-relevant first
  (Rong et al. 2022), with :func:`noisy_linear_impute` as its imputer.

Every function is batched over images and over perturbation steps (the perturbed copies of
several steps go through the model together, at most ``batch_size`` at a time), runs on the
model's device under :func:`cnnlens.core.capture.frozen` and ``torch.no_grad``, and scores the
target's probability: softmax for single-label models, sigmoid for multi-label ones
(``activation="sigmoid"``), or the raw score (``activation=None``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.errors import InputError
from cnnlens.metrics._common import (
    Activation,
    batched_target_probs,
    check_activation,
    check_batch_size,
    check_fractions,
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
    "noisy_linear_impute",
    "road",
    "road_combined",
]

SubstrateLike = str | float | Tensor


def _on(inputs: MetricInputs) -> dict[str, object]:
    """The arguments every faithfulness metric takes from the batch's inputs."""
    return {
        "target": inputs.target,
        "activation": inputs.activation,
        "batch_size": inputs.batch_size,
    }


ROAD_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


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
) -> CurveResult:
    x, maps, device = _prepare(model, x, maps, activation, batch_size)
    b, _, h, w = x.shape
    n = h * w
    if step is None:
        step = max(1, math.ceil(n / 100))
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise InputError(f"step must be a positive number of pixels, got {step!r}")
    sub = make_substrate(x, substrate, blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    n_steps = math.ceil(n / step)
    counts = torch.clamp(torch.arange(n_steps + 1, device=device) * step, max=n)
    ranks = order_ranks(maps, descending=True)
    deleting = name == "deletion"

    with frozen_eval(model):
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
    res = deletion(inputs.model, inputs.x, inputs.maps, **_on(inputs), **options)  # type: ignore[arg-type]
    inputs.cache["deletion"] = res  # the curve, for figures
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
    res = insertion(inputs.model, inputs.x, inputs.maps, **_on(inputs), **options)  # type: ignore[arg-type]
    inputs.cache["insertion"] = res  # the curve, for figures
    return res.auc


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


# ROAD's noisy linear imputation (Rong et al. 2022) weighs the four direct neighbours by
# 1/6 and the four diagonal ones by 1/12.


def _stencil(v: Tensor) -> Tensor:
    """$W * v$: the 8-neighbour weights (1/6 direct, 1/12 diagonal), zeros outside."""
    p = F.pad(v, (1, 1, 1, 1))
    direct = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    diagonal = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return direct / 6 + diagonal / 12


def _prolong_axis(c: Tensor, dim: int) -> Tensor:
    """Cell-centred linear interpolation doubling axis ``dim`` (weights 3/4 and 1/4)."""
    n = c.shape[dim]
    zero = torch.zeros_like(c.narrow(dim, 0, 1))
    prev = torch.cat([zero, c.narrow(dim, 0, n - 1)], dim=dim)
    nxt = torch.cat([c.narrow(dim, 1, n - 1), zero], dim=dim)
    even, odd = 0.75 * c + 0.25 * prev, 0.75 * c + 0.25 * nxt
    shape = list(c.shape)
    shape[dim] = 2 * n
    return torch.stack([even, odd], dim=dim + 1).reshape(shape)


def _restrict_axis(f: Tensor, dim: int) -> Tensor:
    """The adjoint of :func:`_prolong_axis` (axis ``dim`` of even length halves)."""
    even = f.narrow(dim, 0, f.shape[dim] // 2 * 2)
    n = even.shape[dim] // 2
    pairs = even.unflatten(dim, (n, 2))
    e, o = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    zero = torch.zeros_like(e.narrow(dim, 0, 1))
    o_prev = torch.cat([zero, o.narrow(dim, 0, n - 1)], dim=dim)
    e_next = torch.cat([e.narrow(dim, 1, n - 1), zero], dim=dim)
    return 0.75 * (e + o) + 0.25 * (o_prev + e_next)


class _Laplacian:
    """The masked imputation operator at one grid level, for N systems (N, 1, H, W).

    ``apply(v) = m * (d * v - W * (m * v))``: $m$ marks the unknown (removed) pixels, $W$ is
    the 8-neighbour stencil with zeros outside the image, $d = W * 1$ the in-image weight
    sum. Symmetric positive definite on the unknown pixels when every hole touches a known
    pixel.
    """

    def __init__(self, mask: Tensor):
        self.m = mask
        h, w = mask.shape[-2:]
        self.diag = _stencil(torch.ones(1, 1, h, w, device=mask.device, dtype=mask.dtype))
        self.inv_diag = 1 / self.diag

    def apply(self, v: Tensor) -> Tensor:
        return self.m * (self.diag * v - _stencil(self.m * v))

    def coarser(self) -> _Laplacian:
        """The next level: a coarse pixel is unknown when its 2 x 2 fine pixels all are."""
        h, w = self.m.shape[-2:]
        m = F.pad(self.m, (0, w % 2, 0, h % 2))  # the padding counts as known
        return _Laplacian(
            m[..., 0::2, 0::2] * m[..., 1::2, 0::2] * m[..., 0::2, 1::2] * m[..., 1::2, 1::2]
        )


class _Multigrid:
    """A symmetric V-cycle (Jacobi smoothing, bilinear transfer, rediscretized coarse
    operators): a symmetric positive definite preconditioner for conjugate gradients."""

    def __init__(self, mask: Tensor, smooth: int = 2, coarse_sweeps: int = 10):
        self.levels = [_Laplacian(mask)]
        while min(self.levels[-1].m.shape[-2:]) >= 6 and len(self.levels) < 12:
            self.levels.append(self.levels[-1].coarser())
        self.smooth = smooth
        self.coarse_sweeps = coarse_sweeps

    @staticmethod
    def _jacobi(op: _Laplacian, r: Tensor, x: Tensor | None, sweeps: int) -> Tensor:
        if x is None:  # the first sweep from zero
            x, sweeps = op.inv_diag * r, sweeps - 1
        for _ in range(sweeps):
            x = x + op.inv_diag * (r - op.apply(x))
        return x

    def __call__(self, r: Tensor, level: int = 0) -> Tensor:
        op = self.levels[level]
        if level == len(self.levels) - 1:
            return self._jacobi(op, r, None, self.coarse_sweeps)
        x = self._jacobi(op, r, None, self.smooth)
        coarse = self.levels[level + 1]
        h, w = r.shape[-2:]
        res = F.pad(r - op.apply(x), (0, w % 2, 0, h % 2))
        rc = coarse.m * _restrict_axis(_restrict_axis(res, 2), 3)
        ec = self(rc, level + 1)
        up = _prolong_axis(_prolong_axis(ec, 2), 3)[..., :h, :w]
        return self._jacobi(op, r, x + op.m * up, self.smooth)


def _harmonic_fill(
    x: Tensor, missing: Tensor, tol: float, max_iter: int | None
) -> tuple[Tensor, bool]:
    """Solve the linear-imputation system for the missing pixels.

    Every missing pixel equals the weighted mean of its in-image neighbours, known or missing:
    a symmetric positive definite system (a weighted graph Laplacian with the known pixels as
    boundary), solved for all images and channels at once by conjugate gradients
    preconditioned with a geometric multigrid V-cycle (about ten iterations whatever the
    image size), in float64 on the CPU and float32 on accelerators.
    """
    b_, c, h, w = x.shape
    dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    m = missing.to(dtype).unsqueeze(1).repeat_interleave(c, dim=0)  # (B*C, 1, H, W)
    xs = x.to(dtype).reshape(b_ * c, 1, h, w)
    precond = _Multigrid(m)
    op = precond.levels[0]
    rhs = m * _stencil((1 - m) * xs)
    tiny = torch.finfo(dtype).tiny
    sol = torch.zeros_like(xs)
    r = rhs.clone()
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
    limit = (tol * rhs.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    converged = False
    for _ in range(max_iter if max_iter is not None else 200):
        ap = op.apply(p)
        pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=tiny), 0.0)
        sol = sol + alpha * p
        r = r - alpha * ap
        if bool((r.flatten(1).norm(dim=1).view(-1, 1, 1, 1) <= limit).all()):
            converged = True
            break
        z = precond(r)
        rz_new = (r * z).sum(dim=(1, 2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=tiny), 0.0)
        p = z + beta * p
        rz = rz_new
    filled = torch.where(m > 0, sol, xs).reshape(b_, c, h, w)
    return filled, converged


def noisy_linear_impute(
    x: Tensor,
    missing: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> Tensor:
    """Noisy linear imputation of ROAD (Rong et al., ICML 2022, arXiv:2202.00449).

    Each missing pixel $i$ becomes the weighted mean of its in-image neighbours $N(i)$
    (weight $1/6$ for the direct and $1/12$ for the diagonal ones), whether those are known
    or imputed themselves, plus Gaussian noise:

    $$\\Big(\\sum_{j \\in N(i)} w_{ij}\\Big) x_i - \\sum_{j \\in N(i)} w_{ij} x_j = 0
    \\quad \\forall i \\text{ missing}, \\qquad \\tilde x_i = x_i + \\sigma \\varepsilon_i,
    \\; \\varepsilon_i \\sim \\mathcal N(0, 1)$$

    solved per channel (see :func:`_harmonic_fill`). Known pixels are returned unchanged.

    Args:
        x: images (B, C, H, W) or (C, H, W).
        missing: bool (B, H, W) or (H, W): True where a pixel is removed and imputed.
        noise: $\\sigma$, in the input's units (0 disables the noise).
        generator: a CPU generator for the noise (the noise is drawn on the CPU so that a
            seed gives the same numbers on every device).
        tol: relative residual at which the solver stops.
        max_iter: most solver iterations; default 200 (about ten are typical).

    Returns:
        The imputed images, same shape, dtype and device as ``x``.
    """
    single = x.dim() == 3
    x = check_images(x)
    if not isinstance(missing, Tensor):
        raise InputError(f"missing must be a bool tensor (B, H, W), got {type(missing).__name__}")
    if missing.dim() == 2:
        missing = missing.unsqueeze(0)
    if missing.dim() != 3 or tuple(missing.shape[1:]) != tuple(x.shape[-2:]):
        raise InputError(
            f"missing must have the images' size (B, {x.shape[-2]}, {x.shape[-1]}), got "
            f"{tuple(missing.shape)}"
        )
    missing = missing.to(x.device).bool().expand(x.shape[0], -1, -1)
    filled, converged = _harmonic_fill(x, missing, tol, max_iter)
    if not converged:
        warnings.warn(
            "noisy_linear_impute: the solver stopped at max_iter before reaching tol; "
            "the imputed values are approximate",
            stacklevel=2,
        )
    if noise:
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        filled = filled + missing.unsqueeze(1).to(filled.dtype) * noise * eps.to(filled.dtype)
    out = filled.to(x.dtype)
    return out[0] if single else out


def road(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    target: object = None,
    order: str = "morf",
    fractions: Sequence[float] | Tensor = ROAD_FRACTIONS,
    noise: float = 0.01,
    seed: int = 0,
    activation: Activation = "softmax",
    batch_size: int = 64,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> CurveResult:
    """ROAD: RemOve And Debias (Rong et al., ICML 2022, arXiv:2202.00449).

    For each fraction $f$, the $\\lfloor fHW + 1/2 \\rfloor$ most relevant pixels
    (``order="morf"``) or least relevant pixels (``order="lerf"``) are removed and filled by
    :func:`noisy_linear_impute`, which leaks no information about the removed pixels'
    shape; the curve is the target's probability after each removal, and ``.mean`` summarises
    it (as pytorch-grad-cam's averaged ROAD does). For MoRF lower is better, for LeRF
    higher; :func:`road_combined` merges the two:

    $$\\mathrm{ROAD}_{\\mathrm{MoRF}} = \\frac{1}{|F|} \\sum_{f \\in F}
    p^c\\big(\\mathrm{impute}(x, \\mathrm{top}_f(M))\\big)$$

    The pixels removed are chosen by rank (a stable sort, so ties go in raster order), so
    each fraction removes exactly that share of the pixels. (pytorch-grad-cam thresholds at
    ``np.percentile`` instead; for maps without ties the two remove the same pixels when the
    fractions are the counts it removes.) Noise is drawn per (image, fraction) from a CPU
    generator seeded with ``seed``, so results do not depend on ``batch_size`` or device.

    Args:
        model: the classifier; used frozen and left unchanged.
        x: images (B, C, H, W) or (C, H, W).
        maps: (B, H, W) saliency maps.
        target: None (top class), an int, or one class per image.
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        fractions: shares of pixels removed, default 0.1, 0.2, ..., 0.9.
        noise: standard deviation of the imputation noise, in input units (0 disables it).
        seed: seed of the noise.
        activation: ``"softmax"``, ``"sigmoid"`` or None.
        batch_size: most imputed images per solve and forward pass.
        tol: relative residual of the imputation solver.
        max_iter: most solver iterations.

    Returns:
        The :class:`CurveResult` (name ``"road-morf"`` or ``"road-lerf"``).
    """
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', got {order!r}")
    x, maps, device = _prepare(model, x, maps, activation, batch_size)
    f = check_fractions(fractions)
    b, c, h, w = x.shape
    counts = torch.floor(f * (h * w) + 0.5).long().to(device)
    ranks = order_ranks(maps, descending=(order == "morf"))
    steps = f.numel()
    generator = torch.Generator().manual_seed(int(seed))
    not_converged = False

    with frozen_eval(model):
        targets, original = _original(model, x, target, activation, batch_size)

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            nonlocal not_converged
            for bi, si in _pairs(b, steps, batch_size):
                bi, si = bi.to(device), si.to(device)
                missing = (ranks[bi] < counts[si].unsqueeze(1)).view(-1, h, w)
                filled, ok = _harmonic_fill(x[bi], missing, tol, max_iter)
                not_converged |= not ok
                if noise:
                    eps = torch.stack(
                        [
                            torch.randn((c, h, w), generator=generator, dtype=torch.float64)
                            for _ in range(bi.numel())
                        ]
                    ).to(device, filled.dtype)
                    filled = filled + missing.unsqueeze(1).to(filled.dtype) * noise * eps
                yield filled.to(x.dtype), targets[bi]

        scores = batched_target_probs(model, batches(), activation).view(b, steps)
    if not_converged:
        warnings.warn(
            "road: the imputation solver stopped at max_iter before reaching tol; "
            "scores are approximate",
            stacklevel=2,
        )
    return CurveResult(f"road-{order}", f.cpu(), scores, original, targets)


def road_combined(morf: CurveResult, lerf: CurveResult) -> Tensor:
    """ROAD's combined score per image: half the gap between LeRF and MoRF, (B,).

    $$\\mathrm{ROAD} = \\tfrac12 \\big(\\overline{p}_{\\mathrm{LeRF}} -
    \\overline{p}_{\\mathrm{MoRF}}\\big)$$

    Higher is better (keeping the unimportant pixels matters little, removing the important
    ones a lot).
    """
    if morf.scores.shape != lerf.scores.shape:
        raise InputError(
            f"morf and lerf curves must have the same shape, got {tuple(morf.scores.shape)} "
            f"and {tuple(lerf.scores.shape)}"
        )
    return (lerf.mean - morf.mean) / 2


def _road_curve(inputs: MetricInputs, order: str, options: dict[str, object]) -> CurveResult:
    """ROAD's curve of one order, computed once per batch and options (the three ROAD
    scores share it)."""
    key = f"road-{order}-{sorted(options.items())!r}"
    if key not in inputs.cache:
        inputs.cache[key] = road(
            inputs.model,
            inputs.x,
            inputs.maps,
            order=order,
            **_on(inputs),
            **options,  # type: ignore[arg-type]
        )
    return inputs.cache[key]


@register_metric(
    "road_morf",
    family="faithfulness",
    higher_is_better=False,
    label="morf",
    summary="mean ROAD MoRF probability",
    option_group="road",
    options_of=road,
)
def _road_morf(inputs: MetricInputs, **options: object) -> Tensor:
    return _road_curve(inputs, "morf", options).mean


@register_metric(
    "road_lerf",
    family="faithfulness",
    higher_is_better=True,
    label="lerf",
    summary="mean ROAD LeRF probability",
    option_group="road",
    options_of=road,
)
def _road_lerf(inputs: MetricInputs, **options: object) -> Tensor:
    return _road_curve(inputs, "lerf", options).mean


@register_metric(
    "road",
    family="faithfulness",
    higher_is_better=True,
    label="road",
    summary="(LeRF - MoRF) / 2",
    option_group="road",
    options_of=road,
)
def _road(inputs: MetricInputs, **options: object) -> Tensor:
    return road_combined(_road_curve(inputs, "morf", options), _road_curve(inputs, "lerf", options))
