"""Architectures by name: the seed networks and every torchvision classification model.

>>> from cnnlens.models import create, get_spec, list_models
>>> get_spec("mnist-cnn").input_size
(28, 28)
>>> net = create("gap-cnn", in_channels=1, num_classes=4)
>>> resnet = create("resnet50", weights="IMAGENET1K_V2")     # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from cnnlens.core.checks import check_optional_int
from cnnlens.errors import CnnlensError, ModelError, WeightsError
from cnnlens.models.seeds import GapCNN, MnistCNN, MnistDNN, SimpleCNN
from cnnlens.models.weights import (
    build_torchvision_pretrained,
    load_weights,
    looks_like_path,
    torchvision_weights,
)

__all__ = ["ArchSpec", "create", "get_spec", "list_models", "resolve_name"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture expects and produces.

    Attributes:
        name: Registry name (``"gap-cnn"``, ``"resnet50"``).
        in_channels: Channels of the input image.
        input_size: (H, W) the network is made for.
        num_classes: Number of outputs.
        preset: Name of the normalization preset (``cnnlens.data.get_preset``).
        class_names: Class names when known (ImageNet for torchvision models), else None.
        source: ``"cnnlens"`` for the seed networks, ``"torchvision"`` otherwise.
        description: One line about the architecture.
    """

    name: str
    in_channels: int
    input_size: tuple[int, int]
    num_classes: int
    preset: str
    class_names: list[str] | None = field(default=None, hash=False, repr=False)
    source: str = "cnnlens"
    description: str = ""


@dataclass(frozen=True)
class _Seed:
    cls: type[nn.Module]
    spec: ArchSpec
    # input size and preset when built with in_channels=1 (grey variant), if it differs
    grey: tuple[tuple[int, int], str] | None = None


_SEEDS: dict[str, _Seed] = {
    "simplecnn": _Seed(
        SimpleCNN,
        ArchSpec(
            "simplecnn", 3, (32, 32), 10, "cifar10",
            description="CIFAR-10 tutorial net: 2 conv + 3 fc, F.relu, 32x32 RGB",
        ),
    ),
    "mnist-cnn": _Seed(
        MnistCNN,
        ArchSpec(
            "mnist-cnn", 1, (28, 28), 10, "mnist",
            description="3 conv blocks (32-64-128) + fc 3200-625-10, dropout, 28x28 grey",
        ),
    ),
    "mnist-dnn": _Seed(
        MnistDNN,
        ArchSpec(
            "mnist-dnn", 1, (28, 28), 10, "mnist",
            description="linear 784-512-100-10, no activation (class-prototype net)",
        ),
    ),
    "gap-cnn": _Seed(
        GapCNN,
        ArchSpec(
            "gap-cnn", 3, (64, 64), 5, "none",
            description="4 conv blocks (16-32-64-64, BN) + global average pooling + fc, for CAM",
        ),
        grey=((28, 28), "mnist"),
    ),
}  # fmt: skip


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def list_models(source: str | None = None) -> list[str]:
    """Sorted names of every architecture ``create`` builds.

    Args:
        source: ``"cnnlens"`` (the seed networks) or ``"torchvision"``; None for all.
    """
    if source not in (None, "cnnlens", "torchvision"):
        raise ModelError(f"source must be 'cnnlens', 'torchvision' or None, got {source!r}")
    names: list[str] = []
    if source in (None, "cnnlens"):
        names += list(_SEEDS)
    if source in (None, "torchvision"):
        names += list(_torchvision_names())
    return sorted(names)


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def resolve_name(name: str) -> str:
    """The registry name for ``name`` (case, ``-`` and ``_`` do not matter).

    Raises:
        ModelError: No architecture has that name; the message lists close names.
    """
    if not isinstance(name, str):
        raise ModelError(f"model name must be a string, got {type(name).__name__}")
    if name in _SEEDS or name in _torchvision_names():
        return name
    everything = list_models()
    found = [n for n in everything if _norm(n) == _norm(name)]
    if len(found) == 1:
        return found[0]
    close = difflib.get_close_matches(_norm(name), [_norm(n) for n in everything], 6, 0.6)
    by_norm = {_norm(n): n for n in everything}
    hint = (
        f"close names: {', '.join(by_norm[c] for c in close)}"
        if close
        else f"the seed networks are {', '.join(_SEEDS)}, plus {len(everything) - len(_SEEDS)} "
        "torchvision models (cnnlens.models.list_models())"
    )
    raise ModelError(f"unknown model {name!r}; {hint}")


@functools.cache
def _torchvision_meta(arch: str) -> tuple[tuple[int, int], list[str]]:
    from torchvision.models import get_model_weights

    entries = list(get_model_weights(arch))
    crops = [e.transforms.keywords.get("crop_size") for e in entries]
    crop = min((c for c in crops if c), default=224)
    return (int(crop), int(crop)), list(entries[0].meta["categories"])


def _crop_of(entry: Any) -> tuple[int, int]:
    crop = int(entry.transforms.keywords.get("crop_size", 224))
    return crop, crop


def get_spec(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    weights: Any = None,
) -> ArchSpec:
    """The expected input and the outputs of an architecture, as built with these arguments.

    Args:
        name: Architecture name (see :func:`list_models`).
        in_channels: As given to :func:`create` (changes input size/preset of ``gap-cnn``:
            1 channel means 28x28 grey with the ``mnist`` preset).
        num_classes: As given to :func:`create`; class names are kept only when the count
            matches the pretrained classes.
        weights: A torchvision weights name: its crop size becomes the input size. For
            random-init torchvision models the input size is the smallest crop size among the
            architecture's weights (224 for ``vit_b_16``, 299 for ``inception_v3``).

    Raises:
        ModelError: Unknown name.
    """
    arch = resolve_name(name)
    if arch in _SEEDS:
        seed = _SEEDS[arch]
        spec = seed.spec
        if in_channels is not None and in_channels != spec.in_channels:
            spec = replace(spec, in_channels=in_channels)
            if in_channels == 1 and seed.grey is not None:
                spec = replace(spec, input_size=seed.grey[0], preset=seed.grey[1])
        if num_classes is not None:
            spec = replace(spec, num_classes=num_classes)
        return spec
    input_size, categories = _torchvision_meta(arch)
    if weights is not None and not looks_like_path(weights):
        input_size = _crop_of(torchvision_weights(arch, weights))
    n = num_classes if num_classes is not None else len(categories)
    return ArchSpec(
        name=arch,
        in_channels=in_channels if in_channels is not None else 3,
        input_size=input_size,
        num_classes=n,
        preset="imagenet",
        class_names=list(categories) if n == len(categories) else None,
        source="torchvision",
        description="torchvision classification model",
    )


def create(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    weights: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build an architecture by name, optionally with weights.

    The model is returned as its constructor leaves it (train mode). Build on another device
    with ``with torch.device("meta"): create(...)``.

    Args:
        name: A seed network (``simplecnn``, ``mnist-cnn``, ``mnist-dnn``, ``gap-cnn``) or any
            torchvision classification model (``resnet50``, ``vgg16``, ...).
        num_classes: Outputs; with torchvision weights, a different count replaces the
            classification head (the last Linear or 1x1 Conv with 1000 outputs) by a freshly
            initialized one.
        in_channels: Input channels. For torchvision models other than 3, the first 3-channel
            convolution is replaced; with pretrained weights its kernel is summed over RGB for
            1 channel, or the RGB kernel repeated and scaled by 3/in_channels otherwise.
        weights: A weights file (``.safetensors``, or a ``.pt``/``.pth`` state dict read with
            ``weights_only=True``), a torchvision weights name (``"DEFAULT"``,
            ``"IMAGENET1K_V2"``) or enum entry, or None for random initialization.
        **kwargs: Passed to the constructor (``progress=True`` shows torchvision's download
            progress; it is off by default).

    Raises:
        ModelError: Unknown name or bad constructor arguments.
        WeightsError: Weights missing, unsafe, offline and not cached, or not fitting.
    """
    arch = resolve_name(name)
    check_optional_int("num_classes", num_classes, error=ModelError)
    check_optional_int("in_channels", in_channels, error=ModelError)
    if arch in _SEEDS:
        seed = _SEEDS[arch]
        if kwargs.pop("progress", None) is not None:
            logger.debug("progress= ignored for the seed network %s", arch)
        if weights is not None and not looks_like_path(weights):
            raise WeightsError(
                f"weights {weights!r} is not a file, and the seed network {arch} has no "
                "named weights; give a .safetensors or .pt/.pth file"
            )
        try:
            model = seed.cls(
                num_classes=num_classes if num_classes is not None else seed.spec.num_classes,
                in_channels=in_channels if in_channels is not None else seed.spec.in_channels,
                **kwargs,
            )
        except TypeError as err:
            raise ModelError(
                f"bad arguments for {arch} ({err}); it takes num_classes and in_channels"
            ) from err
        if weights is not None:
            load_weights(model, weights)
        return model
    return _create_torchvision(arch, num_classes, in_channels, weights, kwargs)


def _create_torchvision(
    arch: str,
    num_classes: int | None,
    in_channels: int | None,
    weights: Any,
    kwargs: dict[str, Any],
) -> nn.Module:
    from torchvision.models import get_model

    kwargs = {"progress": False, **kwargs}
    entry = None
    if weights is not None and not looks_like_path(weights):
        entry = torchvision_weights(arch, weights)
    try:
        if entry is not None:
            model = build_torchvision_pretrained(arch, entry, kwargs)
        else:
            if num_classes is not None:
                kwargs["num_classes"] = num_classes
            model = get_model(arch, weights=None, **kwargs)
    except CnnlensError:
        raise
    except (TypeError, ValueError) as err:
        raise ModelError(f"bad arguments for {arch}: {err}") from err
    if entry is not None:
        pretrained = len(entry.meta["categories"])
        if num_classes is not None and num_classes != pretrained:
            _replace_head(model, arch, pretrained, num_classes)
    if in_channels is not None and in_channels != 3:
        _adapt_in_channels(model, arch, in_channels, pretrained=entry is not None)
    if weights is not None and entry is None:
        load_weights(model, weights)
    return model


def _replace_head(model: nn.Module, arch: str, old: int, new: int) -> None:
    head = None
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == old) or (
            isinstance(module, nn.Conv2d) and module.out_channels == old
        ):
            head = (name, module)
    if head is None:
        raise ModelError(
            f"cannot find the {old}-class head of {arch} to give it num_classes={new}; build "
            "it with weights=None and load your own weights instead"
        )
    name, old_layer = head
    factory = {"device": old_layer.weight.device, "dtype": old_layer.weight.dtype}
    if isinstance(old_layer, nn.Linear):
        layer: nn.Module = nn.Linear(
            old_layer.in_features, new, bias=old_layer.bias is not None, **factory
        )
    else:
        layer = nn.Conv2d(
            old_layer.in_channels,
            new,
            old_layer.kernel_size,
            old_layer.stride,
            old_layer.padding,
            bias=old_layer.bias is not None,
            **factory,
        )
    model.set_submodule(name, layer)
    logger.info("%s: replaced head %s (%d -> %d classes, random init)", arch, name, old, new)


def _adapt_in_channels(model: nn.Module, arch: str, in_channels: int, *, pretrained: bool) -> None:
    first = next(
        (
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1
        ),
        None,
    )
    if first is None:
        raise ModelError(f"cannot find the first 3-channel convolution of {arch} to adapt")
    name, conv = first
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    if pretrained:
        with torch.no_grad():
            w = conv.weight
            if in_channels == 1:
                new.weight.copy_(w.sum(dim=1, keepdim=True))
            else:
                reps = math.ceil(in_channels / 3)
                new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_channels] * (3 / in_channels))
            if conv.bias is not None and new.bias is not None:
                new.bias.copy_(conv.bias)
    model.set_submodule(name, new)
    logger.info("%s: first convolution %s now takes %d channels", arch, name, in_channels)


def is_seed(name: str) -> bool:
    """Whether ``name`` is one of the seed networks (after name resolution)."""
    return resolve_name(name) in _SEEDS
