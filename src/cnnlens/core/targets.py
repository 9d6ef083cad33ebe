"""What to explain: turn a user's ``target`` into per-sample class indices and scores.

Accepted targets:

* ``None``: each image's top class;
* ``int``: the same class for every image;
* a sequence or 1-D tensor: one class per image;
* a (B, K) tensor, or ``topk=K``: K classes per image (maps become (B, K, H, W));
* a callable ``f(outputs) -> (B,)``: any score of the model's output (multi-label, a
  segmentation mask's mean, a field of a dict or tuple output).

Class indices are read from the scores tensor that ``output=`` selects
(:mod:`cnnlens.core.outputs`). A callable target gets the selected output when ``output`` is
given, and the model's whole output otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cnnlens.core.checks import check_int
from cnnlens.core.outputs import OutputLike, describe, select_output
from cnnlens.errors import TargetError

TargetLike = None | int | Sequence[int] | Tensor | Callable[[Any], Tensor]


@dataclass(frozen=True)
class WithOutput:
    """A target together with the ``output=`` choice of one call, handed through a method's
    ``explain_batch`` as its target (see :meth:`cnnlens.methods.base.Explainer.__call__`)."""

    target: Any
    output: OutputLike


@dataclass(frozen=True)
class Targets:
    """Resolved targets of one batch.

    Attributes:
        indices: long tensor (B, K) of class indices (-1 for a callable target).
        fn: the user's callable, when the target was one.
        per_image: True when maps have one class per image ((B, H, W)), False for (B, K, H, W).
        output: the ``output=`` choice (None: automatic).
        chosen: what it selected, as recorded in ``Explanation.output``.
    """

    indices: Tensor
    fn: Callable[[Any], Tensor] | None
    per_image: bool
    output: OutputLike = None
    chosen: str = "tensor"

    def logits(self, outputs: Any) -> Tensor:
        """The (B, N) scores tensor of ``outputs`` selected by :attr:`output`."""
        return select_output(outputs, self.output)

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def public(self) -> Tensor:
        """The indices as exposed in :attr:`Explanation.targets`: (B,) or (B, K)."""
        return self.indices[:, 0] if self.per_image else self.indices

    def scores(self, outputs: Any) -> Tensor:
        """The scores to explain, (B, K), differentiable with respect to ``outputs``."""
        if self.fn is not None:
            s = self.fn(outputs if self.output is None else self.logits(outputs))
            if not isinstance(s, Tensor):
                raise TargetError(
                    f"target callable must return a tensor of shape (B,), got {type(s).__name__}"
                )
            batch = self.indices.shape[0]
            if s.dim() == 0 and batch == 1:
                s = s.reshape(1)
            if s.shape != (batch,):
                raise TargetError(
                    f"target callable must return one score per image, shape ({batch},); "
                    f"got {tuple(s.shape)}"
                )
            return s.unsqueeze(1)
        logits = self.logits(outputs)
        return logits.gather(1, self.indices.to(logits.device))


def logits_of(outputs: Any, output: OutputLike = None) -> Tensor:
    """The (B, N) score tensor of a model's output chosen by ``output``, or a clear error."""
    return select_output(outputs, output)


def resolve_targets(
    target: TargetLike,
    outputs: Any,
    topk: int | None = None,
    *,
    batch: int | None = None,
    output: OutputLike = None,
) -> Targets:
    """Resolve ``target`` (and ``topk``) against the model's ``outputs`` for one batch.

    ``output`` chooses the scores tensor (see :mod:`cnnlens.core.outputs`); a
    :class:`WithOutput` target carries its own.

    Raises:
        TargetError: for an index out of range, a sequence of the wrong length, a bad
            ``topk`` or a target of an unsupported kind; never a silent truncation.
    """
    if isinstance(target, WithOutput):
        target, output = target.target, target.output
    if callable(target) and not isinstance(target, Tensor):
        if topk is not None:
            raise TargetError("topk cannot be combined with a callable target")
        batch = _batch_size(outputs) if batch is None else batch
        chosen = "whole output" if output is None else describe(output, outputs)
        idx = torch.full((batch, 1), -1, dtype=torch.long)
        return Targets(idx, target, True, output, chosen)

    logits = select_output(outputs, output)
    chosen = describe(output, outputs)
    batch, n_classes = logits.shape
    device = logits.device
    if topk is not None:
        if target is not None:
            raise TargetError("give either target or topk, not both")
        check_int("topk", topk, minimum=1, maximum=n_classes, error=TargetError)
        idx = logits.detach().float().topk(topk, dim=1).indices
        return Targets(idx.long(), None, False, output, chosen)
    if target is None:
        idx = logits.detach().float().argmax(dim=1, keepdim=True)
        return Targets(idx.long(), None, True, output, chosen)

    per_image = True
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index, got {target!r}")
    if isinstance(target, int):
        if not -(2**62) < target < 2**62:  # torch.full would overflow int64 first
            raise TargetError(f"target must be a class index of the model's outputs, got {target}")
        idx = torch.full((batch, 1), target, dtype=torch.long, device=device)
    else:
        try:
            t = torch.as_tensor(target, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TargetError(
                "target must be None, an int, a sequence of ints, a (B, K) tensor or a "
                f"callable; got {type(target).__name__}"
            ) from err
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TargetError(f"target must hold integer class indices, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            if t.numel() != batch:
                raise TargetError(
                    f"target has {t.numel()} entries but the batch has {batch} images; "
                    "give one class per image, an int, or a (B, K) tensor"
                )
            idx = t.long().unsqueeze(1)
        elif t.dim() == 2:
            if t.shape[0] != batch or t.shape[1] < 1:
                raise TargetError(
                    f"a 2-D target must have shape ({batch}, K) with K >= 1, got {tuple(t.shape)}"
                )
            idx = t.long()
            per_image = False
        else:
            raise TargetError(f"target must be 0-, 1- or 2-D, got shape {tuple(t.shape)}")
    bad = (idx < 0) | (idx >= n_classes)
    if bool(bad.any()):
        value = int(idx[bad][0])
        raise TargetError(
            f"target {value} is out of range: the model has {n_classes} classes "
            f"(0..{n_classes - 1})"
        )
    return Targets(idx, None, per_image, output, chosen)


def _batch_size(outputs: Any) -> int:
    if isinstance(outputs, Tensor):
        return int(outputs.shape[0])
    if isinstance(outputs, dict):
        return _batch_size(next(iter(outputs.values())))
    if isinstance(outputs, (tuple, list)):
        return _batch_size(outputs[0])
    raise TargetError(f"cannot find the batch size of a model output of type {type(outputs)}")
