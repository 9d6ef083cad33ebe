"""Hooks that live for one call, and the guarantee that the caller's model is left as it was.

:func:`frozen` puts the model in eval mode with parameters that do not require grad (so a
forward records no graph for the weights), and restores every submodule's train/eval flag and
every parameter's ``requires_grad`` on exit, also when an exception is raised.
:class:`capture` records the outputs of chosen layers during one forward.

Threads. A model may be shared by threads that explain with it at the same time. The state
:func:`frozen` changes is the model's own, so it is shared: the first call to enter saves
it and applies the frozen state, later calls in the same mode join it (a count per model,
under one lock), and the last call to leave restores it; a call that wants the other mode
(``eval_mode=False`` while ``True`` calls run) waits for the model to be free. Hooks fire
for every thread's forward of the module they sit on, so every hook cnnlens registers on a
caller's model acts only in the thread that registered it (:func:`this_thread_only`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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


def this_thread_only(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook`` made to act only in the thread that calls this: a forward of the same module
    in another thread (a model shared by threads) passes through it untouched."""
    owner = threading.get_ident()

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        return hook(*args, **kwargs)

    return guarded


class _FrozenState:
    """The state of one model saved by the first of its concurrent :func:`frozen` calls."""

    def __init__(self, model: nn.Module, eval_mode: bool) -> None:
        self.eval_mode = eval_mode
        self.count = 0
        self.threads: dict[int, int] = {}
        self.modes = [(m, m.training) for m in model.modules()]
        self.flags = [(p, p.requires_grad) for p in model.parameters()]
        self.buffers: list[tuple[Tensor, Tensor]] = []
        if not eval_mode:
            seen: set[int] = set()
            for m in model.modules():
                if m.training:
                    for b in m.buffers(recurse=False):
                        if id(b) not in seen:
                            seen.add(id(b))
                            self.buffers.append((b, b.detach().clone()))
        try:
            if eval_mode:
                model.eval()
            for p, _ in self.flags:
                p.requires_grad_(False)
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        for m, training in self.modes:
            m.training = training
        for p, requires_grad in self.flags:
            p.requires_grad_(requires_grad)
        with torch.no_grad():
            for b, value in self.buffers:
                b.copy_(value)


_FROZEN_LOCK = threading.Condition()
_FROZEN: dict[int, tuple[nn.Module, _FrozenState]] = {}


def _join(model: nn.Module, eval_mode: bool) -> _FrozenState | None:
    """Enter the model's shared frozen state (waiting while calls of the other mode hold it);
    None for a nested call of the other mode in a thread that already holds it."""
    me = threading.get_ident()
    with _FROZEN_LOCK:
        while True:
            entry = _FROZEN.get(id(model))
            if entry is None or entry[0] is not model:
                state = _FrozenState(model, eval_mode)
                _FROZEN[id(model)] = (model, state)
                break
            state = entry[1]
            if state.eval_mode == eval_mode:
                break
            if me in state.threads:
                return None
            _FROZEN_LOCK.wait()
        state.count += 1
        state.threads[me] = state.threads.get(me, 0) + 1
        return state


def _leave(model: nn.Module, state: _FrozenState) -> None:
    me = threading.get_ident()
    with _FROZEN_LOCK:
        state.count -= 1
        state.threads[me] -= 1
        if not state.threads[me]:
            del state.threads[me]
        if state.count == 0:
            del _FROZEN[id(model)]
            state.restore()
            _FROZEN_LOCK.notify_all()


@contextmanager
def frozen(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Evaluate ``model`` with its parameters frozen, restoring its state afterwards.

    With ``eval_mode`` (the default) the model runs in eval mode; without it each module keeps
    its flag, and the buffers of modules in train mode (BatchNorm's running statistics) are
    saved first and put back afterwards, so that the call leaves no trace either way.

    Concurrent calls on one model share one saved state (see the module docstring): the
    model is restored exactly when the last of them ends. A nested call of the other mode in
    the same thread saves and restores on its own.

    Example:
        >>> with frozen(model):                      # doctest: +SKIP
        ...     scores = model(x)
    """
    state = _join(model, eval_mode)
    if state is None:  # nested, other mode, same thread: nobody else can enter meanwhile
        nested = _FrozenState(model, eval_mode)
        try:
            yield model
        finally:
            nested.restore()
        return
    try:
        yield model
    finally:
        _leave(model, state)


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
                hook = this_thread_only(self._hook(name))
                self._handles.append(module.register_forward_hook(hook))
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
