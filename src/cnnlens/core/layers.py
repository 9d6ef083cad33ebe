"""Find a layer by dotted name or module, or choose one automatically by a real forward pass."""

from __future__ import annotations

import difflib
import logging
import re
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.core.capture import this_thread_only
from cnnlens.core.keras import keras_layers, keras_model
from cnnlens.core.layouts import decide_layout
from cnnlens.core.outputs import select_output
from cnnlens.errors import LayerNotFoundError, ModelError, TargetError

log = logging.getLogger("cnnlens")

LayerLike = str | nn.Module
LayersLike = LayerLike | Sequence[LayerLike] | None


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule, in registration order (the root excluded)."""
    return [name for name, _ in model.named_modules() if name]


# wrappers whose prefix users do not type: torch.compile's OptimizedModule, DataParallel and
# DistributedDataParallel
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def _typed(name: str) -> str:
    """``name`` as the user types it: without a wrapper's prefix."""
    for prefix in _WRAPPER_PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _walk(model: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path``: dotted names and Python indices (``features[-1]``,
    ``layer4.-1``), negative ones counted from the end of a Sequential or ModuleList."""
    module: nn.Module = model
    pos = 0
    for match in _TOKEN.finditer(path):
        if path[pos : match.start()].strip(".") or match.start() < pos:
            return None
        pos = match.end()
        part = match.group(1) if match.group(1) is not None else match.group(2)
        children = module._modules
        if part in children and children[part] is not None:
            module = children[part]
        elif part.lstrip("-").isdigit():
            items = [m for m in children.values() if m is not None]
            i = int(part)
            if not -len(items) <= i < len(items):
                return None
            module = items[i]
        else:
            return None
    return module if pos == len(path) and module is not model else None


def named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the model's layers as the user names them: the dotted names of
    ``named_modules`` (the root left out), or a Keras model's layer names (also through
    its channels-first view)."""
    if keras_model(model) is not None:
        return keras_layers(model)
    return [(n, m) for n, m in model.named_modules() if n]


def _unregistered_name(layer: nn.Module) -> str:
    name = getattr(layer, "name", None)  # a Keras layer's name
    return name if isinstance(name, str) and name else f"<{type(layer).__name__}>"


def resolve_layer(model: nn.Module, layer: LayerLike) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a dotted name or a module of ``model``.

    Names may use Python indices (``features[-1]``, ``layer4[-1]``) and may leave out the
    ``_orig_mod.`` (torch.compile) or ``module.`` (DataParallel) prefix of a wrapper. A module
    object that is not registered under a name (a Keras layer) is accepted as it is: it must
    run in the model's forward, which the methods check.

    Raises:
        LayerNotFoundError: when the name is not part of the model; the message lists the
            nearest candidate names, as the user can type them.
    """
    if isinstance(layer, nn.Module):
        if layer is keras_model(model):
            layer = model
        for name, module in model.named_modules():
            if module is layer and name:
                return name, module
        if layer is model:
            raise LayerNotFoundError("layer is the model itself; choose one of its layers")
        return _unregistered_name(layer), layer
    if not isinstance(layer, str):
        raise LayerNotFoundError(
            f"layer must be a dotted name, a module or a list of those, got {type(layer).__name__}"
        )
    name = layer.strip()
    if keras_model(model) is not None:
        named = dict(keras_layers(model))
        if name in named:
            return name, named[name]
    by_module = {id(m): n for n, m in named_modules(model)}
    for prefix in ("", *_WRAPPER_PREFIXES, "_orig_mod.module.", "module._orig_mod."):
        found = _walk(model, prefix + name) if name else None
        if found is None and name.startswith(_WRAPPER_PREFIXES):
            found = _walk(model, _typed(name))
        if found is not None and id(found) in by_module:
            return by_module[id(found)], found
    candidates = [_typed(n) for n in by_module.values()]
    close = difflib.get_close_matches(_typed(name), candidates, n=5, cutoff=0.4)
    shown = close or candidates[-5:]
    raise LayerNotFoundError(
        f"layer {layer!r} not found in {type(model).__name__}; "
        f"{'nearest' if close else 'last'} candidates: {', '.join(shown)}"
    )


def resolve_layers(
    model: nn.Module, layers: LayerLike | Sequence[LayerLike]
) -> list[tuple[str, nn.Module]]:
    """Resolve one layer or a list of layers (duplicates removed, order kept)."""
    items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if not items:
        raise LayerNotFoundError("layer list is empty; give at least one layer name or module")
    out: list[tuple[str, nn.Module]] = []
    for item in items:
        resolved = resolve_layer(model, item)
        if all(resolved[1] is not m for _, m in out):
            out.append(resolved)
    return out


# The automatic choice per model and input shape, so that repeated calls (one image at a
# time, say) do not pay for a probe forward each: model -> {(C, H, W, dtype, device type):
# (name, the chosen module)}. Entries go with the model; a replaced submodule is re-probed.
# It is the only thing cnnlens keeps between calls: at most _MAX_SHAPES input shapes per live
# model (the oldest dropped first), nothing that holds a model or a tensor alive, read and
# written under a lock; clear_cache() empties it.
_CHOSEN: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], tuple[str, object]]] = (
    weakref.WeakKeyDictionary()
)
_CHOSEN_LOCK = threading.Lock()
_MAX_SHAPES = 16


def clear_cache() -> None:
    """Forget every remembered automatic layer choice (see :func:`find_spatial_layer`), the
    only state cnnlens keeps between calls; the next call of each model probes again."""
    with _CHOSEN_LOCK:
        _CHOSEN.clear()


def find_spatial_layer(
    model: nn.Module,
    x: Tensor,
    score: Callable[[Any], Tensor] | None = None,
    *,
    channels_last: bool = False,
) -> str:
    """The last layer whose output is a spatial map that the score depends on, found by one
    forward and backward pass on ``x``.

    Candidates: the modules (containers count: ResNet gives ``layer4``, VGG ``features``)
    that run exactly once and return a tensor of x's batch that reads as a spatial map
    (:func:`~cnnlens.core.layouts.decide_layout`: (B, C, h, w), (B, h, w, C), (B, N, C)
    tokens on a patch grid, or (B, C, t, h, w) for a video). Of those whose map the score
    (``score(outputs)``, a scalar; default the top class of the automatic output) has a
    non-zero gradient on, the one that runs last with h * w > 1 is chosen (the last one when
    all are 1x1). So a ViT gets its last block's first LayerNorm (the final norm only feeds the
    class token), a detector never its ROI heads (their batch is the proposals). The caller's
    model state is not changed (the probe runs inside :func:`cnnlens.core.capture.frozen`).
    With the default score the choice is remembered for the model and the input's shape,
    dtype and device (at most 16 shapes per model, the oldest forgotten first), so later calls
    need no probe pass; :func:`clear_cache` forgets it all.
    """
    key = (*x.shape[1:], x.dtype, x.device.type)
    cache = score is None and keras_model(model) is None
    known = None
    if cache:
        with _CHOSEN_LOCK:
            known = _CHOSEN.get(model, {}).get(key)
    if known is not None:
        name, module_ref = known
        try:
            if model.get_submodule(name) is module_ref():  # type: ignore[operator]
                log.info("layer chosen automatically: %s", name)
                return name
        except AttributeError:
            pass
    name = _probe_spatial_layer(model, x, score or _top_score, channels_last)
    if cache:
        chosen = (name, weakref.ref(model.get_submodule(name)))
        with _CHOSEN_LOCK:
            shapes = _CHOSEN.setdefault(model, {})
            shapes.pop(key, None)
            while len(shapes) >= _MAX_SHAPES:
                del shapes[next(iter(shapes))]
            shapes[key] = chosen
    return name


def _top_score(outputs: Any) -> Tensor:
    """The probe's default score: each image's top class of the automatic output; the sum of
    squares of every float tensor in an output the automatic choice cannot read."""
    try:
        return select_output(outputs).float().amax(dim=1).sum()
    except TargetError:
        leaves: list[Tensor] = []
        _float_leaves(outputs, leaves)
        if not leaves:
            raise
        return sum(t.float().pow(2).mean() for t in leaves)  # type: ignore[return-value]


def _float_leaves(value: Any, into: list[Tensor]) -> None:
    if isinstance(value, Tensor):
        if value.is_floating_point() and value.requires_grad:
            into.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _float_leaves(v, into)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _float_leaves(v, into)


# layers that only pool the map of the layer before them; the automatic choice passes them by
_POOLING = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
)


def _probe_spatial_layer(
    model: nn.Module, x: Tensor, score: Callable[[Any], Tensor], channels_last: bool
) -> str:
    """One forward pass recording every submodule's output, one backward to all of them."""
    seen: dict[str, tuple[Tensor, nn.Module]] = {}
    calls: dict[str, int] = {}
    pooled: dict[int, Tensor] = {}  # the outputs of pooling layers (kept: ids stay unique)
    handles = []
    try:
        for name, module in named_modules(model):

            def hook(m: nn.Module, _i: object, out: object, name: str = name) -> object:
                calls[name] = calls.get(name, 0) + 1
                if isinstance(out, Tensor) and out.is_floating_point() and out.requires_grad:
                    seen[name] = (out, m)
                    copy = out.clone()  # an in-place op downstream leaves the record intact
                    if isinstance(m, _POOLING) or id(out) in pooled:
                        # a container that ends in a pooling layer returns its output: one too
                        pooled.update({id(out): out, id(copy): copy})
                    return copy
                return None

            handles.append(module.register_forward_hook(this_thread_only(hook)))
        with torch.inference_mode(False), torch.enable_grad():
            total = score(model(x.detach().requires_grad_(True)))
            if not total.requires_grad and not seen:
                raise ModelError(
                    f"{type(model).__name__}'s forward records no autograd graph (does it run "
                    "under torch.no_grad() or detach?); give layer= explicitly, or use a "
                    "perturbation method such as occlusion or rise"
                )
            maps = []
            for name, (out, module) in seen.items():
                lay = decide_layout(
                    out, x, name, module=module, channels_last=channels_last, strict=False
                )
                if lay is not None and calls[name] == 1:
                    maps.append((name, out, lay))
            if not maps:
                raise LayerNotFoundError(
                    f"no layer of {type(model).__name__} returns a spatial map (B, C, h, w), "
                    "(B, h, w, C) or (B, N, C) tokens once per forward; give layer= explicitly"
                )
            grads = (
                torch.autograd.grad(total, [out for _, out, _ in maps], allow_unused=True)
                if total.requires_grad
                else [None] * len(maps)
            )
    finally:
        for h in handles:
            h.remove()
    used = [
        (name, lay)
        for (name, _, lay), g in zip(maps, grads)
        if g is not None and bool(lay.read(g).abs().amax() > 0)
    ]
    if not used:
        warnings.warn(
            f"the score of {type(model).__name__} depends on none of its spatial layers; "
            f"using the last one, {_typed(maps[-1][0])!r}, whose map will be empty",
            RuntimeWarning,
            stacklevel=5,
        )
        used = [(name, lay) for name, _, lay in maps]
    spatial = [name for name, lay in used if lay.grid[0] * lay.grid[1] > 1]
    # a pooling layer (and a container ending in one) only resamples the map before it:
    # VGG's AdaptiveAvgPool2d(7) copies a 2x2 map of a small input into 7x7 cells
    unpooled = [n for n in spatial if id(seen[n][0]) not in pooled]
    chosen = (unpooled or spatial)[-1] if spatial else used[-1][0]
    log.info("layer chosen automatically: %s", chosen)
    return chosen
