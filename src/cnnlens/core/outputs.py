"""Scores from any model output: which part of what ``forward`` returns holds the (B, N) scores.

``output=`` of :func:`cnnlens.explain` says it:

* ``None`` (automatic): a tensor as it is; an object's ``.logits`` (Hugging Face outputs);
  a mapping's ``"logits"`` or ``"out"`` (torchvision segmentation models); anything else
  raises a :class:`~cnnlens.errors.TargetError` that lists the keys or fields to choose from;
* a key (``"aux"``) of a mapping, or an attribute name of an object;
* an index (``0``) of a tuple or list;
* a callable ``f(outputs) -> (B, N)``.

The selected tensor must be (B, N) (a (B,) tensor is read as one unit, (B, 1)); every target
form (an int, one class per image, ``topk``, a (B, K) tensor) then works on it as on a
classifier's logits. :func:`describe` gives the text recorded in ``Explanation.output``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from cnnlens.errors import TargetError

__all__ = ["AUTO_KEYS", "OutputLike", "describe", "detach_outputs", "fields_of", "select_output"]

OutputLike = None | str | int | Callable[[Any], Tensor]

#: The mapping keys the automatic choice accepts, in order of preference.
AUTO_KEYS = ("logits", "out")


def fields_of(outputs: Any) -> list[str]:
    """The keys, indices or fields a user can choose from in ``outputs`` (for messages)."""
    if isinstance(outputs, Mapping):
        return [repr(k) for k in outputs]
    if isinstance(outputs, (tuple, list)):
        fields = getattr(outputs, "_fields", None)  # a namedtuple: names and indices
        if fields:
            return [repr(f) for f in fields]
        return [str(i) for i in range(len(outputs))]
    if dataclasses.is_dataclass(outputs):
        return [repr(f.name) for f in dataclasses.fields(outputs)]
    return [repr(k) for k in vars(outputs)] if hasattr(outputs, "__dict__") else []


def _shape(value: Any) -> str:
    return f"tensor {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def _automatic(outputs: Any) -> tuple[Tensor, str]:
    if isinstance(outputs, Tensor):
        return outputs, "tensor"
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits, "logits"
    if isinstance(outputs, Mapping):
        for key in AUTO_KEYS:
            if isinstance(outputs.get(key), Tensor):
                return outputs[key], key
    fields = fields_of(outputs)
    listed = f" with fields {', '.join(fields)}" if fields else ""
    raise TargetError(
        f"the model returns a {type(outputs).__name__}{listed}, not a scores tensor; choose "
        "the scores with output= (a key or field name, an index, or a callable "
        "f(outputs) -> (B, N)), or pass target as a callable f(outputs) -> (B,)"
    )


def _pick(outputs: Any, output: str | int) -> Any:
    if isinstance(outputs, Mapping):
        if output in outputs:
            return outputs[output]
    elif isinstance(output, int) and isinstance(outputs, (tuple, list)):
        if -len(outputs) <= output < len(outputs):
            return outputs[output]
    elif isinstance(output, str) and hasattr(outputs, output):
        return getattr(outputs, output)
    fields = fields_of(outputs)
    raise TargetError(
        f"output={output!r} is not part of the model's {type(outputs).__name__} output; "
        f"choose one of: {', '.join(fields) or '(none)'}, or give a callable"
    )


def select_output(outputs: Any, output: OutputLike = None) -> Tensor:
    """The (B, N) scores tensor of ``outputs`` chosen by ``output`` (see the module).

    Raises:
        TargetError: when nothing or something other than a (B, N) tensor is selected; the
            message lists what can be chosen.
    """
    if output is None:
        chosen, _ = _automatic(outputs)
    elif isinstance(output, bool):
        raise TargetError(f"output must be None, a key, an index or a callable; got {output!r}")
    elif isinstance(output, (str, int)):
        chosen = _pick(outputs, output)
    elif callable(output):
        chosen = output(outputs)
    else:
        raise TargetError(
            f"output must be None, a key, an index or a callable; got {type(output).__name__}"
        )
    if not isinstance(chosen, Tensor):
        raise TargetError(
            f"output={describe(output, outputs)!r} selects a {type(chosen).__name__}, not a "
            "(B, N) scores tensor"
        )
    if chosen.dim() == 1:
        return chosen.unsqueeze(1)
    if chosen.dim() != 2:
        raise TargetError(
            f"output={describe(output, outputs)!r} selects a tensor of shape "
            f"{tuple(chosen.shape)}, not class scores (B, N); choose another output, or pass "
            "target as a callable f(outputs) -> (B,) (a segmentation or detection score)"
        )
    return chosen


def describe(output: OutputLike, outputs: Any = None) -> str:
    """What ``output`` selects, as recorded in ``Explanation.output``: ``"tensor"``,
    ``"logits"``, ``"out"`` (automatic), the key or index given, or the callable's name."""
    if output is None:
        if outputs is None:
            return "automatic"
        try:
            return _automatic(outputs)[1]
        except TargetError:
            return "automatic"
    if isinstance(output, (str, int)):
        return str(output)
    return f"callable {getattr(output, '__name__', type(output).__name__)}"


def detach_outputs(outputs: Any) -> Any:
    """``outputs`` with every tensor detached, through mappings, tuples, lists, namedtuples
    and dataclasses (so an Explanation never holds the autograd graph)."""
    if isinstance(outputs, Tensor):
        return outputs.detach()
    if isinstance(outputs, Mapping):
        items = {k: detach_outputs(v) for k, v in outputs.items()}
        try:
            return type(outputs)(**items) if hasattr(outputs, "logits") else type(outputs)(items)
        except TypeError:
            return items
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):
        return type(outputs)(*(detach_outputs(v) for v in outputs))
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(detach_outputs(v) for v in outputs)
    if dataclasses.is_dataclass(outputs) and not isinstance(outputs, type):
        changes = {
            f.name: detach_outputs(getattr(outputs, f.name))
            for f in dataclasses.fields(outputs)
            if f.init
        }
        try:
            return dataclasses.replace(outputs, **changes)
        except (TypeError, ValueError):
            return outputs
    return outputs
