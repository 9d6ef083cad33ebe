"""DeepLIFT (rescale rule), DeepLIFT-SHAP and GradientSHAP / expected gradients.

DeepLIFT runs the input and its reference in one forward (the batch ``[x; x']``) under
:class:`DeepLiftMode`, a torch-function mode that lives for that forward on the calling
thread: every element-wise nonlinearity (ReLU as a module or ``F.relu``, in place or not;
ELU, leaky ReLU, sigmoid, tanh, softplus, SiLU, GELU) backpropagates the multiplier
$\\Delta y / \\Delta x$ of its pair of rows instead of its derivative (the derivative where
$|\\Delta x| < 10^{-10}$), and max pooling backpropagates captum's multiplier, which keeps the
summation to delta. Linear layers, BatchNorm in eval mode, average pooling, sums and
concatenations keep their gradients, which are their multipliers. Nothing of the model or of
the process is changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cnnlens.core.capture import grad_enabled
from cnnlens.core.checks import check_choice, check_float, check_int
from cnnlens.core.explanation import Explanation
from cnnlens.core.registry import register
from cnnlens.core.targets import TargetLike, Targets, resolve_targets
from cnnlens.errors import InputError
from cnnlens.methods.base import Explainer
from cnnlens.methods.engine import (
    REDUCTIONS,
    channels_last_forward,
    input_gradients,
    pixel_explanation,
    reduce_channels,
    rows_targets,
    wants_optimize,
    warn_if_zero,
)

__all__ = ["DeepLift", "DeepLiftMode", "DeepLiftShap", "GradientShap"]

BASELINES = ("zero", "uniform")
EPS = 1e-10

_RELUS = {F.relu, torch.relu, Tensor.relu, torch.relu_, Tensor.relu_}
_ELEMENTWISE = _RELUS | {
    F.elu,
    F.leaky_relu,
    torch.sigmoid,
    Tensor.sigmoid,
    torch.tanh,
    Tensor.tanh,
    F.softplus,
    F.silu,
    F.gelu,
}
_INPLACE = {torch.relu_, Tensor.relu_}


def _multiplier(x: Tensor, y: Tensor, fn: Callable[[Tensor], Tensor], relu: bool) -> Tensor:
    """$\\Delta y/\\Delta x$ of the row pairs (first half: inputs, second: references),
    repeated for both halves; the derivative of ``fn`` where $|\\Delta x| < 10^{-10}$."""
    n = x.shape[0] // 2
    dx = x[:n] - x[n:]
    dy = y[:n] - y[n:]
    if relu:
        deriv = (x > 0).to(x.dtype)
    else:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (deriv,) = torch.autograd.grad(fn(leaf).sum(), leaf)
    small = dx.abs() < EPS
    ratio = dy / torch.where(small, torch.ones_like(dx), dx)
    return torch.where(torch.cat([small, small]), deriv, torch.cat([ratio, ratio]))


class Rescale(torch.autograd.Function):
    """An element-wise nonlinearity whose backward is DeepLIFT's rescale multiplier."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor], relu: bool) -> Tensor:
        y = fn(x)
        ctx.save_for_backward(_multiplier(x, y, fn, relu))
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (m,) = ctx.saved_tensors
        return grad * m, None, None


class RescaleInplace(torch.autograd.Function):
    """:class:`Rescale` for ``relu_`` (the tensor is changed in place, as the model expects)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        before = x.detach().clone()
        x.clamp_(min=0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(_multiplier(before, x.detach(), torch.relu, True))
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (m,) = ctx.saved_tensors
        return grad * m


class MaxPoolRescale(torch.autograd.Function):
    """Max pooling with captum's DeepLIFT multiplier: with $m = \\max(y, y')$, the output
    differences $m - y'$ (input rows) and $y - m$ (reference rows) go back to the positions
    each row's pooling chose, the two are added, and divided by $\\Delta x$ (the plain
    gradient where $|\\Delta x| < 10^{-10}$). Overlapping windows add their shares."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pool: Callable[[Tensor], tuple[Tensor, Tensor]]) -> Tensor:
        y, idx = pool(x)
        n = x.shape[0] // 2
        top = torch.maximum(y[:n], y[n:])
        ctx.delta_out = torch.cat([top - y[n:], y[:n] - top])
        ctx.delta_in = x[:n] - x[n:]
        ctx.shape = x.shape
        ctx.save_for_backward(idx)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (idx,) = ctx.saved_tensors
        shape = ctx.shape

        def unpool(values: Tensor) -> Tensor:
            out = values.new_zeros(*shape[:2], shape[2:].numel())
            out.scatter_add_(2, idx.flatten(2), values.flatten(2))
            return out.view(shape)

        n = shape[0] // 2
        moved = unpool(grad * ctx.delta_out)
        moved = moved[:n] + moved[n:]
        dx = ctx.delta_in
        small = dx.abs() < EPS
        ratio = moved / torch.where(small, torch.ones_like(dx), dx)
        plain = unpool(grad)
        return torch.where(torch.cat([small, small]), plain, torch.cat([ratio, ratio])), None


class DeepLiftMode(TorchFunctionMode):
    """While active (one forward of a ``[x; x']`` batch), nonlinearities backpropagate
    DeepLIFT's rescale multipliers. A tensor whose batch is odd runs as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else kwargs.get("input")
        paired = (
            isinstance(x, Tensor)
            and x.is_floating_point()
            and x.requires_grad
            and x.dim() >= 1
            and x.shape[0] % 2 == 0
        )
        if paired and func in _ELEMENTWISE:
            inplace = func in _INPLACE or bool(kwargs.get("inplace", False))
            relu = func in _RELUS
            if inplace and relu and not x.is_leaf and x._base is None:
                return RescaleInplace.apply(x)
            if not inplace:
                rest = {k: v for k, v in kwargs.items() if k != "input"}
                return Rescale.apply(x, lambda t: func(t, *args[1:], **rest), relu)
        indices = kwargs.get("return_indices", len(args) > 6 and args[6])
        if paired and func is F.max_pool2d and not indices:
            rest = {k: v for k, v in kwargs.items() if k not in ("input", "return_indices")}

            def pool(t: Tensor) -> tuple[Tensor, Tensor]:
                return F.max_pool2d(t, *args[1:6], **rest, return_indices=True)

            return MaxPoolRescale.apply(x, pool)
        return func(*args, **kwargs)


def reference_set(value: Any, x: Tensor, n: int, seed: int, name: str) -> Tensor:
    """References (N, C, H, W) from ``"zero"``, ``"uniform"`` (``n`` images of uniform noise
    over the batch's per-channel range, seeded), a number, or a tensor of shape (C, H, W),
    (N, C, H, W) or broadcastable to one image, e.g. (C, 1, 1)."""
    one = x.shape[1:]
    if isinstance(value, str):
        if value == "zero":
            return torch.zeros((1, *one), device=x.device, dtype=x.dtype)
        gen = torch.Generator(device=x.device).manual_seed(seed)
        u = torch.rand((n, *one), generator=gen, device=x.device, dtype=torch.float32)
        chans = x.transpose(0, 1).flatten(1)
        view = (1, -1) + (1,) * (x.dim() - 2)
        lo, hi = chans.amin(1).view(view), chans.amax(1).view(view)
        return (lo + (hi - lo) * u.to(x.dtype)).to(x.dtype)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((1, *one), float(value), device=x.device, dtype=x.dtype)
    if isinstance(value, Tensor):
        ref = value.to(device=x.device, dtype=x.dtype)
        if ref.dim() == x.dim() and ref.shape[1:] == one:
            return ref
        try:
            return ref.expand(one).unsqueeze(0)
        except RuntimeError:
            pass
    raise InputError(
        f"{name} must be 'zero', 'uniform', a number, or a tensor of shape (N, C, H, W), "
        f"(C, H, W) or (C, 1, 1) for images {tuple(one)}; got "
        f"{tuple(value.shape) if isinstance(value, Tensor) else repr(value)}"
    )


class _ReferenceMethod(Explainer):
    """Options and the batched gradient machinery shared by the reference-based methods."""

    family: ClassVar[str] = "propagation"

    default_baselines: ClassVar[str] = "zero"

    def __init__(
        self,
        model: nn.Module,
        *,
        baselines: str | float | Tensor | None = None,
        n_baselines: int = 8,
        internal_batch_size: int = 32,
        seed: int = 0,
        reduce: str = "sum",
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        self.baselines = self.default_baselines if baselines is None else baselines
        if isinstance(self.baselines, str):
            check_choice("baselines", self.baselines, BASELINES)
        self.n_baselines = check_int("n_baselines", n_baselines)
        self.internal_batch_size = check_int("internal_batch_size", internal_batch_size)
        self.seed = check_int("seed", seed, minimum=0)
        self.reduce = check_choice("reduce", reduce, REDUCTIONS)

    def references(self, x: Tensor) -> Tensor:
        return reference_set(self.baselines, x, self.n_baselines, self.seed, "baselines")

    def _targets(self, x: Tensor, target: TargetLike, topk: int | None) -> tuple[Any, Targets]:
        with torch.no_grad():
            outputs = self.model(x)
        return outputs, resolve_targets(target, outputs, topk, batch=x.shape[0])

    def _gradients(
        self,
        points: Tensor,
        sub: Targets | Callable[[Any], Targets],
        mode: TorchFunctionMode | None,
    ) -> tuple[Tensor, Tensor]:
        """Gradients (n, K, C, H, W) of the target scores at ``points`` and the scores
        (n, K); under ``mode`` when given. ``sub`` may be a function of the outputs."""
        with grad_enabled():
            # inside the caller's inference_mode the points are inference tensors: a copy
            leaf = (points.clone() if points.is_inference() else points.detach()).requires_grad_()
            fed = None
            if mode is None and wants_optimize(self.model, leaf, None):
                # the gradients of GradientSHAP's points on the channels-last fast path
                fed = channels_last_forward(self.model, leaf, requires_grad=True)
            if fed is not None:
                leaf, out = fed
            elif mode is None:
                out = self.model(leaf)
            else:
                with mode:
                    out = self.model(leaf)
            if callable(sub) and not isinstance(sub, Targets):
                sub = sub(out)
            if sub.indices.is_inference():
                sub = Targets(sub.indices.clone(), sub.fn, sub.per_image)
            scores = sub.scores(out)
            why = "; use a perturbation method such as occlusion"
            grads = input_gradients(scores, leaf, self.model, why)
        return grads.float(), scores.detach().float()

    def deeplift_rows(
        self, xs: Tensor, refs: Tensor, sub: Targets
    ) -> tuple[Tensor, Tensor, Tensor]:
        """DeepLIFT of rows ``xs`` against ``refs`` (n, C, H, W) for the rows' targets:
        attributions (n, K, C, H, W), $f(x)$ and $f(x')$ (n, K); in chunks of
        ``internal_batch_size`` pairs."""
        attrs, fx, fr = [], [], []
        step = self.internal_batch_size
        for start in range(0, xs.shape[0], step):
            a, r = xs[start : start + step], refs[start : start + step]
            m = a.shape[0]
            rows = torch.arange(start, start + m, device=sub.indices.device)
            both = rows_targets(sub, torch.cat([rows, rows]))
            grads, scores = self._gradients(torch.cat([a, r]), both, DeepLiftMode())
            attrs.append((a - r).float().unsqueeze(1) * grads[:m])
            fx.append(scores[:m])
            fr.append(scores[m:])
        return torch.cat(attrs), torch.cat(fx), torch.cat(fr)

    def _finish(
        self, attr: Tensor, targets: Targets, outputs: Any, extras: dict[str, Any]
    ) -> Explanation:
        warn_if_zero(
            self.name, attr, "the score does not change between the input and its references"
        )
        maps = reduce_channels(attr, self.reduce)
        return pixel_explanation(attr, maps, targets, outputs, self.name, extras)


@register("deeplift")
class DeepLift(_ReferenceMethod):
    """DeepLIFT with the rescale rule (Shrikumar et al., 2017, arXiv:1704.02685).

    With a reference $x'$, each nonlinearity passes back the multiplier
    $m = \\Delta y / \\Delta x = (f(x) - f(x'))/(x - x')$ instead of its derivative; linear
    layers keep their weights. The chain rule of these multipliers gives

    $$a_i = (x_i - x'_i)\\, m_i, \\qquad \\sum_i a_i = f_c(x) - f_c(x')$$

    (summation to delta, exact for ReLU networks with max pooling; ``extras["delta"]`` is
    the gap $\\sum_i a_i - (f_c(x) - f_c(x'))$ per image). Matches captum's ``DeepLift``
    (multiply_by_inputs=True) on networks of modules; also covers functional ``F.relu``,
    in-place ReLUs and reused modules. Overlapping max-pool windows add their multipliers.

    Args:
        model: the network.
        baselines: the reference: ``"zero"`` (default), ``"uniform"`` (noise, seeded), a
            number, or a tensor of shape (C, H, W), (C, 1, 1), (1, C, H, W) or (B, C, H, W)
            (one per image).
        internal_batch_size: the most (input, reference) pairs per forward.
        seed: seed of the ``"uniform"`` reference.
        reduce: channel reduction of the map (default ``"sum"``, signed).
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.

    Example:
        >>> exp = DeepLift(model, baselines=0.0)(x, target=3)           # doctest: +SKIP
        >>> exp.raw.sum((1, 2, 3)), exp.extras["delta"]
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        baselines: str | float | Tensor = "zero",
        internal_batch_size: int = 32,
        seed: int = 0,
        reduce: str = "sum",
        eval_mode: bool = True,
    ) -> None:
        super().__init__(
            model,
            baselines=baselines,
            n_baselines=1,
            internal_batch_size=internal_batch_size,
            seed=seed,
            reduce=reduce,
            eval_mode=eval_mode,
        )

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        refs = self.references(x)
        if refs.shape[0] not in (1, x.shape[0]):
            raise InputError(
                f"baselines holds {refs.shape[0]} references for {x.shape[0]} images; give one "
                "for all or one per image (deeplift_shap averages over a set)"
            )
        refs = refs.expand_as(x)
        b = x.shape[0]
        if b <= self.internal_batch_size:
            # one paired forward: the targets are read from its first half
            seen: dict[str, Any] = {}

            def resolve(out: Any) -> Targets:
                if not isinstance(out, Tensor):
                    with torch.no_grad():
                        seen["outputs"] = self.model(x)
                else:
                    seen["outputs"] = out[:b].detach()
                seen["targets"] = resolve_targets(target, seen["outputs"], topk, batch=b)
                rows = torch.arange(b, device=seen["targets"].indices.device)
                return rows_targets(seen["targets"], torch.cat([rows, rows]))

            grads, scores = self._gradients(torch.cat([x, refs]), resolve, DeepLiftMode())
            attr = (x - refs).float().unsqueeze(1) * grads[:b]
            outputs, targets, fx, fr = seen["outputs"], seen["targets"], scores[:b], scores[b:]
        else:
            outputs, targets = self._targets(x, target, topk)
            attr, fx, fr = self.deeplift_rows(x, refs, targets)
        delta = attr.flatten(2).sum(2) - (fx - fr)
        return self._finish(attr, targets, outputs, {"delta": delta})


@register("deeplift_shap")
class DeepLiftShap(_ReferenceMethod):
    """DeepLIFT-SHAP (Lundberg & Lee, 2017, arXiv:1705.07874): DeepLIFT averaged over a
    distribution of references $x'_1, \\dots, x'_N$,

    $$a_i = \\frac{1}{N}\\sum_{j=1}^{N} (x_i - x'_{j,i})\\, m_i(x, x'_j), \\qquad
    \\sum_i a_i = f_c(x) - \\frac{1}{N}\\sum_j f_c(x'_j)$$

    as captum's ``DeepLiftShap``. ``extras["delta"]`` is the gap of that sum per image.

    Args:
        model: the network.
        baselines: the references: a tensor (N, C, H, W) (e.g. training images), or
            ``"uniform"`` (default: ``n_baselines`` images of uniform noise over the batch's
            per-channel range, seeded), ``"zero"``, a number.
        n_baselines: the number of ``"uniform"`` references.
        internal_batch_size: the most (input, reference) pairs per forward.
        seed: seed of the ``"uniform"`` references.
        reduce: channel reduction of the map (default ``"sum"``).
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.

    Example:
        >>> DeepLiftShap(model, baselines=train_images[:16])(x).raw      # doctest: +SKIP
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_baselines": 4},
        "tiny": {"n_baselines": 2},
    }
    default_baselines: ClassVar[str] = "uniform"

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        outputs, targets = self._targets(x, target, topk)
        refs = self.references(x)
        b, n = x.shape[0], refs.shape[0]
        rows = torch.arange(b, device=x.device).repeat_interleave(n)
        sub = rows_targets(targets, rows)
        attr, fx, fr = self.deeplift_rows(x[rows], refs.repeat(b, 1, 1, 1), sub)
        attr = attr.view(b, n, *attr.shape[1:]).mean(1)
        gap = fx.view(b, n, -1).mean(1) - fr.view(b, n, -1).mean(1)
        delta = attr.flatten(2).sum(2) - gap
        return self._finish(attr, targets, outputs, {"delta": delta})


@register("gradient_shap")
class GradientShap(_ReferenceMethod):
    """GradientSHAP (Lundberg & Lee, 2017) and expected gradients (Erion et al., 2021,
    arXiv:1906.10670): the expectation, over references $x'$ drawn from a distribution,
    points $\\alpha \\sim U(0, 1)$ on the path and Gaussian noise $\\varepsilon$ of
    ``stdevs``, of

    $$a = (\\tilde x - x') \\odot \\nabla f_c\\big(x' + \\alpha(\\tilde x - x')\\big),
    \\qquad \\tilde x = x + \\varepsilon,$$

    estimated from ``n_samples`` draws per image, as captum's ``GradientShap``. With
    ``stdevs=0`` (the default, as captum's) this is expected gradients (also reachable as
    ``expected_gradients``); $\\sum_i a_i \\to f_c(x) - E[f_c(x')]$ in expectation.

    Args:
        model: the network.
        baselines: the reference distribution: a tensor (N, C, H, W), or ``"uniform"``
            (default; ``n_baselines`` noise images, seeded), ``"zero"``, a number.
        n_samples: draws per image.
        stdevs: standard deviation of the noise added to the input (0: expected gradients).
        n_baselines: the number of ``"uniform"`` references.
        internal_batch_size: the most points per forward.
        seed: seed of every draw (a local generator; the global RNGs are untouched).
        reduce: channel reduction of the map (default ``"sum"``).
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.

    Example:
        >>> GradientShap(model, baselines=train_images, n_samples=50)(x)  # doctest: +SKIP
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_samples": 16},
        "tiny": {"n_samples": 4},
    }
    default_baselines: ClassVar[str] = "uniform"

    def __init__(
        self,
        model: nn.Module,
        *,
        baselines: str | float | Tensor | None = None,
        n_samples: int = 25,
        stdevs: float = 0.0,
        n_baselines: int = 8,
        internal_batch_size: int = 32,
        seed: int = 0,
        reduce: str = "sum",
        eval_mode: bool = True,
    ) -> None:
        super().__init__(
            model,
            baselines=baselines,
            n_baselines=n_baselines,
            internal_batch_size=internal_batch_size,
            seed=seed,
            reduce=reduce,
            eval_mode=eval_mode,
        )
        self.n_samples = check_int("n_samples", n_samples)
        self.stdevs = check_float("stdevs", stdevs, minimum=0.0)

    def draws(self, x: Tensor, refs: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Reference indices (B * n_samples,), path points alpha and input noise (None for
        ``stdevs=0``), drawn from a generator seeded with ``seed``; row ``i * n_samples + s``
        is image i's draw s."""
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        n = x.shape[0] * self.n_samples
        idx = torch.randint(refs.shape[0], (n,), generator=gen, device=x.device)
        alphas = torch.rand(n, generator=gen, device=x.device, dtype=torch.float32)
        if self.stdevs == 0:
            return idx, alphas, None
        noise = torch.randn((n, *x.shape[1:]), generator=gen, device=x.device, dtype=torch.float32)
        return idx, alphas, noise * self.stdevs

    def attribute_draws(
        self,
        x: Tensor,
        targets: Targets,
        refs: Tensor,
        idx: Tensor,
        alphas: Tensor,
        noise: Tensor | None,
    ) -> Tensor:
        """The estimate (B, K, C, H, W) from given draws (row ``i * S + s``: image i)."""
        b = x.shape[0]
        s = idx.shape[0] // b
        rows = torch.arange(b, device=x.device).repeat_interleave(s)
        noisy = x[rows] if noise is None else x[rows] + noise.to(x.dtype)
        base = refs[idx.to(refs.device)]
        total = None
        step = self.internal_batch_size
        for start in range(0, rows.shape[0], step):
            sl = slice(start, start + step)
            a = alphas[sl].to(x.dtype).view(-1, *(1,) * (x.dim() - 1))
            points = base[sl] + a * (noisy[sl] - base[sl])
            grads, _ = self._gradients(points, rows_targets(targets, rows[sl]), None)
            part = (noisy[sl] - base[sl]).float().unsqueeze(1) * grads
            summed = torch.zeros((b, *part.shape[1:]), device=x.device, dtype=torch.float32)
            summed.index_add_(0, rows[sl], part)
            total = summed if total is None else total + summed
        return total / s

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        outputs, targets = self._targets(x, target, topk)
        refs = self.references(x)
        idx, alphas, noise = self.draws(x, refs)
        attr = self.attribute_draws(x, targets, refs, idx, alphas, noise)
        return self._finish(attr, targets, outputs, {})
