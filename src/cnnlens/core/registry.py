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


# the families, in the order lists and reports show them (a method's ``family`` class attribute)
FAMILIES: tuple[str, ...] = ("CAM", "gradient", "propagation", "perturbation", "other")


def list_methods(by_family: bool = False) -> list[str]:
    """Names of every registered explanation method: sorted, or with ``by_family`` family by
    family (:data:`FAMILIES`: CAM, gradient, propagation, perturbation), see
    :func:`by_family_order`."""
    return by_family_order(_METHODS) if by_family else sorted(_METHODS)


def by_family_order(names: Sequence[str]) -> list[str]:
    """``names`` ordered family by family (:data:`FAMILIES`); within a family in the order the
    methods registered (``methods/__init__.py`` imports the founding method of each family
    first: cam, gradcam, gradcam++, ...); unregistered names last."""
    registered = list(_METHODS)

    def key(name: str) -> tuple[int, int]:
        family = getattr(_METHODS.get(name), "family", "other")
        rank = FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)
        return (rank, registered.index(name) if name in _METHODS else len(registered))

    return sorted(names, key=key)


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
