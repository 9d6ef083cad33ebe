"""One registry of explanation methods: ``@register(name)`` and :func:`list_methods`.

The registry imports no method: a method registers itself where it is defined, and the
built-in ones are registered when :mod:`cnnlens` (its ``__init__``) imports
:mod:`cnnlens.methods`, which any ``import cnnlens...`` does first.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cnnlens.errors import InputError, MethodNotFoundError

T = TypeVar("T")
_METHODS: dict[str, type] = {}


def register(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator that registers an explanation method under ``name``.

    A name can be registered once; a second registration raises ``ValueError``.

    Example:
        >>> @register("mycam")                       # doctest: +SKIP
        ... class MyCAM(GradientCAM): ...
    """

    def decorate(cls: type[T]) -> type[T]:
        if name in _METHODS:
            raise ValueError(f"method name {name!r} is already registered by {_METHODS[name]}")
        _METHODS[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def list_methods() -> list[str]:
    """Sorted names of every registered explanation method."""
    return sorted(_METHODS)


def get_method(name: str) -> type[Any]:
    """The method class registered under ``name``.

    Raises:
        MethodNotFoundError: when no method has that name; the message lists close names.
    """
    key = name.lower().replace("-", "_") if name not in _METHODS else name
    aliases = {
        "grad_cam": "gradcam",
        "gradcampp": "gradcam++",
        "grad_cam++": "gradcam++",
        "expected_gradients": "gradient_shap",  # gradient_shap with stdevs=0 (the default)
    }
    key = aliases.get(key, key)
    if key in _METHODS:
        return _METHODS[key]
    close = difflib.get_close_matches(name, list(_METHODS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise MethodNotFoundError(
        f"method {name!r} is not registered{hint} (available: {', '.join(sorted(_METHODS))})"
    )


def preset_options(methods: Sequence[str], tier: str = "light") -> dict[str, dict[str, Any]]:
    """The ``tier`` cost preset (``"light"`` or ``"tiny"``) each method declares on its class.

    Methods without that preset are left out (they run with their defaults).

    Example:
        >>> preset_options(["gradcam", "integrated_gradients"])["integrated_gradients"]
        {'n_steps': 16, 'internal_batch_size': 64}
    """
    out: dict[str, dict[str, Any]] = {}
    for name in methods:
        preset = getattr(get_method(name), "presets", {}).get(tier)
        if preset:
            out[name] = dict(preset)
    return out


def check_options(cls: type, options: dict[str, Any]) -> None:
    """Refuse an option the method's class does not take, naming the method and its options
    (a method whose constructor takes ``**options`` checks them itself)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n in params if n not in ("self", "model", "layer")]
    for name in options:
        if name not in params or name in ("self", "model"):
            hint = (
                "; move the model and x with .to(device) instead"
                if name in ("device", "cuda")
                else ""
            )
            raise InputError(
                f"method {cls.name!r} takes no option {name!r}; its options: "
                f"{', '.join(known) or 'none'}{hint}"
            )
