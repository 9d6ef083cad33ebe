"""The rules of layer-wise relevance propagation, as autograd Functions for one call.

Each linear layer call (a convolution or ``F.linear``) of the explained forward becomes a
:class:`LayerCall` and runs through :class:`RuleFunction`: its forward is the layer's own
output, its backward maps the relevance $R_j$ arriving at the output to the relevance of the
input by the layer's rule (Bach et al., 2015; Montavon et al., 2019). With $z_j$ the
(modified) output, $s_j = R_j / \\operatorname{stab}(z_j)$ and $c = W^\\top s$ the transposed
layer applied to $s$:

- ``epsilon``: $R_i = x_i c_i$ with $z = Wx + b$ (LRP-0 for $\\varepsilon = 0$).
- ``zplus``: $z = W^+x^+ + b^+ + W^-x^-$, $R_i = x^+_i (W^{+\\top}s)_i + x^-_i (W^{-\\top}s)_i$.
- ``alpha2beta1`` / ``alpha1beta0``: $\\alpha$ times the positive part (as ``zplus``) minus
  $\\beta$ times the negative part ($z^- = W^-x^+ + b^- + W^+x^-$).
- ``gamma``: as ``zplus`` with $W + \\gamma W^+$ where the output is positive and
  $W + \\gamma W^-$ where it is negative (the generalized rule of zennit for signed inputs).
- ``zbox`` (input layer, bounds $l \\le x \\le h$): $z = Wx + b - (W^+l + b^+) - (W^-h + b^-)$,
  $R_i = x_i (W^\\top s)_i - l_i (W^{+\\top} s)_i - h_i (W^{-\\top} s)_i$.
- ``flat``: all weights one, no bias, input one: $R_i = (\\mathbf{1}^\\top s)_i$.
- ``wsquare``: weights and bias squared, input one: $R_i = (W^{2\\top} s)_i$.

The stabilizer is zennit's: $\\operatorname{stab}(z) = z + \\varepsilon\\,\\sigma(z)$ with
$\\sigma(z) = 1$ for $z \\ge 0$ and $-1$ otherwise. Average pooling and the sum of a skip
connection use the normalized rule
$R_i = x_i\\,\\partial z/\\partial x_i \\cdot R/\\operatorname{stab}(z)$ (relevance split in
proportion to the contributions); a BatchNorm that follows no convolution passes relevance
through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

RULES = ("epsilon", "zplus", "alpha2beta1", "alpha1beta0", "gamma", "zbox", "flat", "wsquare")

#: zennit's stabilizer of the rules other than epsilon
STABILIZER = 1e-6


def stabilize(z: Tensor, eps: float) -> Tensor:
    """$z + \\varepsilon\\,\\mathrm{sign}(z)$, with sign 1 at zero (two allocations: large
    temporaries are costly where the allocator maps fresh pages)."""
    return (z >= 0).to(z.dtype).mul_(2 * eps).sub_(eps).add_(z)


class LayerCall:
    """One call of a convolution or linear layer: its input's transposed map, its parameters,
    its rule and the options of the rule.

    Args:
        kind: ``"conv"`` or ``"linear"``.
        weight, bias: the layer's (possibly BatchNorm-merged) parameters.
        conv: ``(stride, padding, dilation, groups)`` of a convolution.
        rule: a name of :data:`RULES`.
        options: ``epsilon``, ``gamma``, ``low`` and ``high`` (tensors shaped like the input).
        output: the true output when already computed (a merged BatchNorm), else None.
    """

    def __init__(
        self,
        kind: str,
        weight: Tensor,
        bias: Tensor | None,
        conv: tuple[Any, ...] | None,
        rule: str,
        options: dict[str, Any],
        output: Tensor | None = None,
    ) -> None:
        self.kind, self.weight, self.bias, self.conv = kind, weight, bias, conv
        self.rule, self.options, self.output = rule, options, output
        self.z: Tensor | None = None  # the true output, kept for the rules that divide by it
        self._cache: dict[str, Tensor | None] = {}

    # -- the layer and its transpose -------------------------------------------------------
    def f(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.kind == "linear":
            return F.linear(x, w, b)
        stride, padding, dilation, groups = self.conv
        return torch.convolution(x, w, b, stride, padding, dilation, False, [0], groups)

    def back(self, s: Tensor, w: Tensor, like: Tensor) -> Tensor:
        """$W^\\top s$: the gradient of $\\langle s, f(x)\\rangle$ for an input shaped ``like``."""
        if self.kind == "linear":
            return s @ w
        stride, padding, dilation, groups = self.conv
        n = w.dim() - 2
        grad, _, _ = torch.ops.aten.convolution_backward(
            s.contiguous(), like, w, None, stride, padding, dilation, False, [0] * n, groups,
            [True, False, False],
        )  # fmt: skip
        return grad

    def param(self, key: str) -> Tensor | None:
        """The weight or bias modified as ``key`` says (cached for the call)."""
        if key not in self._cache:
            name, how = key.split(":")
            p = self.weight if name == "w" else self.bias
            if p is None:
                out = None
            elif how == "pos":
                out = p.clamp(min=0)
            elif how == "neg":
                out = p.clamp(max=0)
            elif how == "gpos":
                out = p + self.options["gamma"] * p.clamp(min=0)
            elif how == "gneg":
                out = p + self.options["gamma"] * p.clamp(max=0)
            elif how == "sq":
                out = p * p
            else:  # "one"
                out = torch.ones_like(p)
            self._cache[key] = out
        return self._cache[key]

    # -- the rules ----------------------------------------------------------------------------
    def relevance(self, x: Tensor, r: Tensor) -> Tensor:
        return _RULE_FNS[self.rule](self, x, r)


def _epsilon(call: LayerCall, x: Tensor, r: Tensor) -> Tensor:
    s = r / stabilize(call.z, call.options["epsilon"])
    return call.back(s, call.weight, x).mul_(x)


def _two_sided(call: LayerCall, x: Tensor, r: Tensor, alpha: float, beta: float) -> Tensor:
    """The positive part (``zplus``) times alpha minus the negative part times beta. For a
    non-negative input (after a ReLU) the terms of $x^-$ vanish and are skipped."""
    signed = bool((x < 0).any())
    xp = x.clamp(min=0) if signed else x
    xn = x.clamp(max=0) if signed else None
    out = 0.0
    for coef, (k1, kb, k2) in (
        (alpha, ("w:pos", "b:pos", "w:neg")),
        (-beta, ("w:neg", "b:neg", "w:pos")),
    ):
        if coef == 0:
            continue
        w1 = call.param(k1)
        z = call.f(xp, w1, call.param(kb))
        if xn is not None:
            z = z + call.f(xn, call.param(k2), None)
        s = r / stabilize(z, STABILIZER)
        part = call.back(s, w1, x).mul_(xp)
        if xn is not None:
            part = part.add_(call.back(s, call.param(k2), x).mul_(xn))
        if coef != 1.0:
            part = part.mul_(coef)
        out = part if isinstance(out, float) else out.add_(part)
    return out


def _gamma(call: LayerCall, x: Tensor, r: Tensor) -> Tensor:
    wp, wn = call.param("w:gpos"), call.param("w:gneg")
    signed = bool((x < 0).any())
    if signed:
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        bp, bn = call.param("b:gpos"), call.param("b:gneg")
        z_pos = call.f(xp, wp, bp) + call.f(xn, wn, None)
        z_neg = call.f(xp, wn, bn) + call.f(xn, wp, None)
    else:
        # x >= 0 (after a ReLU): with Q = W+x + b+ (one modified forward) and the true
        # output z = Wx + b, both modified outputs follow without a second forward:
        # z+ = z + gamma Q and z- = z + gamma (z - Q)
        xp = x
        q = call.f(x, call.param("w:pos"), call.param("b:pos"))
        gamma = call.options["gamma"]
        z_pos = q.mul(gamma).add_(call.z)
        z_neg = call.z.sub(q).mul_(gamma).add_(call.z)
    s_pos = r * (call.z > 0).to(r.dtype) / stabilize(z_pos, STABILIZER)
    s_neg = r * (call.z < 0).to(r.dtype) / stabilize(z_neg, STABILIZER)
    out = xp * (call.back(s_pos, wp, x) + call.back(s_neg, wn, x))
    if signed:
        out = out + xn * (call.back(s_pos, wn, x) + call.back(s_neg, wp, x))
    return out


def _zbox(call: LayerCall, x: Tensor, r: Tensor) -> Tensor:
    low = call.options["low"].to(x.dtype).expand_as(x)
    high = call.options["high"].to(x.dtype).expand_as(x)
    wp, wn = call.param("w:pos"), call.param("w:neg")
    z = call.z - call.f(low, wp, call.param("b:pos")) - call.f(high, wn, call.param("b:neg"))
    s = r / stabilize(z, STABILIZER)
    return x * call.back(s, call.weight, x) - low * call.back(s, wp, x) - high * call.back(s, wn, x)


def _flat(call: LayerCall, x: Tensor, r: Tensor) -> Tensor:
    ones = torch.ones_like(x)
    w = call.param("w:one")
    s = r / stabilize(call.f(ones, w, None), STABILIZER)
    return call.back(s, w, x)


def _wsquare(call: LayerCall, x: Tensor, r: Tensor) -> Tensor:
    ones = torch.ones_like(x)
    w = call.param("w:sq")
    s = r / stabilize(call.f(ones, w, call.param("b:sq")), STABILIZER)
    return call.back(s, w, x)


_RULE_FNS: dict[str, Callable[[LayerCall, Tensor, Tensor], Tensor]] = {
    "epsilon": _epsilon,
    "zplus": lambda c, x, r: _two_sided(c, x, r, 1.0, 0.0),
    "alpha1beta0": lambda c, x, r: _two_sided(c, x, r, 1.0, 0.0),
    "alpha2beta1": lambda c, x, r: _two_sided(c, x, r, 2.0, 1.0),
    "gamma": _gamma,
    "zbox": _zbox,
    "flat": _flat,
    "wsquare": _wsquare,
}

# the rules that divide by the layer's true output
_NEEDS_Z = {"epsilon", "gamma", "zbox"}


class RuleFunction(torch.autograd.Function):
    """Forward: the layer's output; backward: the relevance of its input by its rule."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, call: LayerCall) -> Tensor:
        out = call.output if call.output is not None else call.f(x, call.weight, call.bias)
        call.output = None  # held by the graph through ctx.call: keeping it would be a cycle
        if call.rule in _NEEDS_Z:
            # a copy: an in-place ReLU downstream may overwrite the returned tensor
            call.z = out.detach().clone()
        ctx.call = call
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx: Any, r: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return ctx.call.relevance(x, r), None


class NormPool(torch.autograd.Function):
    """An average pooling whose backward splits relevance in proportion to the inputs."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pool: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.pool = pool
        ctx.save_for_backward(x)
        return pool(x)

    @staticmethod
    def backward(ctx: Any, r: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            z = ctx.pool(leaf)
            (g,) = torch.autograd.grad(z, leaf, r / stabilize(z.detach(), STABILIZER))
        return x * g, None


class NormSum(torch.autograd.Function):
    """``a + b`` (a skip connection) whose backward splits relevance in proportion to the
    summands: $R_a = a\\,R / \\operatorname{stab}(a + b)$."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx: Any, r: Tensor) -> tuple[Tensor, Tensor]:
        a, b = ctx.saved_tensors
        s = r / stabilize(a + b, STABILIZER)
        return a * s, b * s


class NormSumInplace(torch.autograd.Function):
    """``a += b`` with the backward of :class:`NormSum` (``a`` is changed in place, as the
    model's code expects)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.a = a.detach().clone()
        ctx.save_for_backward(b)
        a.add_(b)
        ctx.mark_dirty(a)
        return a

    @staticmethod
    def backward(ctx: Any, r: Tensor) -> tuple[Tensor, Tensor]:
        (b,) = ctx.saved_tensors
        a = ctx.a
        s = r / stabilize(a + b, STABILIZER)
        return a * s, b * s


class PassThrough(torch.autograd.Function):
    """An element-wise layer (an unmerged BatchNorm, a smooth activation) whose backward
    passes the relevance on unchanged."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx: Any, r: Tensor) -> tuple[Tensor, None]:
        return r, None
