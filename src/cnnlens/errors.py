"""Errors a user can cause. Each message is one sentence naming the argument, what was
expected and what exists; the CLI prints it alone and exits with status 2."""

from __future__ import annotations


class CnnlensError(Exception):
    """Base class of every error cnnlens raises for bad input."""


class LayerNotFoundError(CnnlensError, KeyError):
    """A layer name or module that is not part of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TargetError(CnnlensError, ValueError):
    """A target class that is out of range, of the wrong length or of the wrong kind."""


class InputError(CnnlensError, ValueError):
    """An input tensor or option with the wrong shape, type or value."""


class MethodNotFoundError(CnnlensError, KeyError):
    """An explanation method name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelError(CnnlensError, ValueError):
    """A model name that does not exist, or a model that lacks what a method needs."""


class WeightsError(CnnlensError, ValueError):
    """Weights that cannot be read safely or do not fit the model."""


class ImageError(CnnlensError, ValueError):
    """An image file that cannot be decoded or is refused (truncated, decompression bomb)."""


class DataError(CnnlensError, ValueError):
    """A dataset that is missing, malformed or unknown."""
