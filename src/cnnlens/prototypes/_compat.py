"""The few things this package takes from other parts of cnnlens, with small local fallbacks.

The shared implementations (``cnnlens.core.layers``, ``cnnlens.core.capture``,
``cnnlens.data``) are used when they can be imported; the fallbacks below only keep this
package usable on its own and behave the same way.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from cnnlens.errors import InputError, LayerNotFoundError

# mean/std of the normalization presets named in the design, used only when
# cnnlens.data is not importable.
_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "mnist": ((0.1307,), (0.3081,)),
    "none": ((0.0,), (1.0,)),
}


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """``(dotted_name, module)`` of a layer given by dotted name or as a submodule."""
    try:
        from cnnlens.core.layers import resolve_layer as shared
    except ImportError:  # pragma: no cover - only before cnnlens.core exists
        shared = None
    if shared is not None:
        return shared(model, layer)
    if isinstance(layer, nn.Module):  # pragma: no cover
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise LayerNotFoundError(f"layer module {type(layer).__name__} is not part of the model")
    try:  # pragma: no cover
        return layer, model.get_submodule(layer)
    except AttributeError:  # pragma: no cover
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4) or names[-5:]
        raise LayerNotFoundError(
            f"layer {layer!r} not found in {type(model).__name__}; candidates: {', '.join(close)}"
        ) from None


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the block; every flag restored afterwards."""
    try:
        from cnnlens.core.capture import frozen as shared
    except ImportError:  # pragma: no cover - only before cnnlens.core exists
        shared = None
    if shared is not None:
        with shared(model):
            yield model
        return
    modes = [(m, m.training) for m in model.modules()]  # pragma: no cover
    flags = [(p, p.requires_grad) for p in model.parameters()]  # pragma: no cover
    try:  # pragma: no cover
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:  # pragma: no cover
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


@contextmanager
def grad_enabled() -> Iterator[None]:
    """Autograd on, also inside the caller's ``torch.no_grad()`` or ``inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


F = TypeVar("F", bound=Callable[..., Any])


def with_grad(func: F) -> F:
    """Run ``func`` with autograd on (see :func:`grad_enabled`), so that tensors it creates
    are ordinary ones even when the caller is inside ``torch.inference_mode()``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with grad_enabled():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Scaling:
    """Maps images between display space ([0, 1]) and the model's input space.

    $$x_{model} = (x_{display} - \\mu) / \\sigma$$
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return mean, std

    def normalize(self, x: Tensor) -> Tensor:
        """Display space -> model input space (x is (..., C, H, W))."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Model input space -> display space (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean


def scaling(preset: Any, channels: int) -> Scaling:
    """A :class:`Scaling` for ``preset``: None, a preset name, or an object with mean and std.

    A one-value mean/std is broadcast to ``channels``; any other length must match it.

    Raises:
        InputError: for an unknown preset name or a mean/std that does not fit ``channels``.
    """
    if preset is None:
        name, mean, std = "none", (0.0,), (1.0,)
    elif isinstance(preset, str):
        name = preset
        try:
            from cnnlens.data import get_preset
        except ImportError:  # pragma: no cover - only before cnnlens.data exists
            get_preset = None
        if get_preset is not None:
            found = get_preset(preset)
            mean, std = tuple(map(float, found.mean)), tuple(map(float, found.std))
        elif preset in _PRESETS:  # pragma: no cover
            mean, std = _PRESETS[preset]
        else:  # pragma: no cover
            raise InputError(
                f"preset {preset!r} is not known; expected one of {', '.join(sorted(_PRESETS))}"
            )
    else:
        name = str(getattr(preset, "name", "custom"))
        try:
            mean = tuple(float(v) for v in preset.mean)
            std = tuple(float(v) for v in preset.std)
        except (AttributeError, TypeError) as err:
            raise InputError(
                f"preset must be None, a preset name or an object with mean and std, got "
                f"{type(preset).__name__}"
            ) from err
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise InputError(
            f"preset {name!r} has {len(mean)} channel values but the images have {channels} "
            "channels"
        )
    return Scaling(name, mean, std)


def as_index_list(value: int | Sequence[int] | Tensor, what: str) -> list[int]:
    """An int, a sequence of ints or a 0-/1-D integer tensor as a list of ints."""
    if isinstance(value, Tensor):
        if value.dim() > 1 or value.is_floating_point():
            raise InputError(f"{what} must be an int or a 1-D integer sequence, got {value!r}")
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, bool):
        raise InputError(f"{what} must be an int or a sequence of ints, got a bool")
    if isinstance(value, int):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise InputError(
            f"{what} must be an int or a sequence of ints, got {type(value).__name__}"
        ) from None
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise InputError(f"{what} must be a non-empty sequence of ints, got {items!r}")
    return items


def check_positive_int(value: Any, name: str) -> None:
    """Raise InputError unless ``value`` is an int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU float32 when none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


@contextmanager
def progress_bar(enabled: bool, total: int, description: str) -> Iterator[Any]:
    """A rich progress bar when ``enabled`` (an object with ``advance()``), else a no-op."""
    if not enabled:

        class _Null:
            def advance(self, n: int = 1) -> None:
                pass

        yield _Null()
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)

        class _Bar:
            def advance(self, n: int = 1) -> None:
                bar.advance(task, n)

        yield _Bar()
