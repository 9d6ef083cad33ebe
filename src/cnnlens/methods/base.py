"""The bases every explanation method stands on.

A method is a small class: :class:`Explainer` handles input checks, device and dtype, the
model's state and the result; :class:`BaseCAM` adds layer choice, capture, targets, gradients
to the layer activation only, ReLU, upsampling, normalization and multi-layer fusion, so a
CAM method only says how it turns activations (and gradients, handed with a
:class:`CAMContext`) into a map. :class:`GradientMethod` is the base of the methods that
attribute through input gradients, and what SmoothGrad wraps. The machinery shared by the
families (the batched forward, the fast path, targets of rows) is in
:mod:`cnnlens.methods.engine`; map post-processing in :mod:`cnnlens.core.maps`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import capture, frozen, grad_enabled
from cnnlens.core.checks import check_flag
from cnnlens.core.explanation import Explanation
from cnnlens.core.layers import LayersLike, find_spatial_layer, resolve_layers
from cnnlens.core.maps import normalize_maps, upsample
from cnnlens.core.targets import TargetLike, Targets, resolve_targets
from cnnlens.errors import InputError, LayerNotFoundError, ModelError
from cnnlens.methods.engine import (
    BatchedForward,
    channels_last_forward,
    check_finite_outputs,
    check_finite_result,
    check_reduce,
    explain_runtime_error,
    pixel_explanation,
    prepare_input,
    reduce_channels,
    rows_targets,
    wants_optimize,
)

__all__ = [
    "BaseCAM",
    "CAMContext",
    "Explainer",
    "GradientMethod",
    "normalize_maps",
    "upsample",
]

log = logging.getLogger("cnnlens")


class Explainer:
    """Base of every explanation method.

    Subclasses implement :meth:`explain_batch`. Calling the instance checks the input,
    freezes the model (eval mode, parameters not requiring grad) and restores it afterwards.

    Args:
        model: any ``nn.Module``; it is never changed.
        eval_mode: explain the model in eval mode (dropout off, BatchNorm running stats), as
            deployed; the caller's train/eval flags are restored either way.
    """

    name: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = False
    #: Named cost presets of the method's options: ``"light"`` keeps a batch of small
    #: images to seconds on a CPU (``cnnlens assess --light``, the demo's sanity checks),
    #: ``"tiny"`` is the cheapest setting that still exercises every code path (tests,
    #: ``cnnlens demo --quick``). Read them with :func:`cnnlens.core.registry.preset_options`.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def takes_layer(cls, options: dict[str, Any]) -> bool:
        """Whether ``layer=`` means something to this method built with ``options``."""
        return cls.uses_layer

    def __init__(self, model: nn.Module, *, eval_mode: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.eval_mode = eval_mode

    def __call__(
        self, x: Tensor, target: TargetLike = None, *, topk: int | None = None
    ) -> Explanation:
        xb = prepare_input(x, self.model)
        version = None if x.is_inference() else x._version
        try:
            with frozen(self.model, eval_mode=self.eval_mode):
                exp = check_finite_result(self.model, self.explain_batch(xb, target, topk))
        except RuntimeError as err:
            said = explain_runtime_error(err, xb)
            if said is None:
                raise
            raise said from err
        if version is not None and x._version != version:
            raise ModelError(
                "the model modifies its input in place (x was changed by the call); copy it "
                "first in forward (x = x.clone())"
            )
        return exp.to(x.device) if exp.maps.device != x.device else exp

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__})"


@dataclasses.dataclass(frozen=True)
class CAMContext:
    """What :meth:`BaseCAM.cam` may need beyond the activations and gradients of a layer.

    Attributes:
        x: the explained batch (B, C, H, W), as fed to the model.
        outputs: the model's outputs for ``x`` (with the graph when gradients are taken).
        targets: the resolved targets, K per image.
        capture: the hooks of the forward (``capture.inputs`` for the recorded inputs).
        k: which of the K targets the map is for.
        layer: the dotted name of the layer the activations come from.
    """

    x: Tensor
    outputs: Any
    targets: Targets
    capture: capture
    k: int = 0
    layer: str = ""


class BaseCAM(Explainer):
    """Base of the class-activation-map methods.

    Subclasses set :attr:`needs_grad` and implement :meth:`cam` (or only
    :meth:`channel_weights` for a weighted sum of channels). Maps are ReLU-ed, upsampled
    bilinearly to the input size and min-max normalized per map; with several layers, the
    per-layer maps are averaged and normalized again.

    Args:
        model: the network.
        layer: None (the last spatial layer, found by a forward pass), a dotted name, a
            module, or a list of those (maps fused; each layer's maps kept in
            ``Explanation.per_layer``).
        optimize: feed the batch in the channels-last memory format, which oneDNN runs
            faster on the CPU (see docs/benchmarks.md; maps agree to float32 rounding; a model
            whose forward refuses that layout is run in the default one). None: for float32
            inputs on the CPU of a model with 2-D convolutions; False: the input as given.
        eval_mode: see :class:`Explainer`.
    """

    uses_layer: ClassVar[bool] = True
    needs_grad: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ):
        super().__init__(model, eval_mode=eval_mode)
        self.layer = layer
        self._resolved = None if layer is None else resolve_layers(model, layer)
        self.optimize = check_flag("optimize", optimize)

    def _forward(self, x: Tensor) -> Any:
        """The model's forward of the explained batch, channels-last when :attr:`optimize`
        asks for it (see the class); the default layout when the model refuses that one."""
        if wants_optimize(self.model, x, self.optimize):
            got = channels_last_forward(self.model, x)
            if got is not None:
                return got[1]
        return self.model(x)

    def channel_weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        """Per-channel weights (B, C, 1, 1) from activations and gradients (B, C, h, w)."""
        raise NotImplementedError

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        """The unnormalized map (B, h, w) of one layer for one target."""
        return (self.channel_weights(acts, grads) * acts).sum(dim=1)

    def layers_for(self, x: Tensor) -> list[tuple[str, nn.Module]]:
        if self._resolved is not None:
            return self._resolved
        with torch.no_grad():
            return resolve_layers(self.model, find_spatial_layer(self.model, x[:1]))

    def extra_modules(self) -> list[tuple[str, nn.Module]]:
        """Further modules to capture in the same forward (e.g. CAM's linear head)."""
        return []

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        layers = self.layers_for(x)
        names = [n for n, _ in layers]
        extra = self.extra_modules()
        grad_ctx = grad_enabled() if self.needs_grad else torch.no_grad()
        hooks = capture([*layers, *extra], track_grad=self.needs_grad, record_inputs=bool(extra))
        with grad_ctx, hooks as cap:
            outputs = self._forward(x)
            check_finite_outputs(self.model, outputs)
            targets = resolve_targets(target, outputs, topk, batch=x.shape[0])
            acts = []
            for name in names:
                if name not in cap.outputs:
                    raise LayerNotFoundError(
                        f"layer {name!r} did not return a tensor during forward; "
                        "choose a layer that outputs a (B, C, h, w) map"
                    )
                acts.append(cap.outputs[name])
            for name, act in zip(names, acts):
                if act.dim() != 4:
                    raise LayerNotFoundError(
                        f"layer {name!r} outputs shape {tuple(act.shape)}, not a (B, C, h, w) "
                        "map; choose a convolutional layer"
                    )
            ctx = CAMContext(x=x, outputs=outputs, targets=targets, capture=cap)
            raws = self._layer_maps(acts, ctx, names)
        scores = outputs.detach() if isinstance(outputs, Tensor) else outputs
        return self._finish(raws, names, targets, scores, x)

    def _layer_maps(self, acts: list[Tensor], ctx: CAMContext, names: list[str]) -> list[Tensor]:
        """Unnormalized maps (B, K, h, w) per layer."""
        per_layer: list[list[Tensor]] = [[] for _ in acts]
        acts32 = [a.detach().float() for a in acts]
        targets = ctx.targets
        scores = targets.scores(ctx.outputs) if self.needs_grad else None
        for k in range(targets.k):
            grads: Sequence[Tensor | None] = [None] * len(acts)
            if scores is not None:
                grads = torch.autograd.grad(
                    scores[:, k].sum(), acts, retain_graph=k < targets.k - 1, allow_unused=True
                )
                for name, g in zip(names, grads):
                    if g is None:
                        raise LayerNotFoundError(
                            f"the target score does not depend on layer {name!r}; "
                            "choose a layer that runs before the output"
                        )
                grads = [g.float() for g in grads]
            for i, (a, g) in enumerate(zip(acts32, grads)):
                here = dataclasses.replace(ctx, k=k, layer=names[i])
                per_layer[i].append(self.cam(a, g, here))
        return [torch.stack(maps, dim=1) for maps in per_layer]

    def _finish(
        self, raws: list[Tensor], names: list[str], targets: Targets, scores: Any, x: Tensor
    ) -> Explanation:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        maps = [normalize_maps(upsample(F.relu(r), size)) for r in raws]
        fused = maps[0] if len(maps) == 1 else normalize_maps(torch.stack(maps).mean(0))

        def shape(t: Tensor) -> Tensor:
            return t[:, 0] if targets.per_image else t

        per_layer = {n: shape(m) for n, m in zip(names, maps)} if len(names) > 1 else {}
        extras = {"raw_per_layer": {n: shape(r) for n, r in zip(names, raws)}} if per_layer else {}
        return Explanation(
            maps=shape(fused),
            raw=shape(raws[0]),
            targets=targets.public(),
            scores=scores,
            method=self.name,
            layer="+".join(names),
            per_layer=per_layer,
            extras=extras,
        )


class GradientMethod(Explainer):
    """Base of the methods that attribute through gradients with respect to the input.

    A subclass says how gradients become attributions (:meth:`combine`), may change the
    backward rule of the forward pass (:meth:`rule`), or overrides :meth:`attribute` for a
    path of inputs (integrated gradients). ``raw`` is the signed attribution
    (B[, K], C, H, W); the map reduces its channels with ``reduce`` (see
    :func:`~cnnlens.methods.engine.reduce_channels`).

    Args:
        model: the network; it is never changed.
        reduce: how channels become one map: ``"absmax"``, ``"square"``, ``"abs"`` or
            ``"sum"``; default per method.
        optimize: ``True`` feeds float32 CPU inputs in the channels-last memory format, which
            oneDNN runs faster forward and backward (docs/benchmarks.md); the gradients then
            agree with the default layout's to float32 rounding, except where that rounding
            moves a max-pool's choice. ``None``/``False`` (the default): the input as given,
            so the results match captum's to 1e-4.
        eval_mode: see :class:`Explainer`.
    """

    default_reduce: ClassVar[str] = "absmax"

    def __init__(
        self,
        model: nn.Module,
        *,
        reduce: str | None = None,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ):
        super().__init__(model, eval_mode=eval_mode)
        self.reduce = check_reduce(reduce, self.default_reduce)
        self.optimize = check_flag("optimize", optimize)

    # -- what a subclass says -----------------------------------------------------------------
    def combine(self, x: Tensor, grads: Tensor) -> Tensor:
        """Attributions (n, K, C, H, W) from the inputs (n, C, H, W) and their gradients."""
        return grads

    def rule(self) -> AbstractContextManager[Any]:
        """The context of the forward pass (e.g. a modified ReLU backward); none here."""
        return nullcontext()

    def attribute(
        self, x: Tensor, targets: Targets, rows: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Attributions (n, K, C, H, W) of a batch of rows, row ``i`` a variant of image
        ``rows[i]`` explained for ``targets`` of that image (used by SmoothGrad)."""
        _, _, grads = self.forward_grads(x, rows_targets(targets, rows))
        return self.combine(x, grads), {}

    # -- engine --------------------------------------------------------------------------------
    def forward_grads(
        self,
        x: Tensor,
        targets: Targets | None,
        target: TargetLike = None,
        topk: int | None = None,
        forward: BatchedForward | None = None,
    ) -> tuple[Any, Targets, Tensor]:
        """One forward pass and the gradients (n, K, C, H, W) of the K target scores.

        ``targets`` None resolves ``target``/``topk`` on this forward's outputs.
        """
        with grad_enabled():
            with self.rule():
                if forward is None:
                    leaf, outputs = self._forward(x)
                    check_finite_outputs(self.model, outputs)
                else:
                    leaf, outputs = forward.forward(x, requires_grad=True)
            if targets is None:
                targets = resolve_targets(target, outputs, topk, batch=x.shape[0])
            scores = targets.scores(outputs)
            if not scores.requires_grad:
                raise ModelError(
                    f"the target scores of {type(self.model).__name__} do not depend "
                    "differentiably on the input (the output is detached or computed without "
                    "autograd); use a perturbation method such as occlusion or rise"
                )
            grads = []
            for k in range(targets.k):
                (g,) = torch.autograd.grad(
                    scores[:, k].sum(), leaf, retain_graph=k < targets.k - 1, allow_unused=True
                )
                grads.append(torch.zeros_like(leaf) if g is None else g)
        return outputs, targets, torch.stack(grads, dim=1).contiguous()

    def _forward(self, x: Tensor) -> tuple[Tensor, Any]:
        """``(leaf, outputs)`` of one forward with the input as a leaf requiring grad; in
        channels-last only when ``optimize=True`` and the model accepts that layout."""
        if self.optimize and wants_optimize(self.model, x, None):
            got = channels_last_forward(self.model, x, requires_grad=True)
            if got is not None:
                return got
        leaf = x.detach().requires_grad_(True)
        return leaf, self.model(leaf)

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        outputs, targets, grads = self.forward_grads(x, None, target, topk)
        attr = self.combine(x, grads).float()
        maps = reduce_channels(attr, self.reduce)
        return pixel_explanation(attr, maps, targets, outputs, self.name)
