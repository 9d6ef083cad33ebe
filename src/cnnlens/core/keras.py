"""Keras 3 models on the torch backend, as models like any other.

Under ``KERAS_BACKEND=torch`` a Keras model and its layers are ``torch.nn.Module`` objects
whose forward hooks run, but the layers are not registered under names in
``named_modules``, inputs and activations are channels-last (B, H, W, C), and the names a
user knows are the Keras layer names (``block5_conv3``). This module recognizes such a model
without importing Keras (Keras is an optional extra, ``pip install cnnlens[keras]``), lists
its layers by those names, and gives the one channels-first view of it the engine works on.

The input layout is handled in one place. Every method wraps a Keras model in
:class:`KerasChannelsFirst`, a torch module that takes (B, C, H, W) images and hands them to
the Keras model as (B, H, W, C); the user's (B, H, W, C) batch is turned into (B, C, H, W)
once, on entry (:func:`cnnlens.methods.engine.prepare_input`). From there on a Keras model
is a torch model with (B, C, H, W) inputs whose layers output channels-last maps: the pixel
methods (gradients, occlusion, RISE, ...) need nothing of their own, their ``raw`` is
(B, C, H, W) as for any model, and the CAM methods read the layers as (B, h, w, C)
(:func:`~cnnlens.core.layouts.decide_layout`). A Keras model whose ``data_format`` is
``channels_first`` is not supported (the Keras default, and keras.applications, are
channels-last).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from cnnlens.errors import InputError

__all__ = [
    "KerasChannelsFirst",
    "channels_first",
    "is_keras",
    "keras_layers",
    "keras_model",
    "nchw_images",
]


def is_keras(model: object) -> bool:
    """Whether ``model`` is a Keras model or layer (checked by type, Keras not imported)."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(model).__mro__)


class KerasChannelsFirst(nn.Module):
    """A Keras model seen as a torch model taking (B, C, H, W) images.

    The forward permutes the batch to (B, H, W, C) and calls the Keras model, whose outputs
    are returned as they are; the Keras model is the only submodule, so its layers' hooks,
    train/eval flags and parameters are the model's own (nothing is copied).

    Args:
        model: a Keras model on the torch backend (channels-last).

    Example:
        >>> net = KerasChannelsFirst(keras_model)       # doctest: +SKIP
        >>> net(torch.randn(2, 3, 64, 64)).shape        # the Keras model saw (2, 64, 64, 3)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.keras = model

    def forward(self, x: Tensor) -> Any:
        if x.dim() != 4:
            raise InputError(
                f"a Keras model takes images (B, H, W, C) here, got x of shape {tuple(x.shape)}"
            )
        return self.keras(x.permute(0, 2, 3, 1))

    def extra_repr(self) -> str:
        return f"keras model {getattr(self.keras, 'name', '')!r}, inputs (B, C, H, W)"


def keras_model(model: object) -> nn.Module | None:
    """The Keras model of ``model`` (itself, or the one inside its
    :class:`KerasChannelsFirst` view); None for any other model."""
    if isinstance(model, KerasChannelsFirst):
        return model.keras
    return model if isinstance(model, nn.Module) and is_keras(model) else None


def channels_first(model: nn.Module) -> nn.Module:
    """``model`` as the engine runs it: a Keras model in its :class:`KerasChannelsFirst`
    view, any other model (a view included) as it is."""
    return KerasChannelsFirst(model) if is_keras(model) else model


def nchw_images(x: Tensor) -> Tensor:
    """Channels-last images (B, H, W, C) or (H, W, C) as a (B, C, H, W) or (C, H, W) view."""
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x.permute(2, 0, 1)


def keras_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every layer of a Keras model (or of its channels-first view),
    nested models flattened, in the model's order (the order of its forward for a Sequential
    or functional model)."""
    out: list[tuple[str, nn.Module]] = []

    def walk(m: object) -> None:
        for layer in getattr(m, "layers", []) or []:
            if isinstance(layer, nn.Module):
                out.append((str(layer.name), layer))
            if getattr(layer, "layers", None):
                walk(layer)

    walk(keras_model(model) or model)
    return out
