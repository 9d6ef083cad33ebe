"""Self-describing checkpoints: one ``.safetensors`` file, metadata JSON in its header.

The header's ``"cnnlens"`` entry holds the architecture name and arguments, class names,
input size, normalization preset, dataset and test accuracy, so :func:`load` rebuilds the
model from the file alone.

>>> save_checkpoint(net, "run/model.safetensors", arch="gap-cnn",
...                 arch_kwargs={"num_classes": 5}, dataset="shapes", accuracy=0.97)
...                                                       # doctest: +SKIP
>>> model, info = load("run/model.safetensors")           # doctest: +SKIP
>>> info.class_names, info.input_size                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens._version import __version__
from cnnlens.errors import CnnlensError, InputError, ModelError, WeightsError
from cnnlens.models.registry import create, get_spec, resolve_name
from cnnlens.models.weights import (
    check_fit,
    load_weights,
    looks_like_path,
    read_state_dict,
    torchvision_weights,
)

__all__ = ["ModelInfo", "load", "read_checkpoint_info", "save_checkpoint"]

logger = logging.getLogger(__name__)

METADATA_KEY = "cnnlens"
#: How a model built without weights is labelled, in the report and on the terminal.
RANDOM_WEIGHTS = "random weights: predictions mean nothing"
#: The note on class names that come with an architecture but not from training.
UNTRAINED_CLASS_NAMES = (
    "the class names are the dataset's categories, but the model is untrained: its labels are "
    "arbitrary"
)
FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    """What is known about a loaded model.

    Attributes:
        arch: Architecture name (``cnnlens.models.create`` rebuilds it).
        arch_kwargs: Arguments given to ``create`` (e.g. ``num_classes``, ``in_channels``).
        class_names: Class names, or None when unknown.
        input_size: (H, W) the model expects.
        in_channels: Channels of its input.
        preset: Normalization preset name (``cnnlens.data.get_preset``).
        dataset: Name of the training data, if known.
        accuracy: Test accuracy as a fraction in [0, 1], if known.
        extra: Anything else stored with the checkpoint (a JSON-able dict).
        num_classes: Number of outputs.
        dtype: Floating dtype of the stored weights (``"float32"``, ...).
        source: The checkpoint path, or the weights file / torchvision weights name.
        pretrained: False when the model was built from a name without weights (random
            initialization: its predictions mean nothing), True when weights were loaded.
        resize: the short side before the centre crop, from the weights' metadata (None:
            ``round(S * 256 / 224)``).
        interpolation: resampling of the resize, from the weights' metadata.
    """

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    input_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    preset: str = "none"
    dataset: str | None = None
    accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    dtype: str = "float32"
    source: str | None = None
    pretrained: bool | None = None
    resize: int | None = None
    interpolation: str = "bilinear"

    def preprocessing(self) -> Any:
        """The :class:`cnnlens.data.Preprocessing` the model's inputs are made with.

        ImageNet-normalized models get the resize + centre-crop transform (with the sizes
        and interpolation their torchvision weights declare); others a plain resize.
        """
        from cnnlens.data import Preprocessing

        return Preprocessing(
            size=(int(self.input_size[0]), int(self.input_size[1])),
            preset=self.preset,
            crop=self.preset == "imagenet",
            resize=self.resize,
            interpolation=self.interpolation,
            channels=int(self.in_channels) if self.in_channels in (1, 3) else None,
        )

    @property
    def weights_label(self) -> str:
        """What the weights are, for a report or a terminal: never a bare architecture name."""
        if self.pretrained is False:
            return RANDOM_WEIGHTS
        return self.source or "unknown"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out


def _jsonable(arg: str, value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{arg} must hold only JSON values (str, numbers, lists, dicts): {err}"
        ) from err


def _size_hw(value: Any) -> tuple[int, int]:
    try:
        dims = tuple(int(v) for v in value)
    except (TypeError, ValueError) as err:
        raise InputError(f"input_size must be (H, W) or (C, H, W), got {value!r}") from err
    if len(dims) not in (2, 3) or min(dims) < 1 or max(dims[-2:]) > MAX_INPUT_SIDE:
        raise InputError(
            f"input_size must be (H, W) or (C, H, W) of positive ints, H and W at most "
            f"{MAX_INPUT_SIDE}, got {value!r}"
        )
    return dims[-2], dims[-1]


def _dtype_name(state: dict[str, Tensor]) -> str:
    floats = {str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()}
    return floats.pop() if len(floats) == 1 else "float32"


def _tensors_for_saving(model: nn.Module) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if not isinstance(value, Tensor):
            raise WeightsError(
                f"model state entry {key!r} is a {type(value).__name__}, not a tensor; only "
                "tensors can be saved in a .safetensors checkpoint"
            )
        if value.is_meta:
            raise WeightsError(
                f"model tensor {key!r} is on the meta device (no data); move the model to a "
                "real device before saving"
            )
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # safetensors refuses tensors sharing memory (tied weights, views)
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    return tensors


def _unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    for _ in range(4):
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            break
    return model


def _verify_rebuild(model: nn.Module, arch: str, arch_kwargs: dict[str, Any]) -> None:
    """Check that create(arch, **arch_kwargs) has the same state dict layout as ``model``."""
    try:
        with torch.device("meta"):
            reference = create(arch, **arch_kwargs)
    except CnnlensError:
        raise
    except Exception as err:  # e.g. a constructor that needs real data; check on CPU instead
        logger.info("building %s on the meta device failed (%s); checking on the CPU", arch, err)
        reference = create(arch, **arch_kwargs)
    check_fit(
        reference,
        model.state_dict(),
        source=f"the model's weights (arch={arch!r}, arch_kwargs={arch_kwargs})",
    )


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    input_size: Sequence[int] | None = None,
    preset: str | None = None,
    dataset: str | None = None,
    accuracy: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and what describes it to one ``.safetensors`` file, atomically.

    The tensors go to a temporary file in the same folder, which then replaces ``path``
    (``os.replace``), so an error never leaves a half-written checkpoint. Before writing,
    the architecture is rebuilt (on the meta device, no memory) from ``arch`` and
    ``arch_kwargs`` and compared key by key, so the file is known to load.

    Args:
        model: The trained network (a DataParallel or torch.compile wrapper is unwrapped).
        path: Target file (``.safetensors`` recommended); parent folders are created.
        arch: Architecture name for :func:`cnnlens.models.create`.
        arch_kwargs: Arguments for ``create`` (``num_classes``, ``in_channels``, ...).
        class_names: One name per output (default: the architecture's, if it has them).
        input_size: (H, W) or (C, H, W) (default: the architecture's).
        preset: Normalization preset name (default: the architecture's).
        dataset: Name of the training data.
        accuracy: Test accuracy as a fraction in [0, 1].
        extra: More JSON-able metadata.

    Returns:
        The path written.

    Raises:
        ModelError: Unknown architecture.
        InputError: Metadata of the wrong kind (not JSON-able, wrong number of class names).
        WeightsError: The model does not match ``arch``/``arch_kwargs``, or is on the meta
            device.
    """
    arch = resolve_name(arch)
    model = _unwrap_model(model)
    kwargs = _jsonable("arch_kwargs", dict(arch_kwargs or {}))
    if "weights" in kwargs:
        raise InputError("arch_kwargs must not contain 'weights'; the checkpoint holds them")
    spec = get_spec(
        arch, in_channels=kwargs.get("in_channels"), num_classes=kwargs.get("num_classes")
    )
    names = list(class_names) if class_names is not None else spec.class_names
    if names is not None:
        if not all(isinstance(n, str) for n in names):
            raise InputError("class_names must be strings")
        if len(names) != spec.num_classes:
            raise InputError(
                f"class_names has {len(names)} names but {arch} with arch_kwargs={kwargs} has "
                f"{spec.num_classes} outputs"
            )
    if accuracy is not None:
        accuracy = float(accuracy)
        if not math.isfinite(accuracy) or not 0.0 <= accuracy <= 1.0:
            raise InputError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
    hw = _size_hw(input_size) if input_size is not None else spec.input_size
    _verify_rebuild(model, arch, kwargs)
    tensors = _tensors_for_saving(model)
    meta = {
        "format_version": FORMAT_VERSION,
        "cnnlens_version": __version__,
        "arch": arch,
        "arch_kwargs": kwargs,
        "class_names": names,
        "input_size": list(hw),
        "in_channels": spec.in_channels,
        "num_classes": spec.num_classes,
        "preset": preset if preset is not None else spec.preset,
        "dataset": dataset,
        "accuracy": accuracy,
        "dtype": _dtype_name(tensors),
        "extra": _jsonable("extra", dict(extra or {})),
    }
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: json.dumps(meta)})
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def read_checkpoint_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Read the metadata of a cnnlens checkpoint without loading its tensors.

    Raises:
        WeightsError: The file is missing, not a safetensors file, or has no cnnlens metadata,
            or its metadata does not fit the schema (the message names the field).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"checkpoint {str(path)!r} not found")
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as err:  # safetensors' own error types; translate them
        raise WeightsError(
            f"checkpoint {str(path)!r} is not a .safetensors file ({err}); to load a state dict "
            f"into an architecture use cnnlens.models.load(ARCH, weights={str(path)!r})"
        ) from err
    if METADATA_KEY not in header:
        raise WeightsError(
            f"{str(path)!r} has no cnnlens metadata (a plain state dict); load it with "
            f"cnnlens.models.load(ARCH, weights={str(path)!r})"
        )
    try:
        meta = json.loads(header[METADATA_KEY])
        version = int(meta.get("format_version", 1)) if isinstance(meta, dict) else 1
    except (ValueError, TypeError) as err:
        raise WeightsError(
            f"checkpoint {str(path)!r} has damaged cnnlens metadata ({err})"
        ) from err
    if version > FORMAT_VERSION:
        raise WeightsError(
            f"checkpoint {str(path)!r} has format version {version}; this cnnlens reads up to "
            f"{FORMAT_VERSION} (upgrade cnnlens)"
        )
    return _info_from_meta(meta, str(p))


#: Largest side of a checkpoint's ``input_size`` accepted when loading: 4096 pixels
#: (a summary or explanation allocates inputs of that size).
MAX_INPUT_SIDE = 4096

_TRAINING_NUMBERS = ("epochs", "lr", "batch_size", "weight_decay", "train_size", "seed")


def _meta_error(path: str, name: str, expected: str, value: Any) -> WeightsError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return WeightsError(
        f"checkpoint {path!r} has malformed metadata: {name} must be {expected}, got {shown}"
    )


def _meta_int(path: str, name: str, value: Any, maximum: int, *, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= maximum
    if not ok:
        raise _meta_error(path, name, f"an integer in [1, {maximum:,}]", value)
    return value


def _meta_str(path: str, meta: dict, name: str, default: str | None) -> str | None:
    value = meta.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, str):
        raise _meta_error(path, name, "a string", value)
    return value


def _meta_extra(path: str, meta: dict) -> dict[str, Any]:
    extra = meta.get("extra") or {}
    if not isinstance(extra, dict):
        raise _meta_error(path, "extra", "a JSON object", extra)
    training = extra.get("training")
    if training is not None and not isinstance(training, dict):
        raise _meta_error(path, "extra.training", "a JSON object", training)
    for key in _TRAINING_NUMBERS:
        value = (training or {}).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _meta_error(path, f"extra.training.{key}", "a number", value)
    return dict(extra)


def _info_from_meta(meta: Any, path: str) -> ModelInfo:
    """Validate a checkpoint's cnnlens metadata against its schema; one line per bad field."""
    if not isinstance(meta, dict):
        raise _meta_error(path, "the metadata", "a JSON object", meta)
    arch = meta.get("arch")
    if not isinstance(arch, str) or not arch:
        raise _meta_error(path, "arch", "an architecture name", arch)
    kwargs = meta.get("arch_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _meta_error(path, "arch_kwargs", "a JSON object of constructor arguments", kwargs)
    for key in ("num_classes", "in_channels"):
        if key in kwargs:
            _meta_int(path, f"arch_kwargs.{key}", kwargs[key], 1_000_000, optional=False)
    size = meta.get("input_size") or [224, 224]
    ok = isinstance(size, list | tuple) and len(size) in (2, 3)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    if not ok or not all(1 <= v <= MAX_INPUT_SIDE for v in size[-2:]):
        raise _meta_error(path, "input_size", f"[H, W] of integers in [1, {MAX_INPUT_SIDE}]", size)
    names = meta.get("class_names")
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(n, str) for n in names)
    ):
        raise _meta_error(path, "class_names", "a list of strings", names)
    num_classes = _meta_int(path, "num_classes", meta.get("num_classes"), 1_000_000)
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise _meta_error(path, "class_names", f"{num_classes} names", names)
    accuracy = meta.get("accuracy")
    if accuracy is not None and not (
        isinstance(accuracy, int | float)
        and not isinstance(accuracy, bool)
        and 0.0 <= accuracy <= 1.0
    ):
        raise _meta_error(path, "accuracy", "a number in [0, 1]", accuracy)
    return ModelInfo(
        arch=arch,
        arch_kwargs=dict(kwargs),
        class_names=names,
        input_size=(int(size[-2]), int(size[-1])),
        in_channels=_meta_int(
            path, "in_channels", meta.get("in_channels", 3), 1024, optional=False
        ),
        preset=_meta_str(path, meta, "preset", "none") or "none",
        dataset=_meta_str(path, meta, "dataset", None),
        accuracy=None if accuracy is None else float(accuracy),
        extra=_meta_extra(path, meta),
        num_classes=num_classes,
        dtype=_meta_str(path, meta, "dtype", "float32") or "float32",
        source=path,
        pretrained=True,  # a checkpoint holds its weights
    )


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"device must be like 'cpu', 'cuda' or 'cuda:0', got {device!r}") from err


def load(
    path_or_name: str | os.PathLike[str],
    *,
    weights: Any = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelInfo]:
    """Load a cnnlens checkpoint, or build a named architecture with optional weights.

    The model is returned in eval mode on ``device``, ready to explain.

    Args:
        path_or_name: A checkpoint written by :func:`save_checkpoint` (rebuilt from its
            metadata alone), a saved Keras 3 model (``.keras``, loaded in safe mode and
            returned in its channels-first view: :mod:`cnnlens.models.keras`), or an
            architecture name (``"resnet50"``, ``"gap-cnn"``).
        weights: With a name only: a weights file or a torchvision weights name
            (``"DEFAULT"``, ``"IMAGENET1K_V2"``).
        device: Where to put the model.

    Returns:
        ``(model, info)``.

    Raises:
        ModelError: Unknown architecture name.
        WeightsError: Missing or unreadable checkpoint, unsafe or non-fitting weights.
        InputError: ``weights`` given with a checkpoint, or a bad device.
    """
    dev = _device(device)
    text = os.fspath(path_or_name) if isinstance(path_or_name, os.PathLike) else path_or_name
    if not isinstance(text, str):
        raise InputError(f"path_or_name must be a path or a model name, got {type(text).__name__}")
    if (
        isinstance(path_or_name, os.PathLike)
        or Path(text).expanduser().is_file()
        or looks_like_path(text)
        or text.lower().endswith(".keras")
    ):
        if weights is not None:
            raise InputError(
                "weights= goes with a model name; a checkpoint file already holds its weights"
            )
        from cnnlens.models.keras import is_keras_file, load_keras

        if is_keras_file(text):  # a saved Keras 3 model, in its channels-first view
            return load_keras(text, dev)
        info = read_checkpoint_info(text)
        try:
            arch = resolve_name(info.arch)
        except ModelError as err:
            raise ModelError(f"checkpoint {text!r} names an unknown architecture: {err}") from err
        model = create(arch, **info.arch_kwargs)
        state = read_state_dict(text)
        dtype = getattr(torch, info.dtype, None)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype != torch.float32:
            model = model.to(dtype)
        load_weights(model, state, source=f"weights in checkpoint {text!r}")
    else:
        arch = resolve_name(text)
        model = create(arch, weights=weights)
        info = _info_for_name(arch, weights)
    model.to(dev)
    model.eval()
    return model, info


def _info_for_name(arch: str, weights: Any) -> ModelInfo:
    spec = get_spec(arch, weights=weights)
    info = ModelInfo(
        arch=arch,
        arch_kwargs={},
        class_names=spec.class_names,
        input_size=spec.input_size,
        in_channels=spec.in_channels,
        preset=spec.preset,
        num_classes=spec.num_classes,
    )
    if weights is None:
        info.pretrained = False
        info.extra = {"weights": RANDOM_WEIGHTS}
        if spec.class_names:
            info.extra["class_names"] = UNTRAINED_CLASS_NAMES
        logger.warning(
            "model %s has %s (give weights, e.g. --weights DEFAULT or a checkpoint)",
            arch,
            RANDOM_WEIGHTS,
        )
        return info
    info.pretrained = True
    if looks_like_path(weights):
        info.source = os.fspath(weights)
        return info
    entry = torchvision_weights(arch, weights)
    keywords = getattr(entry.transforms, "keywords", {})
    if keywords.get("resize_size") is not None:
        info.resize = int(keywords["resize_size"])
    mode = keywords.get("interpolation")
    if mode is not None:
        info.interpolation = str(getattr(mode, "value", mode))
    info.source = str(entry)
    info.extra = {"weights": str(entry), "weights_url": entry.url}
    metrics = entry.meta.get("_metrics", {})
    if metrics:
        dataset, values = next(iter(metrics.items()))
        info.dataset = dataset
        if "acc@1" in values:
            info.accuracy = float(values["acc@1"]) / 100.0
    return info
