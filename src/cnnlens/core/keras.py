"""Keras 3 models on the torch backend, as models like any other.

Under ``KERAS_BACKEND=torch`` a Keras model and its layers are ``torch.nn.Module`` objects
whose forward hooks run, but the layers are not registered under names in
``named_modules``, inputs and activations are channels-last (B, H, W, C), and the names a
user knows are the Keras layer names (``block5_conv3``). This module recognizes such a model
without importing Keras (Keras is an optional extra, ``pip install cnnlens[keras]``) and
lists its layers by those names.
"""

from __future__ import annotations

from torch import nn

__all__ = ["is_keras", "keras_layers"]


def is_keras(model: object) -> bool:
    """Whether ``model`` is a Keras model or layer (checked by type, Keras not imported)."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(model).__mro__)


def keras_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every layer of a Keras model, nested models flattened, in the
    model's order (the order of its forward for a Sequential or functional model)."""
    out: list[tuple[str, nn.Module]] = []

    def walk(m: object) -> None:
        for layer in getattr(m, "layers", []) or []:
            if isinstance(layer, nn.Module):
                out.append((str(layer.name), layer))
            if getattr(layer, "layers", None):
                walk(layer)

    walk(model)
    return out
