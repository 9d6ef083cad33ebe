"""Pixel attributions from input gradients: saliency, input x gradient, integrated gradients,
guided backpropagation, deconvnet and guided Grad-CAM.

Every method here returns ``raw`` as signed per-channel attributions (B[, K], C, H, W) and
``maps`` as one (H, W) map per image and class: the channels are reduced by ``reduce``
(``"absmax"``: the largest absolute value over channels, Simonyan et al.; ``"square"``: the
sum of squares; ``"abs"``: the sum of absolute values; ``"sum"``: the signed sum) and the
result is min-max normalized per map. For the signed ``"sum"`` the most negative attribution
becomes 0 and the most positive 1, so zero attribution lands between them: the map ranks
pixels by signed evidence, and ``raw`` keeps the values.

Gradients are taken with ``torch.autograd.grad`` to the input only (the parameters are frozen
for the call), for the K explained classes from one forward pass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cnnlens.core.checks import check_choice, check_float, check_int
from cnnlens.core.explanation import Explanation
from cnnlens.core.layers import LayersLike
from cnnlens.core.progress import progress_bar
from cnnlens.core.registry import get_method, register
from cnnlens.core.targets import TargetLike, Targets, WithOutput
from cnnlens.errors import InputError
from cnnlens.methods.base import GradientMethod, upsample
from cnnlens.methods.engine import (
    REDUCTIONS,
    BatchedForward,
    broadcast_to_input,
    first_pass,
    pixel_explanation,
    reduce_channels,
    row_scores,
    rows_targets,
)

__all__ = [
    "IG_BASELINES",
    "IG_RULES",
    "REDUCTIONS",
    "Deconvnet",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputXGradient",
    "IntegratedGradients",
    "ReLURule",
    "Saliency",
    "reduce_channels",
]


@register("saliency")
class Saliency(GradientMethod):
    """Saliency: the gradient of the class score with respect to the input (Simonyan et al.,
    2014, arXiv:1312.6034).

    $$a = \\frac{\\partial f_c(x)}{\\partial x}, \\qquad M_{ij} = \\max_{c'} |a_{c'ij}|$$

    ``raw`` keeps the signed gradient; ``reduce`` (default ``"absmax"``, as in the paper)
    picks how channels are combined into the map.

    Example:
        >>> Saliency(model, reduce="square")(x, target=3).maps          # doctest: +SKIP
    """


@register("inputxgradient")
class InputXGradient(GradientMethod):
    """Input x gradient (Shrikumar et al., 2016, arXiv:1605.01713).

    $$a = x \\odot \\frac{\\partial f_c(x)}{\\partial x}$$

    The map reduces channels with ``"abs"`` by default.

    Example:
        >>> InputXGradient(model)(x).raw.shape                          # doctest: +SKIP
    """

    default_reduce: ClassVar[str] = "abs"

    def combine(self, x: Tensor, grads: Tensor) -> Tensor:
        return x.unsqueeze(1) * grads


# ---------------------------------------------------------------------------------------------
# Integrated gradients
# ---------------------------------------------------------------------------------------------

IG_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
IG_BASELINES = ("zero", "blur", "uniform")


def gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the n-point Gauss-Legendre rule on [0, 1], float64.

    Golub-Welsch: the nodes on [-1, 1] are the eigenvalues of the symmetric Jacobi matrix
    with off-diagonal $k / \\sqrt{4k^2 - 1}$, the weights twice the squared first components
    of its eigenvectors.
    """
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(jacobi)
    weights = 2 * vecs[0].pow(2)
    return (nodes + 1) / 2, weights / 2


def path_rule(rule: str, n: int) -> tuple[Tensor, Tensor]:
    """Points ``alpha`` in [0, 1] and weights of the quadrature of $\\int_0^1 g(\\alpha)d\\alpha$.

    Riemann left/right/middle use n equal steps of 1/n; the trapezoid rule uses n points
    0, 1/(n-1), ..., 1 with weights 1/(2(n-1)) at the ends and 1/(n-1) inside (captum's
    ``riemann_trapezoid`` weights the points by 1/n instead, so its sum is 1 - 1/n).
    """
    if rule == "gausslegendre":
        return gauss_legendre(n)
    if rule == "riemann_trapezoid":
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
        weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 1 / (2 * (n - 1))
        return alphas, weights
    i = torch.arange(n, dtype=torch.float64)
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (i + offset) / n, torch.full((n,), 1 / n, dtype=torch.float64)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (n, C, H, W) images with replicate padding."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@register("integrated_gradients")
class IntegratedGradients(GradientMethod):
    """Integrated gradients (Sundararajan et al., 2017, arXiv:1703.01365).

    $$a_i = (x_i - x'_i)\\int_0^1 \\frac{\\partial f_c(x' + \\alpha (x - x'))}{\\partial x_i}
    d\\alpha \\approx (x_i - x'_i)\\sum_{s=1}^{n} w_s\\,
    \\frac{\\partial f_c(x' + \\alpha_s (x - x'))}{\\partial x_i}$$

    The path points are packed, over all images and steps, into forwards of at most
    ``internal_batch_size`` inputs, so memory stays bounded for any ``n_steps``.
    ``extras["delta"]`` is the completeness gap of each explained score (B[, K]):

    $$\\delta = \\sum_i a_i - \\big(f_c(x) - f_c(x')\\big)$$

    Args:
        model: the network.
        baseline: ``"zero"`` (default), ``"blur"`` (the input blurred with a Gaussian of
            ``blur_sigma``), ``"uniform"`` (uniform noise over each image's value range,
            seeded), or a number or tensor broadcastable to the input.
        n_steps: number of path points (>= 1; >= 2 for the trapezoid rule).
        rule: the quadrature: ``"gausslegendre"`` (default, as captum's ``method``),
            ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"`` or
            ``"riemann_trapezoid"``.
        internal_batch_size: the most path points per forward/backward pass.
        blur_sigma: sigma of the ``"blur"`` baseline in pixels; default ``min(H, W) / 8``.
        seed: seed of the ``"uniform"`` baseline (a local generator; the global RNG is
            untouched).
        reduce: channel reduction of the map (default ``"abs"``).
        progress: show a rich progress bar.
        optimize: run the path batches on the fast CPU path (None: automatic; see
            :class:`~cnnlens.methods.engine.BatchedForward`); False runs the model as it is.
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.

    Example:
        >>> exp = IntegratedGradients(model, n_steps=64)(x, target=3)  # doctest: +SKIP
        >>> exp.extras["delta"]                                        # completeness gap
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_steps": 16, "internal_batch_size": 64},
        "tiny": {"n_steps": 4, "internal_batch_size": 64},
    }

    default_reduce: ClassVar[str] = "abs"

    def __init__(
        self,
        model: nn.Module,
        *,
        baseline: str | float | Tensor = "zero",
        n_steps: int = 50,
        rule: str = "gausslegendre",
        internal_batch_size: int = 16,
        blur_sigma: float | None = None,
        seed: int = 0,
        reduce: str | None = None,
        progress: bool = False,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, reduce=reduce, optimize=optimize, eval_mode=eval_mode)
        self.n_steps = check_int("n_steps", n_steps)
        check_choice("rule", rule, IG_RULES)
        if rule == "riemann_trapezoid" and self.n_steps < 2:
            raise InputError(f"n_steps must be >= 2 for the trapezoid rule, got {n_steps!r}")
        self.rule_name = rule
        if isinstance(baseline, str) and baseline not in IG_BASELINES:
            raise InputError(
                f"baseline must be one of {', '.join(IG_BASELINES)}, a number or a tensor; "
                f"got {baseline!r}"
            )
        self.baseline = baseline
        self.internal_batch_size = check_int("internal_batch_size", internal_batch_size)
        self.blur_sigma = (
            None
            if blur_sigma is None
            else check_float("blur_sigma", blur_sigma, minimum=0.0, strict_minimum=True)
        )
        self.seed = check_int("seed", seed, minimum=0)
        self.progress = bool(progress)

    def baselines(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """The baseline of each row of ``x`` (n, C, H, W); ``rows`` maps rows to images."""
        if isinstance(self.baseline, str):
            if self.baseline == "zero":
                return torch.zeros_like(x)
            if self.baseline == "blur":
                sigma = self.blur_sigma or min(x.shape[-2:]) / 8
                return gaussian_blur(x, float(sigma))
            gen = torch.Generator(device=x.device)
            gen.manual_seed(self.seed)
            u = torch.rand(x.shape[1:], generator=gen, device=x.device, dtype=torch.float32)
            lo = x.flatten(1).amin(1).view(-1, 1, 1, 1)
            hi = x.flatten(1).amax(1).view(-1, 1, 1, 1)
            return (lo + (hi - lo) * u.to(x.dtype)).to(x.dtype)
        value = self.baseline
        if rows is not None and isinstance(value, Tensor) and value.dim() == 4 and len(value) > 1:
            value = value.to(x.device)[rows.to(x.device)]  # one baseline per image
        return broadcast_to_input("baseline", value, x)

    def attribute(
        self,
        x: Tensor,
        targets: Targets,
        rows: Tensor,
        *,
        fx: Tensor | None = None,
        forward: BatchedForward | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        # without a forward checked by explain_batch (SmoothGrad's rows): channels-last only
        forward = forward or BatchedForward(self.model, x, self.optimize, fold=False)
        n = x.shape[0]
        local = torch.arange(n, device=x.device)
        sub = rows_targets(targets, rows)
        base = self.baselines(x, rows)
        diff = x - base
        alphas, weights = path_rule(self.rule_name, self.n_steps)
        alphas = alphas.to(device=x.device)
        weights = weights.to(device=x.device)
        total = torch.zeros((n, sub.k, *x.shape[1:]), device=x.device, dtype=torch.float32)
        n_points = n * self.n_steps
        with progress_bar(self.progress, n_points, "integrated gradients", transient=True) as bar:
            for start in range(0, n_points, self.internal_batch_size):
                idx = torch.arange(
                    start, min(start + self.internal_batch_size, n_points), device=x.device
                )
                step, row = idx // n, idx % n
                a = alphas[step].view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
                points = base[row] + a * diff[row]
                _, _, grads = self.forward_grads(points, rows_targets(sub, row), forward=forward)
                wts = weights[step].view(-1, *[1] * (grads.dim() - 1)).float()
                total.index_add_(0, row, grads.float() * wts)
                bar.advance(len(idx))
            attr = diff.float().unsqueeze(1) * total
            with torch.no_grad():
                if fx is None:
                    fx = self._scores(forward, x, sub, local)
                fb = self._scores(forward, base, sub, local)
        delta = attr.flatten(2).sum(2) - (fx.float() - fb)
        return attr, {"delta": delta}

    def _scores(self, forward: BatchedForward, x: Tensor, targets: Targets, rows: Tensor) -> Tensor:
        out = []
        for start in range(0, x.shape[0], self.internal_batch_size):
            sl = slice(start, start + self.internal_batch_size)
            out.append(row_scores(targets, forward(x[sl]), rows[sl]))
        return torch.cat(out)

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        if not isinstance(self.baseline, str):
            broadcast_to_input("baseline", self.baseline, x)  # checks the shape up front
        forward = BatchedForward(self.model, x, self.optimize)
        outputs, targets = first_pass(forward, x, target, topk)
        rows = torch.arange(x.shape[0], device=x.device)
        fx = row_scores(targets, outputs, rows)
        attr, extras = self.attribute(x, targets, rows, fx=fx, forward=forward)
        maps = reduce_channels(attr, self.reduce, dim=2)
        return pixel_explanation(attr, maps, targets, outputs, self.name, extras)


# ---------------------------------------------------------------------------------------------
# Guided backpropagation and deconvnet: a ReLU backward rule for every ReLU that runs
# ---------------------------------------------------------------------------------------------


def _guided_grad(out: Tensor, grad: Tensor) -> Tensor:
    return grad.clamp(min=0) * (out > 0).to(grad.dtype)


def _deconv_grad(out: Tensor, grad: Tensor) -> Tensor:
    return grad.clamp(min=0)


def _relu_functions(backward: Callable[[Tensor, Tensor], Tensor]) -> tuple[type, type]:
    """Out-of-place and in-place autograd Functions: ReLU forward, ``backward`` rule."""

    class RuleReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Tensor) -> Tensor:
            out = x.clamp(min=0)
            ctx.save_for_backward(out)
            return out

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> Tensor:
            (out,) = ctx.saved_tensors
            return backward(out, grad)

    class RuleReLUInplace(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Tensor) -> Tensor:
            x.clamp_(min=0)
            ctx.mark_dirty(x)
            ctx.save_for_backward(x)
            return x

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> Tensor:
            (out,) = ctx.saved_tensors
            return backward(out, grad)

    return RuleReLU, RuleReLUInplace


_GUIDED = _relu_functions(_guided_grad)
_DECONV = _relu_functions(_deconv_grad)
_RELU_OUT = {F.relu, torch.relu, Tensor.relu}
_RELU_INPLACE = {torch.relu_, Tensor.relu_}


class ReLURule(TorchFunctionMode):
    """While active, every ReLU call (``nn.ReLU`` modules, in-place or not, ``F.relu``,
    ``torch.relu``, ``Tensor.relu`` and the in-place ``relu_`` variants) runs a ReLU whose
    backward pass follows ``functions`` instead of the true derivative. In-place calls modify
    their tensor as the plain ReLU does."""

    def __init__(self, functions: tuple[type, type]) -> None:
        super().__init__()
        self.out_of_place, self.inplace = functions
        self.calls = 0

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self.calls == 0 and exc[0] is None:
            # no ReLU ran (GELU in ConvNeXt or Swin, a TorchScript module): the modified
            # backward never applied and the result is exactly the plain gradient
            warnings.warn(
                "no ReLU ran in the model's forward, so guided backprop / deconvnet equal "
                "the plain saliency gradient here; use saliency, or a method made for the "
                "model's activations (integrated_gradients, gradcam)",
                RuntimeWarning,
                stacklevel=2,
            )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_OUT or func in _RELU_INPLACE:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, Tensor) and x.is_floating_point():
                self.calls += 1
                inplace = func in _RELU_INPLACE or bool(
                    kwargs.get("inplace", args[1] if len(args) > 1 else False)
                )
                return (self.inplace if inplace else self.out_of_place).apply(x)
        return func(*args, **kwargs)


@register("guided_backprop")
class GuidedBackprop(GradientMethod):
    """Guided backpropagation (Springenberg et al., 2015, arXiv:1412.6806).

    At every ReLU the backward pass keeps only positive gradients where the input was
    positive:

    $$R^{(l)} = \\mathbb{1}[x^{(l)} > 0]\\;\\mathbb{1}[R^{(l+1)} > 0]\\;R^{(l+1)}$$

    The rule is applied to every ReLU that runs during the forward pass, modules and
    functional calls alike, through a :class:`ReLURule` torch-function mode active only for
    that forward (so DenseNet's functional ``F.relu`` is covered). ``raw`` is the guided
    gradient (B[, K], C, H, W).

    Example:
        >>> GuidedBackprop(model)(x, target=3).raw                      # doctest: +SKIP
    """

    relu_rule: ClassVar[tuple[type, type]] = _GUIDED

    def rule(self) -> AbstractContextManager[Any]:
        return ReLURule(self.relu_rule)


@register("deconvnet")
class Deconvnet(GradientMethod):
    """Deconvnet (Zeiler & Fergus, 2014, arXiv:1311.2901): the backward pass through every
    ReLU passes only positive gradients, whatever the forward input was.

    $$R^{(l)} = \\mathbb{1}[R^{(l+1)} > 0]\\;R^{(l+1)}$$

    Example:
        >>> Deconvnet(model)(x).maps                                    # doctest: +SKIP
    """

    relu_rule: ClassVar[tuple[type, type]] = _DECONV

    def rule(self) -> AbstractContextManager[Any]:
        return ReLURule(self.relu_rule)


@register("guided_gradcam")
class GuidedGradCAM(GradientMethod):
    """Guided Grad-CAM (Selvaraju et al., 2017, arXiv:1610.02391): guided backpropagation
    multiplied by the Grad-CAM map upsampled to the input size.

    $$a = R_{\\text{guided}} \\odot \\mathrm{up}\\Big(\\mathrm{ReLU}\\big(\\sum_k w^c_k A^k
    \\big)\\Big)$$

    With one layer the unnormalized, ReLU-ed Grad-CAM is used (as captum's
    ``GuidedGradCam``); with several, the fused [0, 1] Grad-CAM map.

    Args:
        model: the network.
        layer: the Grad-CAM layer (None: automatic, the last spatial layer).
        interpolate: ``"bilinear"`` (default) or ``"nearest"`` (captum's default) for the
            upsampling of the Grad-CAM map.
        reduce: channel reduction of the map (default ``"absmax"``).
        optimize: ``True``: the guided pass in channels-last (see :class:`GradientMethod`);
            the Grad-CAM pass always runs channels-last on the CPU.
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.

    Example:
        >>> GuidedGradCAM(model, layer="layer4")(x, target=3).maps     # doctest: +SKIP
    """

    uses_layer: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        interpolate: str = "bilinear",
        reduce: str | None = None,
        optimize: bool | None = None,
        eval_mode: bool = True,
        layout: str | None = None,
    ) -> None:
        super().__init__(model, reduce=reduce, optimize=optimize, eval_mode=eval_mode)
        self.interpolate = check_choice("interpolate", interpolate, ("bilinear", "nearest"))
        # through the registry: a method file does not import another family's file
        self.gradcam = get_method("gradcam")(model, layer, eval_mode=eval_mode, layout=layout)
        self.guided = GuidedBackprop(model, optimize=optimize, eval_mode=eval_mode)

    def attribute(
        self, x: Tensor, targets: Targets, rows: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        sub = rows_targets(targets, rows)
        guided, _ = self.guided.attribute(x, targets, rows)
        cam, _ = self._cam(x, sub)
        return guided * cam.unsqueeze(2), {}

    def _cam(self, x: Tensor, targets: Targets) -> tuple[Tensor, str]:
        target: Any = targets.fn if targets.fn is not None else targets.indices
        if targets.output is not None:
            target = WithOutput(target, targets.output)
        exp = self.gradcam.explain_batch(x, target, None)
        if exp.per_layer:
            cam = exp.maps
        else:
            cam = exp.raw.clamp(min=0)
        if cam.dim() == 3:
            cam = cam.unsqueeze(1)
        size = tuple(int(s) for s in x.shape[2:])
        if self.interpolate == "nearest":
            cam = F.interpolate(cam, size=size, mode="nearest")
        elif x.dim() == 5:  # a video: (B, K, t, h, w) maps to (T, H, W)
            cam = F.interpolate(cam, size=size, mode="trilinear", align_corners=False)
        else:
            cam = upsample(cam, size)
        return cam.to(x.device), str(exp.layer)

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        outputs, targets, grads = self.guided.forward_grads(x, None, target, topk)
        cam, layer = self._cam(x, targets)
        attr = grads.float() * cam.unsqueeze(2).float()
        maps = reduce_channels(attr, self.reduce, dim=2)
        exp = pixel_explanation(attr, maps, targets, outputs, self.name)
        exp.layer = layer
        return exp
