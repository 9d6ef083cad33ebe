"""cnnlens: make the decisions of convolutional neural networks visible and checkable.

>>> import cnnlens
>>> exp = cnnlens.explain(model, x, method="gradcam")      # doctest: +SKIP
>>> exp.maps.shape                                          # (B, H, W), values in [0, 1]
"""

from __future__ import annotations

import importlib
from typing import Any

import cnnlens.methods  # noqa: F401  (registers the built-in methods)
from cnnlens._version import __version__ as __version__
from cnnlens.api import explain
from cnnlens.core.explanation import Explanation
from cnnlens.core.layers import clear_cache
from cnnlens.core.registry import get_method, list_methods, register
from cnnlens.errors import CnnlensError
from cnnlens.summary import summary

# Heavier parts are imported on first use, so `import cnnlens` stays light.
_LAZY = {
    "load_image": ("cnnlens.data", "load_image"),
    "models": ("cnnlens.models", None),
    "data": ("cnnlens.data", None),
    "metrics": ("cnnlens.metrics", None),
    "viz": ("cnnlens.viz", None),
    "prototypes": ("cnnlens.prototypes", None),
    "report": ("cnnlens.report", None),
    "training": ("cnnlens.training", None),
}

__all__ = [
    "CnnlensError",
    "Explanation",
    "clear_cache",
    "explain",
    "get_method",
    "list_methods",
    "load_image",
    "register",
    "summary",
    *sorted(k for k, (_, attr) in _LAZY.items() if attr is None),
]


def __dir__() -> list[str]:
    """The package's names with the lazily imported parts (``viz``, ``data``, ...)."""
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cnnlens' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
