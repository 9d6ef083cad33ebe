"""The base every explanation method stands on, and the CAM base of the Grad-CAM family.

A method is a small class: :class:`Explainer` handles input checks, device and dtype, the
model's state and the result; :class:`BaseCAM` adds layer choice, capture, targets, gradients
to the layer activation only, ReLU, upsampling, normalization and multi-layer fusion. A CAM
method then only says how it turns activations (and gradients) into a map.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import capture, frozen, grad_enabled
from cnnlens.core.explanation import Explanation
from cnnlens.core.layers import LayersLike, find_spatial_layer, resolve_layers
from cnnlens.core.targets import TargetLike, Targets, resolve_targets
from cnnlens.errors import InputError, LayerNotFoundError

log = logging.getLogger("cnnlens")


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalize each map (last two dims) to [0, 1]; constant maps become zeros.

    Non-finite values are treated as zero so a map is never NaN.
    """
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.flatten(-2)
    lo = flat.amin(-1)[..., None, None]
    hi = flat.amax(-1)[..., None, None]
    span = hi - lo
    scale = torch.maximum(hi.abs(), lo.abs())
    flat_map = span <= torch.finfo(torch.float32).eps * scale + torch.finfo(torch.float32).tiny
    out = (maps - lo) / torch.where(flat_map, torch.ones_like(span), span)
    return out.masked_fill(flat_map, 0.0).clamp_(0.0, 1.0)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize (..., h, w) maps to ``size`` (align_corners=False)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of the model's first parameter (or buffer), if any."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return None, None


def prepare_input(x: Any, model: nn.Module) -> Tensor:
    """Check ``x`` and return a (B, C, H, W) tensor on the model's device and dtype."""
    if not isinstance(x, Tensor):
        raise InputError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise InputError(f"x must have shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError("x is an empty batch (B = 0)")
    if not x.is_floating_point():
        hint = (
            " (raw 0-255 pixels? cnnlens.data.to_tensor scales and normalizes images)"
            if x.dtype == torch.uint8
            else ""
        )
        raise InputError(
            f"x must be a floating-point tensor preprocessed as the model expects, got dtype "
            f"{x.dtype}{hint}"
        )
    device, dtype = model_device_dtype(model)
    if x.is_inference():
        x = x.clone()
    return x.to(device=device or x.device, dtype=dtype or torch.float32)


def check_flag(name: str, value: Any) -> bool | None:
    """``value`` if it is True, False or None (automatic), else an InputError naming it."""
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{name} must be True, False or None (automatic), got {value!r}")
    return value


# what a forward that refuses channels-last inputs raises (a .view on such an activation)
LAYOUT_ERRORS = ("view size is not compatible", "stride", "contiguous")


def wants_optimize(model: nn.Module, x: Tensor, flag: bool | None) -> bool:
    """Whether the batched forwards of a call run on the fast CPU path.

    ``None`` (automatic) chooses it for 4-D float32 inputs on the CPU when the model has a
    2-D convolution. See :class:`cnnlens.methods.perturbation.Runner` for what the fast path
    of the multi-pass methods does, and :class:`BaseCAM` for the CAM methods.
    """
    if flag is not None:
        return bool(flag) and x.dim() == 4
    if x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def channels_last_forward(
    model: nn.Module, batch: Tensor, *, requires_grad: bool = False
) -> tuple[Tensor, Any] | None:
    """``(leaf, outputs)`` of ``model`` on ``batch`` fed in the channels-last memory format
    (the leaf requiring grad when asked), or None when the model's forward refuses that layout
    (see :data:`LAYOUT_ERRORS`); any other error is raised as it is."""
    leaf = batch.contiguous(memory_format=torch.channels_last).detach()
    leaf.requires_grad_(requires_grad)
    try:
        return leaf, model(leaf)
    except RuntimeError as err:
        if not any(text in str(err) for text in LAYOUT_ERRORS):
            raise
        log.debug("the model refuses channels-last inputs (%s); using the default layout", err)
        return None


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
        with frozen(self.model, eval_mode=self.eval_mode):
            exp = self.explain_batch(xb, target, topk)
        return exp.to(x.device) if exp.maps.device != x.device else exp

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__})"


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
            1.4-1.8x faster on the CPU (maps agree to float32 rounding; a model whose forward
            refuses that layout is run in the default one). None: for float32 inputs on the
            CPU of a model with 2-D convolutions; False: the input as given.
        eval_mode: see :class:`Explainer`.
    """

    uses_layer: ClassVar[bool] = True
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

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: dict[str, Any]) -> Tensor:
        """The unnormalized map (B, h, w) of one layer for one target."""
        return self.reduce_channels(self.channel_weights(acts, grads) * acts)

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
            ctx = {"outputs": outputs, "targets": targets, "capture": cap, "x": x}
            raws = self._layer_maps(acts, targets, ctx, names)
        scores = outputs.detach() if isinstance(outputs, Tensor) else outputs
        return self._finish(raws, names, targets, scores, x)

    def _layer_maps(
        self, acts: list[Tensor], targets: Targets, ctx: dict[str, Any], names: list[str]
    ) -> list[Tensor]:
        """Unnormalized maps (B, K, h, w) per layer."""
        per_layer: list[list[Tensor]] = [[] for _ in acts]
        acts32 = [a.detach().float() for a in acts]
        scores = targets.scores(ctx["outputs"]) if self.needs_grad else None
        for k in range(targets.k):
            ctx["k"] = k
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
                per_layer[i].append(self.cam(a, g, {**ctx, "layer": names[i]}))
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
