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
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import capture, frozen, grad_enabled
from cnnlens.core.checks import check_flag
from cnnlens.core.explanation import Explanation
from cnnlens.core.keras import channels_first, is_keras, keras_model
from cnnlens.core.layers import LayersLike, find_spatial_layer, resolve_layers
from cnnlens.core.layouts import Layout, decide_layout, parse_layout
from cnnlens.core.maps import normalize_maps, upsample
from cnnlens.core.outputs import OutputLike, detach_outputs, select_output
from cnnlens.core.targets import TargetLike, Targets, WithOutput, resolve_targets
from cnnlens.errors import InputError, LayerNotFoundError, ModelError
from cnnlens.methods.engine import (
    BatchedForward,
    channels_last_forward,
    check_finite_outputs,
    check_finite_result,
    check_reduce,
    explain_runtime_error,
    input_gradients,
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
    #: The family the method belongs to (:data:`cnnlens.core.registry.FAMILIES`): lists,
    #: reports and the demo show methods family by family.
    family: ClassVar[str] = "other"
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
        #: the user's images are (B, H, W, C): a Keras model, run in its channels-first view
        #: (:mod:`cnnlens.core.keras`; the batch is made (B, C, H, W) on entry)
        self.channels_last_input = is_keras(model)
        if self.channels_last_input and self.keras_refusal:
            raise ModelError(
                f"{self.name or type(self).__name__} does not take Keras models: "
                f"{self.keras_refusal}"
            )
        self.model = channels_first(model)
        self.eval_mode = eval_mode

    #: Why the method cannot explain a Keras model ("" when it can: most methods do, through
    #: the channels-first view of :mod:`cnnlens.core.keras`).
    keras_refusal: ClassVar[str] = ""

    def __call__(
        self,
        x: Tensor,
        target: TargetLike = None,
        *,
        topk: int | None = None,
        output: OutputLike = None,
    ) -> Explanation:
        """Explain ``x`` for ``target``; ``output`` chooses the scores tensor of the model's
        output (see :mod:`cnnlens.core.outputs`; recorded in ``Explanation.output``)."""
        xb = prepare_input(x, self.model, channels_last=self.channels_last_input)
        # a target object may bind to the model for the call (cnnlens.targets)
        bind = getattr(target, "bind", None)
        bound = bind(self.model) if callable(bind) else nullcontext()
        if output is not None:
            target = WithOutput(target, output)
        version = None if x.is_inference() else x._version
        try:
            with frozen(self.model, eval_mode=self.eval_mode), bound:
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
        layout: how that layer's output was read as (B, C, h, w) maps
            (:class:`~cnnlens.core.layouts.Layout`; ``layout.write`` puts maps back).
    """

    x: Tensor
    outputs: Any
    targets: Targets
    capture: capture
    k: int = 0
    layer: str = ""
    layout: Layout | None = None


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
        layout: how the layer's output is laid out: ``"nchw"``, ``"nhwc"``, ``"tokens"``
            (``"tokens:p"`` with p class/register tokens) or ``"ncthw"`` (video); None reads
            it from the shapes and raises when that is ambiguous
            (:func:`~cnnlens.core.layouts.decide_layout`).
    """

    uses_layer: ClassVar[bool] = True
    family: ClassVar[str] = "CAM"
    needs_grad: ClassVar[bool] = True
    #: turns the per-channel contributions (B, C, h, w) into a map (B, h, w): their sum
    #: (``eigen_smooth``, see :mod:`cnnlens.methods.cam_smoothing`, swaps in their first
    #: principal component)
    reduce_channels: Callable[[Tensor], Tensor] = staticmethod(lambda t: t.sum(dim=1))

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        optimize: bool | None = None,
        eval_mode: bool = True,
        layout: str | None = None,
    ):
        super().__init__(model, eval_mode=eval_mode)
        refuse_script(model, self.name)
        self.layer = layer
        self._resolved = None if layer is None else resolve_layers(model, layer)
        self.optimize = check_flag("optimize", optimize)
        parse_layout(layout)
        self.layout = layout
        # a Keras model: its layers output channels-last maps (its input is made NCHW on entry)
        self.channels_last = keras_model(self.model) is not None

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
        return self.reduce_channels(self.channel_weights(acts, grads) * acts)

    def layers_for(self, x: Tensor, target: TargetLike = None) -> list[tuple[str, nn.Module]]:
        """The layers to explain: the given ones, or the automatic choice for ``x`` (the last
        spatial map the score of ``target`` depends on; see
        :func:`~cnnlens.core.layers.find_spatial_layer`)."""
        if self._resolved is not None:
            return self._resolved
        score = _probe_score(target)
        name = find_spatial_layer(self.model, x[:1], score, channels_last=self.channels_last)
        return resolve_layers(self.model, name)

    def extra_modules(self) -> list[tuple[str, nn.Module]]:
        """Further modules to capture in the same forward (e.g. CAM's linear head)."""
        return []

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        # a target object may name the layer it reads (cnnlens.targets)
        plain = target.target if isinstance(target, WithOutput) else target
        choose = getattr(plain, "layer_for", None) if self._resolved is None else None
        chosen = choose(self.model, x) if callable(choose) else None
        if chosen is not None:
            log.info("layer chosen by the target: %s", chosen)
        layers = resolve_layers(self.model, chosen) if chosen else self.layers_for(x, target)
        names = [n for n, _ in layers]
        extra = self.extra_modules()
        grad_ctx = grad_enabled() if self.needs_grad else torch.no_grad()
        hooks = capture([*layers, *extra], track_grad=self.needs_grad, record_inputs=bool(extra))
        with grad_ctx, hooks as cap:
            outputs = self._forward(x)
            check_finite_outputs(self.model, outputs)
            targets = resolve_targets(target, outputs, topk, batch=x.shape[0])
            acts, lays = [], []
            for name, module in layers:
                if name not in cap.outputs:
                    where = (
                        "did not return a tensor during forward"
                        if any(module is m for m in self.model.modules())
                        else "is not a submodule of the model and did not run in its forward"
                    )
                    raise LayerNotFoundError(
                        f"layer {name!r} {where}; choose a layer that outputs a (B, C, h, w) map"
                    )
                act = cap.outputs[name]
                acts.append(act)
                lays.append(
                    decide_layout(
                        act, x, name, self.layout, module=module, channels_last=self.channels_last
                    )
                )
            ctx = CAMContext(x=x, outputs=outputs, targets=targets, capture=cap)
            raws = self._layer_maps(acts, ctx, names, lays)
        return self._finish(raws, names, targets, detach_outputs(outputs), x, lays)

    def _layer_maps(
        self, acts: list[Tensor], ctx: CAMContext, names: list[str], lays: list[Layout]
    ) -> list[Tensor]:
        """Unnormalized maps (B, K, h, w) per layer (video: (B, K, t * h, w))."""
        per_layer: list[list[Tensor]] = [[] for _ in acts]
        acts32 = [lay.read(a.detach().float()) for a, lay in zip(acts, lays)]
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
                grads = [lay.read(g.float()) for g, lay in zip(grads, lays)]
                for name, g in zip(names, grads):
                    if k == 0 and bool(g.isfinite().all()) and not bool(g.abs().amax() > 0):
                        warnings.warn(
                            f"{self.name}: the target score does not depend on layer "
                            f"{name!r} (its gradient is zero), so its map is empty; choose a "
                            "layer the score reads, or let layer=None choose one",
                            RuntimeWarning,
                            stacklevel=5,
                        )
            for i, (a, g) in enumerate(zip(acts32, grads)):
                here = dataclasses.replace(ctx, k=k, layer=names[i], layout=lays[i])
                per_layer[i].append(self.cam(a, g, here))
        return [torch.stack(maps, dim=1) for maps in per_layer]

    def _finish(
        self,
        raws: list[Tensor],
        names: list[str],
        targets: Targets,
        scores: Any,
        x: Tensor,
        lays: list[Layout],
    ) -> Explanation:
        size = tuple(int(s) for s in x.shape[2:])  # (H, W), (T, H, W) for a video
        dims = len(size)
        maps = [normalize_maps(lay.to_input(F.relu(r), size), dims) for r, lay in zip(raws, lays)]
        raws = [lay.unfold(r) for r, lay in zip(raws, lays)]
        fused = maps[0] if len(maps) == 1 else normalize_maps(torch.stack(maps).mean(0), dims)

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
            output=targets.chosen,
        )


def refuse_script(model: nn.Module, method: str) -> None:
    """A TorchScript module runs without Python hooks or torch-function modes: refuse it for
    the methods that need them, naming those that work."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(
            f"{method} needs Python hooks on the model's layers, which a TorchScript module "
            "does not run; use saliency, inputxgradient, integrated_gradients, smoothgrad, "
            "occlusion or rise, or explain the original nn.Module"
        )


def _probe_score(target: TargetLike) -> Any:
    """The score of the automatic layer probe for ``target``: None (the top class of the
    automatic output) unless an ``output=`` choice or a callable target says otherwise."""
    output: OutputLike = None
    if isinstance(target, WithOutput):
        target, output = target.target, target.output
    if callable(target) and not isinstance(target, Tensor):
        fn = target

        def score(outputs: Any) -> Tensor:
            return fn(outputs if output is None else select_output(outputs, output)).sum()

        return score
    if output is None:
        return None
    return lambda outputs: select_output(outputs, output).float().amax(dim=1).sum()


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

    family: ClassVar[str] = "gradient"
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
            why = (
                " (the output is detached or computed without autograd); use a perturbation "
                "method such as occlusion or rise"
            )
            grads = input_gradients(targets.scores(outputs), leaf, self.model, why)
        return outputs, targets, grads.contiguous()

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
        maps = reduce_channels(attr, self.reduce, dim=2)
        return pixel_explanation(attr, maps, targets, outputs, self.name)
