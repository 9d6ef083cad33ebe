"""Hooks that live for one call, and the guarantee that the caller's model is left as it was.

:func:`frozen` puts the model in eval mode with parameters that do not require grad (so a
forward records no graph for the weights), and restores every submodule's train/eval flag and
every parameter's ``requires_grad`` on exit, also when an exception is raised.
:class:`capture` records the outputs of chosen layers during one forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def modes_restored(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag on exit, also when an exception is raised."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def frozen(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Evaluate ``model`` with its parameters frozen, restoring its state afterwards.

    With ``eval_mode`` (the default) the model runs in eval mode; without it each module keeps
    its flag, and the buffers of modules in train mode (BatchNorm's running statistics) are
    saved first and put back afterwards, so that the call leaves no trace either way.

    Example:
        >>> with frozen(model):                      # doctest: +SKIP
        ...     scores = model(x)
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    saved: list[tuple[Tensor, Tensor]] = []
    if not eval_mode:
        seen: set[int] = set()
        for m in model.modules():
            if m.training:
                for b in m.buffers(recurse=False):
                    if id(b) not in seen:
                        seen.add(id(b))
                        saved.append((b, b.detach().clone()))
    try:
        with modes_restored(model):
            if eval_mode:
                model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
    finally:
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


@contextmanager
def grad_enabled() -> Iterator[None]:
    """Enable autograd even inside the caller's ``torch.no_grad()`` or ``inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


class capture:
    """Record the outputs of ``modules`` during forward passes, for one ``with`` block.

    Each hooked output is handed on as a clone, so an in-place operation downstream (the
    in-place ReLU after a ResNet block's add) cannot alter the recorded activation. With
    ``track_grad`` the recorded activation requires grad: when nothing upstream does (the
    parameters are frozen and the input is plain), it becomes a leaf of the graph, so the
    backward pass stops there and costs no more than the layers above it.

    A module that runs several times in one forward keeps its last output.

    Example:
        >>> with frozen(model), capture([("layer4", model.layer4)]) as cap:  # doctest: +SKIP
        ...     out = model(x)
        >>> cap.outputs["layer4"].shape
    """

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module]],
        *,
        track_grad: bool = False,
        record_inputs: bool = False,
    ):
        self.modules = list(modules)
        self.track_grad = track_grad
        self.record_inputs = record_inputs
        self.outputs: dict[str, Tensor] = {}
        self.inputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, inputs: tuple, output: object) -> object:
            if self.record_inputs and inputs and isinstance(inputs[0], Tensor):
                self.inputs[name] = inputs[0]
            if not isinstance(output, Tensor):
                return None
            act = output
            if self.track_grad and torch.is_grad_enabled() and not act.requires_grad:
                act = act.detach().requires_grad_(True)
            self.outputs[name] = act
            self.calls[name] = self.calls.get(name, 0) + 1
            return act.clone()

        return hook

    def __enter__(self) -> capture:
        try:
            for name, module in self.modules:
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self.remove()
