"""Saved Keras 3 models (``.keras`` files) as models to explain.

``cnnlens explain photo.jpg --model path/to/model.keras`` (and ``cnnlens.models.load``) load
the file with ``keras.saving.load_model(path, safe_mode=True)``: a file holding Python code
(a ``Lambda`` layer's bytecode) is refused, never run. Keras is imported only here, when such
a file is loaded (the ``keras`` extra: ``pip install 'cnnlens[keras]'``), on the torch backend
(``KERAS_BACKEND=torch``, set when Keras has not been imported yet).

The model is returned in its channels-first view
(:class:`~cnnlens.core.keras.KerasChannelsFirst`): it takes (B, C, H, W) images like every
other model of the command, at the input size and channels its input layer declares; the
Keras layer names (``block5_conv3``) are the names ``--layer`` takes. Pixels are scaled to
[0, 1] (preset ``none``): a model that expects another range should hold its own
preprocessing layers (``keras.layers.Rescaling``, ``Normalization``).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from cnnlens.core.keras import KerasChannelsFirst
from cnnlens.errors import ModelError, WeightsError
from cnnlens.models.checkpoint import ModelInfo

__all__ = ["DEFAULT_SIZE", "is_keras_file", "load_keras"]

#: the input size used when the model's input layer leaves it open (None, None, C)
DEFAULT_SIZE = (224, 224)


def is_keras_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a Keras 3 model file (``.keras``)."""
    return Path(os.fspath(path)).suffix.lower() == ".keras"


def _import_keras() -> Any:
    """Keras on the torch backend, or a :class:`ModelError` saying how to get it."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as err:
        raise ModelError(
            "loading a .keras model needs Keras 3 on the torch backend: pip install "
            "'cnnlens[keras]'"
        ) from err
    backend = keras.backend.backend()
    if backend != "torch":
        raise ModelError(
            f"Keras runs on the {backend!r} backend in this process; cnnlens explains Keras "
            "models on the torch backend: set KERAS_BACKEND=torch before Keras is imported"
        )
    return keras


def _device_scope(keras: Any, device: torch.device) -> AbstractContextManager[Any]:
    return keras.device("cpu" if device.type == "cpu" else str(device))


def _read(keras: Any, path: str, device: torch.device) -> Any:
    """The Keras model in ``path``, loaded in safe mode; one line per refusal."""
    try:
        with _device_scope(keras, device):
            return keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as err:
        text = str(err)
        if "Lambda" in text or "safe_mode" in text or "unsafe" in text:
            raise WeightsError(
                f"{path}: Keras safe mode refuses this file: it holds Python code (a Lambda "
                "layer), which loading would run; rebuild the model without Lambda layers"
            ) from err
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise WeightsError(f"{path} is not a Keras model file Keras can read: {first}") from err
    except (OSError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path} is not a Keras model file Keras can read: {first}") from err


def _input_spec(model: Any, path: str) -> tuple[tuple[int, int], int]:
    """``((H, W), C)`` of the model's (B, H, W, C) image input."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list) or not isinstance(shape, tuple) or len(shape) != 4:
        raise ModelError(
            f"{path}: the Keras model's input is {shape}, not one (B, H, W, C) image batch; "
            "cnnlens explains image classifiers with one image input"
        )
    _, h, w, c = shape
    if not isinstance(c, int):
        raise ModelError(f"{path}: the Keras model's input {shape} does not fix its channels")
    size = (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else DEFAULT_SIZE
    return size, c


def load_keras(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[KerasChannelsFirst, ModelInfo]:
    """``(model, info)`` of a saved Keras model: its channels-first view, in eval mode.

    Args:
        path: a ``.keras`` file.
        device: where Keras creates the model's weights.

    Raises:
        ModelError: Keras is not installed or runs on another backend; the model does not
            take one (B, H, W, C) image batch.
        WeightsError: the file is missing, unreadable, or refused by Keras safe mode.

    Example:
        >>> net, info = load_keras("model.keras")            # doctest: +SKIP
        >>> net(torch.rand(1, *([info.in_channels] + list(info.input_size)))).shape
    """
    text = os.fspath(path)
    if not Path(text).expanduser().is_file():
        raise WeightsError(f"Keras model file {text!r} does not exist")
    dev = torch.device(device)
    keras = _import_keras()
    model = _read(keras, str(Path(text).expanduser()), dev)
    size, channels = _input_spec(model, text)
    out = getattr(model, "output_shape", None)
    classes = out[-1] if isinstance(out, tuple) and isinstance(out[-1], int) else None
    net = KerasChannelsFirst(model).eval()
    info = ModelInfo(
        arch=f"keras:{getattr(model, 'name', 'model')}",
        input_size=size,
        in_channels=channels,
        preset="none",
        num_classes=classes,
        source=text,
        pretrained=True,
        extra={"format": "Keras 3 (.keras), loaded in safe mode"},
    )
    return net, info
