"""Layer-wise relevance propagation (Bach et al., 2015; Montavon et al., 2019).

The explained forward runs under :class:`LRPMode`, a torch-function mode that lives for that
one forward on the calling thread (nothing of the model or of the process is changed: no
hook, no replaced module, no patched function). Every call of a convolution or ``F.linear``
becomes a :class:`~cnnlens.methods.lrp_rules.RuleFunction` whose backward applies the rule the
composite assigns to it; a BatchNorm in eval mode applied to the output of a convolution is
merged into that convolution on the fly (canonization: the merged layer's output is the
BatchNorm's, and its rule sees the merged weights); the sum of two activations (a ResNet skip
connection, ``+``, ``+=``, ``torch.add``) splits relevance in proportion to the summands;
average pooling does the same over its window. ReLUs (modules or functional), max pooling,
``torch.cat``, flatten and reshapes pass relevance by their gradient, which for these
element-wise gates and routings is the relevance itself. One backward pass per explained class
then gives the input relevance $R$.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cnnlens.core.capture import grad_enabled
from cnnlens.core.checks import check_choice, check_float
from cnnlens.core.explanation import Explanation
from cnnlens.core.registry import register
from cnnlens.core.targets import TargetLike, resolve_targets
from cnnlens.errors import InputError
from cnnlens.methods.base import Explainer
from cnnlens.methods.engine import (
    REDUCTIONS,
    broadcast_to_input,
    input_gradients,
    pixel_explanation,
    reduce_channels,
    warn_if_zero,
)
from cnnlens.methods.lrp_rules import (
    RULES,
    LayerCall,
    NormPool,
    NormSum,
    NormSumInplace,
    PassThrough,
    RuleFunction,
)

__all__ = ["COMPOSITES", "LRP", "LRPMode"]

#: composite name -> rules for (the first layer, other convolutions, linear layers); the
#: names are zennit's registry names
COMPOSITES: dict[str, dict[str, str]] = {
    "epsilon_plus": {"first": "zplus", "conv": "zplus", "linear": "epsilon"},
    "epsilon_plus_flat": {"first": "flat", "conv": "zplus", "linear": "epsilon"},
    "epsilon_gamma_box": {"first": "zbox", "conv": "gamma", "linear": "epsilon"},
    "epsilon_alpha2_beta1": {"first": "alpha2beta1", "conv": "alpha2beta1", "linear": "epsilon"},
    "epsilon_alpha2_beta1_flat": {"first": "flat", "conv": "alpha2beta1", "linear": "epsilon"},
    "epsilon": {"first": "epsilon", "conv": "epsilon", "linear": "epsilon"},
}

_CONVS = {F.conv1d, F.conv2d, F.conv3d}
_ADDS = {torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__}
_IADDS = {Tensor.add_, Tensor.__iadd__}
_POOLS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool2d, F.adaptive_avg_pool1d}
_SMOOTH = {torch.sigmoid, torch.tanh, F.silu, F.gelu, F.elu, F.leaky_relu, F.hardswish}


def composite_key(name: Any) -> str:
    """``"EpsilonPlusFlat"``, ``"epsilon-plus-flat"`` and ``"epsilon_plus_flat"`` alike."""
    if not isinstance(name, str):
        raise InputError(f"composite must be one of {', '.join(COMPOSITES)}; got {name!r}")
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_")
    return check_choice("composite", snake, COMPOSITES)


def _conv_padding(padding: Any, weight: Tensor, dilation: Any) -> Any:
    """Integer padding for ``"valid"``/``"same"`` (odd kernels), else None (not handled)."""
    if not isinstance(padding, str):
        return padding
    n = weight.dim() - 2
    dil = (dilation,) * n if isinstance(dilation, int) else tuple(dilation)
    if padding == "valid":
        return [0] * n
    span = [d * (k - 1) for d, k in zip(dil, weight.shape[2:])]
    return [s // 2 for s in span] if all(s % 2 == 0 for s in span) else None


class LRPMode(TorchFunctionMode):
    """Runs one forward with the LRP rules of ``rules`` attached to its layer calls.

    Args:
        rules: the rule of the first layer call, of the other convolutions and of the
            linear layers (keys ``"first"``, ``"conv"``, ``"linear"``).
        options: the rules' parameters (``epsilon``, ``gamma``, ``low``, ``high``).
    """

    def __init__(self, rules: dict[str, str], options: dict[str, Any]) -> None:
        super().__init__()
        self.rules, self.options = rules, options
        self.first_done = False
        self.conv_outputs: dict[int, tuple[Tensor, int, Tensor, LayerCall]] = {}
        self.calls = 0

    def _rule(self, kind: str) -> str:
        if not self.first_done:
            self.first_done = True
            return self.rules["first"]
        return self.rules[kind]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONVS:
            return self._conv(func, args, kwargs)
        if func is F.linear:
            return self._linear(func, args, kwargs)
        if func is F.batch_norm:
            return self._batch_norm(func, args, kwargs)
        if func in _ADDS or func in _IADDS:
            return self._add(func, args, kwargs)
        if func in _POOLS:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, Tensor) and x.requires_grad and x.is_floating_point():
                rest = {k: v for k, v in kwargs.items() if k != "input"}
                return NormPool.apply(x, lambda t: func(t, *args[1:], **rest))
        if func in _SMOOTH and not kwargs.get("inplace", False):
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, Tensor) and x.requires_grad and x.is_floating_point():
                rest = {k: v for k, v in kwargs.items() if k != "input"}
                return PassThrough.apply(x, lambda t: func(t, *args[1:], **rest))
        return func(*args, **kwargs)

    def _conv(self, func, args, kwargs):
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        a = dict(zip(names, args)) | kwargs
        x, w = a["input"], a["weight"]
        n = w.dim() - 2
        padding = _conv_padding(a.get("padding", 0), w, a.get("dilation", 1))
        if padding is None or not x.requires_grad or not x.is_floating_point():
            return func(*args, **kwargs)

        def tup(v: Any) -> list[int]:
            return [v] * n if isinstance(v, int) else list(v)

        groups = a.get("groups", 1)
        spec = (tup(a.get("stride", 1)), tup(padding), tup(a.get("dilation", 1)), groups)
        call = LayerCall("conv", w, a.get("bias"), spec, self._rule("conv"), self.options)
        out = RuleFunction.apply(x, call)
        self.conv_outputs[id(out)] = (out, out._version, x, call)
        return out

    def _linear(self, func, args, kwargs):
        a = dict(zip(("input", "weight", "bias"), args)) | kwargs
        x = a["input"]
        if not x.requires_grad or not x.is_floating_point():
            return func(*args, **kwargs)
        rule = self._rule("linear")
        call = LayerCall("linear", a["weight"], a.get("bias"), None, rule, self.options)
        return RuleFunction.apply(x, call)

    def _batch_norm(self, func, args, kwargs):
        names = ("input", "running_mean", "running_var", "weight", "bias", "training")
        a = dict(zip(names, args)) | kwargs
        x = a["input"]
        eps = a.get("eps", args[7] if len(args) > 7 else 1e-5)
        rec = self.conv_outputs.get(id(x))
        merge = (
            rec is not None
            and rec[0] is x
            and rec[1] == x._version
            and not a.get("training", False)
            and a.get("running_mean") is not None
        )
        if not merge:
            if not x.requires_grad:
                return func(*args, **kwargs)
            return PassThrough.apply(x, lambda t: func(t, *args[1:], **kwargs))
        _, _, conv_in, call = rec
        mean, var = a["running_mean"], a["running_var"]
        scale = torch.rsqrt(var + eps)
        if a.get("weight") is not None:
            scale = scale * a["weight"]
        shift = -mean * scale
        if a.get("bias") is not None:
            shift = shift + a["bias"]
        with torch.no_grad():
            out = func(x.detach(), *args[1:], **kwargs)
        w = call.weight * scale.view(-1, *(1,) * (call.weight.dim() - 1))
        b = shift if call.bias is None else call.bias * scale + shift
        merged = LayerCall(call.kind, w, b, call.conv, call.rule, call.options, output=out)
        return RuleFunction.apply(conv_in, merged)

    def _add(self, func, args, kwargs):
        if len(args) == 2 and not kwargs:
            a, b = args
            if (
                isinstance(a, Tensor)
                and isinstance(b, Tensor)
                and a.shape == b.shape
                and a.requires_grad
                and b.requires_grad
                and a.is_floating_point()
            ):
                if func in _IADDS:
                    if a.is_leaf or a._base is not None:
                        return func(*args)
                    return NormSumInplace.apply(a, b)
                return NormSum.apply(a, b)
        return func(*args, **kwargs)


@register("lrp")
class LRP(Explainer):
    """Layer-wise relevance propagation (Bach et al., 2015, doi:10.1371/journal.pone.0130140;
    Montavon et al., 2019, "Layer-wise relevance propagation: an overview").

    The explained score $f_c(x)$ is the relevance at the output; each layer redistributes
    the relevance of its outputs over its inputs by its rule (see
    :mod:`cnnlens.methods.lrp_rules`), e.g. the epsilon rule

    $$R_i = \\sum_j \\frac{x_i w_{ij}}{z_j + \\varepsilon\\,\\mathrm{sign}(z_j)} R_j,\\qquad
    z_j = \\sum_i x_i w_{ij} + b_j,$$

    so that $\\sum_i R_i \\approx f_c(x)$ (conservation; the bias terms and stabilizers take
    the rest, reported per image in ``extras["delta"]`` $= \\sum_i R_i - f_c(x)$).

    Composites assign the rules by layer type, as zennit's of the same names:
    ``epsilon_plus_flat`` (default: flat for the first layer, z-plus for convolutions, epsilon
    for linear layers; needs no input bounds), ``epsilon_plus``, ``epsilon_gamma_box`` (z-box
    with ``low``/``high`` for the first layer, gamma for convolutions),
    ``epsilon_alpha2_beta1``, ``epsilon_alpha2_beta1_flat``, and ``epsilon`` everywhere. The
    first layer is the first convolution or linear layer the forward calls. ``rules``
    overrides single entries, e.g. ``{"first": "wsquare"}``.

    Args:
        model: the network; it is never changed (BatchNorm is merged on the fly, in the call).
        composite: a composite name (zennit's, snake case or CamelCase).
        rules: overrides of the composite's rules: keys ``"first"``, ``"conv"``, ``"linear"``,
            values of :data:`~cnnlens.methods.lrp_rules.RULES`.
        epsilon: the epsilon rule's stabilizer (1e-6 as zennit's composites).
        gamma: the gamma rule's weight on the positive (or negative) weights (0.25).
        low, high: the z-box bounds of the input: numbers or tensors broadcastable to x,
            e.g. (C, 1, 1) per channel; default: the batch's per-channel min and max.
        reduce: channel reduction of the map: ``"sum"`` (default, signed), ``"abs"``,
            ``"absmax"``, ``"square"``.
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.

    Example:
        >>> exp = LRP(model, composite="epsilon_gamma_box", low=-3.0, high=3.0)(x)  # doctest: +SKIP
        >>> exp.raw.sum((1, 2, 3)), exp.extras["delta"]      # relevance sum and its gap
    """

    family: ClassVar[str] = "propagation"
    keras_refusal: ClassVar[str] = (
        "its rules attach to torch convolution and F.linear calls, and a Keras Dense layer "
        "runs as a matrix product no rule covers; use deeplift, integrated_gradients or gradcam"
    )

    def __init__(
        self,
        model: nn.Module,
        *,
        composite: str = "epsilon_plus_flat",
        rules: dict[str, str] | None = None,
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        low: float | Tensor | None = None,
        high: float | Tensor | None = None,
        reduce: str = "sum",
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        self.composite = composite_key(composite)
        self.rules = dict(COMPOSITES[self.composite])
        if rules is not None:
            if not isinstance(rules, dict):
                raise InputError(f"rules must be a dict such as {{'first': 'flat'}}, got {rules!r}")
            for key, rule in rules.items():
                check_choice("rules key", key, ("first", "conv", "linear"))
                self.rules[key] = check_choice(f"rules[{key!r}]", rule, RULES)
        self.epsilon = check_float("epsilon", epsilon, minimum=0.0)
        self.gamma = check_float("gamma", gamma, minimum=0.0)
        for name, value in (("low", low), ("high", high)):
            if value is not None and not isinstance(value, (int, float, Tensor)):
                raise InputError(f"{name} must be a number, a tensor or None, got {value!r}")
        self.low, self.high = low, high
        self.reduce = check_choice("reduce", reduce, REDUCTIONS)

    def _bounds(self, x: Tensor) -> dict[str, Tensor]:
        if "zbox" not in self.rules.values():
            return {}
        per_channel = x.transpose(0, 1).flatten(1)
        view = (1, -1) + (1,) * (x.dim() - 2)
        low = per_channel.amin(1).view(view) if self.low is None else self.low
        high = per_channel.amax(1).view(view) if self.high is None else self.high
        out = {"low": broadcast_to_input("low", low, x)}
        out["high"] = broadcast_to_input("high", high, x)
        if bool((out["low"] > out["high"]).any()):
            raise InputError("low must not exceed high (the z-box bounds of the input)")
        return out

    def relevance(
        self, x: Tensor, target: TargetLike, topk: int | None
    ) -> tuple[Any, Any, Tensor, Tensor]:
        """``(outputs, targets, relevance (B, K, C, H, W), scores (B, K))`` of one forward
        and one rule backward per explained class."""
        options = {"epsilon": self.epsilon, "gamma": self.gamma, **self._bounds(x)}
        with grad_enabled():
            leaf = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
            with LRPMode(self.rules, options):
                outputs = self.model(leaf)
            targets = resolve_targets(target, outputs, topk, batch=x.shape[0])
            scores = targets.scores(outputs)
            why = "; LRP needs a differentiable forward"
            rel = input_gradients(scores, leaf, self.model, why, seeded=True)
        return outputs, targets, rel.float(), scores.detach().float()

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        outputs, targets, attr, scores = self.relevance(x, target, topk)
        attr = torch.nan_to_num(attr, nan=0.0, posinf=0.0, neginf=0.0)
        delta = attr.flatten(2).sum(2) - scores
        warn_if_zero(self.name, attr, "the explained score is zero or does not depend on the input")
        maps = reduce_channels(attr, self.reduce)
        extras = {"delta": delta, "composite": self.composite}
        return pixel_explanation(attr, maps, targets, outputs, self.name, extras)
