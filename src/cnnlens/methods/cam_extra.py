"""The newer CAMs: Eigen-Grad-CAM, Grad-CAM element-wise, KPCA-CAM, Shapley-CAM, Finer-CAM,
and FullGrad (bias gradients of every layer).

Each CAM only says how it turns a layer's activations and gradients into a map, on
:class:`~cnnlens.methods.base.BaseCAM`; FullGrad reads every biased layer at once and stands
on :class:`~cnnlens.methods.base.Explainer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import frozen, grad_enabled
from cnnlens.core.checks import check_choice, check_float, check_int
from cnnlens.core.explanation import Explanation
from cnnlens.core.layers import LayersLike
from cnnlens.core.layouts import Layout
from cnnlens.core.registry import get_method, register
from cnnlens.core.targets import TargetLike, Targets, resolve_targets
from cnnlens.errors import InputError, LayerNotFoundError, ModelError, TargetError
from cnnlens.methods.base import BaseCAM, CAMContext, Explainer, normalize_maps, upsample
from cnnlens.methods.engine import detach_outputs, first_component, prepare_input

__all__ = [
    "KPCACAM",
    "EigenGradCAM",
    "FinerCAM",
    "FullGrad",
    "GradCAMElementWise",
    "ShapleyCAM",
]


@register("eigengradcam")
class EigenGradCAM(BaseCAM):
    """Eigen-Grad-CAM (pytorch-grad-cam's variant of Eigen-CAM, Muhammad & Yeasin 2020,
    arXiv:2008.00299): the first principal component of the element-wise product of
    gradients and activations, so the map is class-specific.

    $$M^c = \\tilde Z v_1, \\qquad Z_{(ij),k} = \\frac{\\partial y^c}{\\partial A^k_{ij}}
    A^k_{ij}$$

    ``Z`` is centered over positions; the SVD sign is corrected as in
    :class:`~cnnlens.methods.cam.EigenCAM` (pytorch-grad-cam keeps LAPACK's sign).
    """

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        return first_component(grads * acts)


@register("gradcam_elementwise")
class GradCAMElementWise(BaseCAM):
    """Grad-CAM element-wise (pytorch-grad-cam's ``GradCAMElementWise``): HiResCAM's
    element-wise product with a ReLU per element before the channel sum, so negative
    evidence in one channel cannot cancel positive evidence in another.

    $$M^c_{ij} = \\sum_k \\mathrm{ReLU}\\Big(\\frac{\\partial y^c}{\\partial A^k_{ij}}
    A^k_{ij}\\Big)$$
    """

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        return self.reduce_channels((grads * acts).clamp(min=0))


KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


@register("kpcacam")
class KPCACAM(BaseCAM):
    """KPCA-CAM (Karmani, Sheharyar & Rasheed, 2024, arXiv:2410.00267): Eigen-CAM with
    kernel PCA, the activations projected on the first kernel principal component.

    With ``X`` the (hw, C) activations centered per channel, ``K_{ij} = k(x_i, x_j)`` the
    kernel matrix, $\\tilde K = (I - \\tfrac1n 11^\\top) K (I - \\tfrac1n 11^\\top)$ and
    $(\\lambda_1, u_1)$ its leading eigenpair,

    $$M = \\sqrt{\\lambda_1}\\, u_1 \\ \\text{reshaped to}\\ (h, w)$$

    (scikit-learn's ``KernelPCA(n_components=1).fit_transform``, which pytorch-grad-cam
    calls). Kernels, with ``gamma`` default ``1 / C``: ``sigmoid`` $\\tanh(\\gamma x^\\top y
    + c_0)$ (the paper's and the peer's default), ``rbf`` $e^{-\\gamma\\|x-y\\|^2}$,
    ``poly`` $(\\gamma x^\\top y + c_0)^d$, ``linear`` (Eigen-CAM) and ``cosine``. Sign: the
    entry of largest magnitude is positive (scikit-learn's ``svd_flip``). Gradient-free and
    class-agnostic. Cost: an (hw x hw) eigendecomposition per image, O((hw)^3): fine at
    the last layer of a CNN (7x7 to 28x28), slow at 56x56.

    Args:
        kernel: one of ``sigmoid``, ``rbf``, ``poly``, ``linear``, ``cosine``.
        gamma: kernel coefficient (None: 1 / channels).
        coef0, degree: of the sigmoid and polynomial kernels (scikit-learn's defaults).
    """

    needs_grad: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        coef0: float = 1.0,
        degree: int = 3,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, layer, optimize=optimize, eval_mode=eval_mode)
        self.kernel = check_choice("kernel", kernel, KERNELS)
        self.gamma = None if gamma is None else check_float("gamma", gamma, minimum=0.0)
        self.coef0 = check_float("coef0", coef0)
        self.degree = check_int("degree", degree)

    def gram(self, flat: Tensor) -> Tensor:
        """The kernel matrix (B, n, n) of the rows of ``flat`` (B, n, C)."""
        gamma = self.gamma if self.gamma is not None else 1.0 / flat.shape[-1]
        if self.kernel == "rbf":
            return torch.exp(-gamma * torch.cdist(flat, flat).pow(2))
        if self.kernel == "cosine":
            unit = F.normalize(flat, dim=-1)
            return unit @ unit.transpose(1, 2)
        dot = flat @ flat.transpose(1, 2)
        if self.kernel == "sigmoid":
            return torch.tanh(gamma * dot + self.coef0)
        if self.kernel == "poly":
            return (gamma * dot + self.coef0).pow(self.degree)
        return dot

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        b, c, h, w = acts.shape
        flat = torch.nan_to_num(acts).reshape(b, c, h * w).transpose(1, 2).double()
        flat = flat - flat.mean(dim=1, keepdim=True)
        k = self.gram(flat)
        k = k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True)
        k = k + k.mean(dim=(1, 2), keepdim=True)
        val, vec = _leading_eigenpair(k)
        proj = vec * val.clamp(min=0).sqrt()[:, None]
        big = proj.gather(1, proj.abs().argmax(dim=1, keepdim=True))
        proj = torch.where(big < 0, -proj, proj)
        return proj.reshape(b, h, w).float()


def _leading_eigenpair(k: Tensor, exact_up_to: int = 100) -> tuple[Tensor, Tensor]:
    """Largest eigenvalue (B,) and its eigenvector (B, n) of symmetric (B, n, n) ``k``: a full
    eigendecomposition up to ``exact_up_to`` rows, LOBPCG beyond (10-20x faster at 32x32
    positions), started from a fixed vector (the global RNG is untouched)."""
    n = k.shape[-1]
    if n <= exact_up_to:
        vals, vecs = torch.linalg.eigh(k)  # ascending
        return vals[:, -1], vecs[..., -1]
    gen = torch.Generator(device=k.device).manual_seed(0)
    start = torch.randn(n, 1, generator=gen, device=k.device, dtype=k.dtype)
    pairs = [torch.lobpcg(m, X=start.clone(), largest=True, tol=1e-9) for m in k]
    return torch.stack([v[0] for v, _ in pairs]), torch.stack([u[:, 0] for _, u in pairs])


@register("shapleycam")
class ShapleyCAM(BaseCAM):
    """Shapley-CAM (Cai, 2025, arXiv:2501.06261): channel weights from the gradient and the
    Hessian-vector product, a second-order estimate of each channel's Shapley value.

    $$w^c_k = \\frac{1}{Z}\\sum_{ij}\\Big(\\frac{\\partial s^c}{\\partial A^k_{ij}} -
    \\tfrac12 \\big(H A\\big)^k_{ij}\\Big), \\qquad H = \\frac{\\partial^2 s^c}
    {\\partial A^2}$$

    The score is the paper's ReST ("residual softmax target", the logit plus the
    log-softmax, $s^c = y^c + \\log \\mathrm{softmax}(y)_c$) with ``score="rest"``
    (default), or the raw logit with ``score="logit"`` (pytorch-grad-cam's default target);
    a callable target gives its own score. With the logit of a network that is piecewise
    linear above the layer, ``H = 0`` and the map is Grad-CAM's. The HVP costs one more
    backward pass through the layers above the chosen one.

    Args:
        score: ``"rest"`` or ``"logit"``.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        score: str = "rest",
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, layer, optimize=optimize, eval_mode=eval_mode)
        self.score = check_choice("score", score, ("rest", "logit"))

    def _scores(self, targets: Targets, outputs: Any) -> Tensor:
        y = targets.scores(outputs)
        if self.score == "logit" or targets.fn is not None:
            return y
        logits = targets.logits(outputs)
        return y + logits.log_softmax(dim=1).gather(1, targets.indices.to(logits.device))

    def _layer_maps(
        self, acts: list[Tensor], ctx: CAMContext, names: list[str], lays: list[Layout]
    ) -> list[Tensor]:
        if any(lay.kind != "nchw" for lay in lays):
            raise InputError(
                f"{self.name} takes second derivatives through (B, C, h, w) activations; "
                "its layer must be a plain NCHW map"
            )
        per_layer: list[list[Tensor]] = [[] for _ in acts]
        targets = ctx.targets
        scores = self._scores(targets, ctx.outputs)
        for k in range(targets.k):
            grads = torch.autograd.grad(
                scores[:, k].sum(), acts, retain_graph=True, create_graph=True, allow_unused=True
            )
            for i, (a, g) in enumerate(zip(acts, grads)):
                if g is None:
                    raise LayerNotFoundError(
                        f"the target score does not depend on layer {names[i]!r}; "
                        "choose a layer that runs before the output"
                    )
                hvp = None
                if g.requires_grad:
                    (hvp,) = torch.autograd.grad(
                        g, a, grad_outputs=a.detach(), retain_graph=True, allow_unused=True
                    )
                w = g.detach().float()
                if hvp is not None:
                    w = w - 0.5 * hvp.float()
                weights = w.mean(dim=(2, 3), keepdim=True)
                per_layer[i].append(self.reduce_channels(weights * a.detach().float()))
        return [torch.stack(maps, dim=1) for maps in per_layer]


@dataclass(frozen=True)
class _FinerTargets(Targets):
    """Targets whose score is Finer-CAM's weighted difference to the most similar classes."""

    alpha: float = 1.0
    ranks: tuple[int, ...] = (1, 2, 3)

    def scores(self, outputs: Any) -> Tensor:
        y = self.logits(outputs)
        idx = self.indices.to(y.device)
        main = y.gather(1, idx)  # (B, K)
        gap = (y.detach()[:, None, :] - main.detach()[:, :, None]).abs()
        order = gap.argsort(dim=2, stable=True)  # rank 0 is the class itself
        ranks = [r for r in self.ranks if r < y.shape[1]]
        other = order[:, :, ranks]  # (B, K, R)
        probs = y.softmax(dim=1)
        rows = torch.arange(y.shape[0], device=y.device)[:, None, None]
        weight = probs[rows, other]
        diff = main[:, :, None] - self.alpha * y[rows, other]
        return (weight * diff).sum(dim=2) / (weight.sum(dim=2) + 1e-9)


@register("finercam")
class FinerCAM(BaseCAM):
    """Finer-CAM (Zhang et al., 2025, arXiv:2501.11309): Grad-CAM of the difference between
    the target class and the classes the model finds most similar to it, which keeps the
    features that tell them apart and drops those they share.

    With ``d_1, d_2, ...`` the classes ranked by $|y^d - y^c|$ (rank 0 is ``c``), the
    explained score is

    $$s = \\frac{\\sum_{r \\in R} p_{d_r}\\,(y^c - \\alpha\\, y^{d_r})}{\\sum_{r \\in R}
    p_{d_r}}, \\qquad p = \\mathrm{softmax}(y)$$

    and the map is the ``base`` CAM's for ``s`` (Grad-CAM by default; as the authors'
    implementation in pytorch-grad-cam, whose ``base_method`` it mirrors: the weights ``p``
    are part of the differentiated score). ``alpha=0`` gives the base method's map.
    Class-index targets only.

    Args:
        alpha: strength of the comparison.
        comparison: the similarity ranks compared with (default the three most similar).
        base: the registry name of a gradient CAM that turns the activations and the
            gradients of ``s`` into the map: ``gradcam`` (default), ``gradcam++``,
            ``xgradcam``, ``hirescam``, ``layercam``, ``eigengradcam``,
            ``gradcam_elementwise``. Methods that need more than one layer's activations
            and gradients (CAM's head, Shapley-CAM's second derivative, the masked forwards
            of Score-CAM) are refused.

    Example:
        >>> FinerCAM(model, "layer4", base="layercam", alpha=0.6)(x, target=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        alpha: float = 1.0,
        comparison: Sequence[int] = (1, 2, 3),
        base: str = "gradcam",
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, layer, optimize=optimize, eval_mode=eval_mode)
        self.alpha = check_float("alpha", alpha)
        self.ranks = tuple(check_int("comparison", r) for r in comparison)
        if not self.ranks:
            raise TargetError("comparison must name at least one similarity rank (1 = closest)")
        self.base = _gradient_cam(model, base, layer, optimize, eval_mode)

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        # the base follows this method's channel reduction (eigen_smooth swaps it per call)
        self.base.reduce_channels = self.reduce_channels
        try:
            return self.base.cam(acts, grads, ctx)
        finally:
            del self.base.reduce_channels

    def _layer_maps(
        self, acts: list[Tensor], ctx: CAMContext, names: list[str], lays: list[Layout]
    ) -> list[Tensor]:
        targets = ctx.targets
        if targets.fn is not None:
            raise TargetError("finercam compares class scores: give class indices as target")
        finer = _FinerTargets(
            targets.indices,
            None,
            targets.per_image,
            output=targets.output,
            chosen=targets.chosen,
            alpha=self.alpha,
            ranks=self.ranks,
        )
        return super()._layer_maps(acts, dataclasses.replace(ctx, targets=finer), names, lays)


def _gradient_cam(
    model: nn.Module, base: Any, layer: LayersLike, optimize: bool | None, eval_mode: bool
) -> BaseCAM:
    """Finer-CAM's base: a gradient CAM that maps one layer's activations and gradients."""
    if not isinstance(base, str):
        raise InputError(f"base must be the name of a gradient CAM such as 'gradcam'; got {base!r}")
    cls = get_method(base)
    plain = (
        isinstance(cls, type)
        and issubclass(cls, BaseCAM)
        and cls is not FinerCAM
        and cls.needs_grad
        and cls._layer_maps is BaseCAM._layer_maps
        and cls.extra_modules is BaseCAM.extra_modules
        and cls.explain_batch is BaseCAM.explain_batch
    )
    if not plain:
        raise InputError(
            f"base must be a gradient CAM that weighs one layer's activations by the "
            f"gradients (gradcam, gradcam++, xgradcam, hirescam, layercam, eigengradcam, "
            f"gradcam_elementwise); got {base!r}"
        )
    return cls(model, layer, optimize=optimize, eval_mode=eval_mode)


def _bias_of(module: nn.Module) -> Tensor | None:
    """The bias a module adds per output channel: a layer's bias, or BatchNorm's
    $\\beta - \\gamma\\mu/\\sqrt{\\sigma^2+\\epsilon}$ (None where there is none)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_mean is None or module.running_var is None:
            return None
        scale = module.weight if module.weight is not None else 1.0
        shift = module.bias if module.bias is not None else 0.0
        return shift - module.running_mean * scale / torch.sqrt(module.running_var + module.eps)
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, Tensor) else None


def _rescale(t: Tensor) -> Tensor:
    """FullGrad's psi after the absolute value: each image's tensor min-max rescaled to
    [0, 1] over all its channels and positions (zero where it is constant)."""
    flat = t.flatten(1)
    lo = flat.amin(1).view(-1, *[1] * (t.dim() - 1))
    span = flat.amax(1).view(-1, *[1] * (t.dim() - 1)) - lo
    return torch.where(span > 0, (t - lo) / span.clamp(min=1e-30), torch.zeros_like(t))


@register("fullgrad")
class FullGrad(Explainer):
    """FullGrad (Srinivas & Fleuret, 2019, arXiv:1905.00780): the input-gradient term plus
    the bias-gradients of every convolution and BatchNorm layer.

    For a network with biases, $f(x) = \\nabla_x f^\\top x + \\sum_{l} \\nabla_{b_l} f^\\top
    b_l$ exactly (piecewise-linear networks; :meth:`decompose` returns the terms). The map
    is

    $$S = \\psi\\big(|\\nabla_x f \\odot x|\\big) + \\sum_{l}\\sum_{c}
    \\psi\\big(|\\nabla_{z_l} f \\odot b_l|\\big)_c$$

    with $z_l$ a layer's output and $\\psi$ the absolute value rescaled to [0, 1] per
    image over all its channels and positions, then bilinearly upsampled (channels summed).
    BatchNorm's bias is $\\beta - \\gamma\\mu/\\sqrt{\\sigma^2+\\epsilon}$ (eval mode). This is
    the paper's and its authors' code's $\\psi$; pytorch-grad-cam rescales each channel
    separately before the sum, which weights weak channels as much as strong ones
    (tests/test_cam_extra.py shows the difference). Upsampling uses
    ``align_corners=False`` (cnnlens' convention; the authors' code uses True). A module
    run several times per forward contributes once per run. ``layer`` does not apply.
    ``raw`` is the summed map at input size, before the last normalization.
    """

    family: ClassVar[str] = "gradient"

    biased_types: ClassVar[tuple[type[nn.Module], ...]] = (
        nn.Conv2d,
        nn.modules.batchnorm._BatchNorm,
    )
    keras_refusal: ClassVar[str] = (
        "its bias terms are read from torch convolution, BatchNorm and linear layers, which a "
        "Keras model does not have; use gradcam, integrated_gradients or smoothgrad"
    )

    def __init__(self, model: nn.Module, *, eval_mode: bool = True) -> None:
        super().__init__(model, eval_mode=eval_mode)
        self.layers = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, (*self.biased_types, nn.Linear))
        ]

    def decompose(
        self, x: Tensor, target: TargetLike = None
    ) -> tuple[Tensor, list[Tensor], Targets]:
        """The full-gradient terms of the first target of each image: the input term
        ``x * grad_x`` (B, C, H, W), the bias terms ``b * grad_z`` (B, C[, h, w]) of every
        layer run (in forward order), and the resolved targets. Their sum is ``f(x)``
        for a piecewise-linear network."""
        xb = prepare_input(x, self.model, channels_last=self.channels_last_input)
        with frozen(self.model, eval_mode=self.eval_mode):
            leaf, terms, targets, _ = self._terms(xb, target, None, k_only=0, spatial=False)
        return leaf.detach() * terms[0][0], [t for t in terms[0][1]], targets

    def _terms(
        self, x: Tensor, target: TargetLike, topk: int | None, *, k_only: int | None, spatial: bool
    ) -> tuple[Tensor, list[tuple[Tensor, list[Tensor]]], Targets, Any]:
        runs: list[tuple[Tensor, Tensor]] = []

        def hook(module: nn.Module, _inputs: object, out: object) -> object:
            bias = _bias_of(module)
            if not isinstance(out, Tensor) or bias is None or (spatial and out.dim() != 4):
                return None
            runs.append((out, bias.detach()))
            return out.clone()  # an in-place op downstream cannot alter ``out``

        handles = [m.register_forward_hook(hook) for _, m in self.layers]
        try:
            with grad_enabled():
                leaf = x.detach().requires_grad_(True)
                outputs = self.model(leaf)
                targets = resolve_targets(target, outputs, topk, batch=x.shape[0])
                scores = targets.scores(outputs)
                ks = range(targets.k) if k_only is None else [k_only]
                per_k = []
                for k in ks:
                    grads = torch.autograd.grad(
                        scores[:, k].sum(),
                        [leaf] + [o for o, _ in runs],
                        retain_graph=k != ks[-1],
                        allow_unused=True,
                    )
                    bias_terms = [
                        (torch.zeros_like(o) if g is None else g) * _shape_bias(b, o)
                        for g, (o, b) in zip(grads[1:], runs)
                    ]
                    gx = grads[0] if grads[0] is not None else torch.zeros_like(leaf)
                    per_k.append((gx.detach(), [t.detach().float() for t in bias_terms]))
        finally:
            for h in handles:
                h.remove()
        if not runs and spatial:
            raise ModelError(
                "fullgrad needs convolution or BatchNorm layers with a bias; "
                f"{type(self.model).__name__} has none that ran"
            )
        return leaf, per_k, targets, outputs

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        _, per_k, targets, outputs = self._terms(x, target, topk, k_only=None, spatial=True)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        maps = []
        for gx, bias_terms in per_k:
            total = _rescale((gx * x).abs().float()).sum(dim=1)
            for term in bias_terms:
                total = total + upsample(_rescale(term.abs()).sum(dim=1), size)
            maps.append(total)
        raw = torch.stack(maps, dim=1)
        norm = normalize_maps(raw)
        scores = detach_outputs(outputs)
        if targets.per_image:
            raw, norm = raw[:, 0], norm[:, 0]
        return Explanation(
            maps=norm,
            raw=raw,
            targets=targets.public(),
            scores=scores,
            method=self.name,
            layer=None,
            output=targets.chosen,
        )


def _shape_bias(bias: Tensor, out: Tensor) -> Tensor:
    """``bias`` (C,) shaped to broadcast over ``out`` (B, C, ...)."""
    return bias.to(out.dtype).view(1, -1, *[1] * (out.dim() - 2))
