"""Find a layer by dotted name or module, or choose one automatically by a real forward pass."""

from __future__ import annotations

import difflib
import logging
import threading
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnlens.core.capture import this_thread_only
from cnnlens.errors import LayerNotFoundError

log = logging.getLogger("cnnlens")

LayerLike = str | nn.Module
LayersLike = LayerLike | Sequence[LayerLike] | None


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule, in registration order (the root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: LayerLike) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a dotted name or a submodule of ``model``.

    Raises:
        LayerNotFoundError: when the name or module is not part of the model; the message
            lists the nearest candidate names.
    """
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise LayerNotFoundError(
            f"layer module {type(layer).__name__} is not a submodule of the model "
            f"{type(model).__name__}"
        )
    if not isinstance(layer, str):
        raise LayerNotFoundError(
            f"layer must be a dotted name, a module or a list of those, got {type(layer).__name__}"
        )
    modules = dict(model.named_modules())
    name = layer.strip()
    if name in modules and name:
        return name, modules[name]
    # Accept index syntax as written in Python: features[35] -> features.35
    alt = name.replace("[", ".").replace("]", "")
    if alt in modules and alt:
        return alt, modules[alt]
    candidates = [n for n in modules if n]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.4)
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


def find_spatial_layer(model: nn.Module, x: Tensor) -> str:
    """The last module whose output is a spatial 4-D map, found by a real forward pass.

    The module that runs last in forward and returns a (B, C, h, w) tensor with h * w > 1 is
    chosen (containers count: ResNet gives ``layer4``, VGG ``features``); when every 4-D
    output is 1x1, the last 4-D one. The caller's model state is not changed: the pass runs on
    the caller's behalf inside :func:`cnnlens.core.capture.frozen`. The choice is remembered
    for the model and the input's shape, dtype and device (as long as the chosen module is
    still the model's submodule of that name; at most 16 shapes per model, the oldest
    forgotten first), so later calls need no probe pass; :func:`clear_cache` forgets it all.
    """
    key = (*x.shape[1:], x.dtype, x.device.type)
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
    name = _probe_spatial_layer(model, x)
    chosen = (name, weakref.ref(model.get_submodule(name)))
    with _CHOSEN_LOCK:
        shapes = _CHOSEN.setdefault(model, {})
        shapes.pop(key, None)
        while len(shapes) >= _MAX_SHAPES:
            del shapes[next(iter(shapes))]
        shapes[key] = chosen
    return name


@torch.no_grad()
def _probe_spatial_layer(model: nn.Module, x: Tensor) -> str:
    """One forward pass with a shape-recording hook on every submodule."""
    order: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    try:
        for name, module in model.named_modules():
            if not name:
                continue

            def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
                if isinstance(out, Tensor) and out.dim() == 4:
                    order.append((name, tuple(out.shape)))

            handles.append(module.register_forward_hook(this_thread_only(hook)))
        model(x)
    finally:
        for h in handles:
            h.remove()
    spatial = [name for name, shape in order if shape[2] * shape[3] > 1]
    chosen = spatial[-1] if spatial else (order[-1][0] if order else None)
    if chosen is None:
        raise LayerNotFoundError(
            f"no layer of {type(model).__name__} returns a 4-D (B, C, h, w) map; "
            "give layer= explicitly"
        )
    log.info("layer chosen automatically: %s", chosen)
    return chosen
