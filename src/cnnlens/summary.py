r"""Layer-by-layer model summary: output shapes, parameters, mult-adds, activation memory.

One forward pass of a zero input (under ``torch.no_grad()``, in eval mode) with a hook on
every module records each *call*: a module used twice is listed twice, its parameters
counted once. Works on any device, including ``meta`` (shapes only, no memory), so the
parameter count of a 600M-parameter model costs nothing.

Mult-adds (multiply-accumulate operations) are half the FLOPs that PyTorch's own
``torch.utils.flop_counter`` formulas give for the operators run inside each call, so they
cover convolutions (groups and transposed included), linear layers, and the matrix products
of attention even when written functionally (``F.linear``, ``torch.matmul``,
``scaled_dot_product_attention``):

$$\text{MACs}_{conv} = |\text{out}| \cdot \frac{C_{in}}{g} \cdot \prod_i k_i, \qquad
\text{MACs}_{linear} = |\text{out}| \cdot d_{in}, \qquad
\text{MACs}_{A B} = m \, n \, k$$

where $|\cdot|$ is the number of elements (batch included). Bias additions, normalization,
activations, pooling and element-wise arithmetic (residual additions) count 0, the
convention of the published figures (ResNet-18: 1.81 G at 224x224; the totals equal the
``_ops`` of torchvision's weight metadata for the convolutional models).

>>> from cnnlens import summary
>>> s = summary(model, (3, 224, 224))                         # doctest: +SKIP
>>> s.total_params, s.mult_adds                               # doctest: +SKIP
>>> print(s)                                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlens.core.checks import check_optional_int
from cnnlens.core.device import model_device, model_device_dtype
from cnnlens.errors import InputError

__all__ = ["LayerRow", "ModelSummary", "summary"]


@dataclass
class LayerRow:
    """One call of one module (or, with ``depth``, one collapsed sub-tree).

    Attributes:
        name: Dotted module name (``"layer1.0.conv1"``); the model's class name for the root.
        type: Module class name.
        depth: Call nesting level (top-level children are 1).
        kernel_size: Kernel size for convolutions and pooling, else None.
        output_shape: Shape of the output; a list of shapes for tuple outputs, a dict for
            mapping outputs, None for anything else.
        params: Parameters first used by this row (a module called again shows 0).
        mult_adds: Multiply-accumulate operations of this call (and its sub-tree).
        output_bytes: Bytes of this call's output tensors.
        call: 1 for a module's first call, 2 for its second, ...
    """

    name: str
    type: str
    depth: int
    kernel_size: tuple[int, ...] | None
    output_shape: Any
    params: int
    mult_adds: int
    output_bytes: int
    call: int = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "name": self.name,
            "type": self.type,
            "depth": self.depth,
            "kernel_size": list(self.kernel_size) if self.kernel_size is not None else None,
            "output_shape": self.output_shape,
            "params": self.params,
            "mult_adds": self.mult_adds,
            "output_bytes": self.output_bytes,
            "call": self.call,
        }


@dataclass
class ModelSummary:
    """Result of :func:`summary`.

    Attributes:
        model: Class name of the model.
        input_size: (B, C, H, W) used.
        rows: One per module call (leaves; or collapsed at ``depth``).
        total_params: Unique parameters of the model.
        trainable_params: Those with ``requires_grad``.
        mult_adds: Total multiply-accumulate operations for the batch.
        activation_bytes: Bytes of the outputs of all leaf-module calls.
        param_bytes: Bytes of the unique parameters.
        input_bytes: Bytes of the input.
        unlisted_params: Parameters in no row (held directly by containers, e.g. a ViT's
            position embedding, or in modules never called, e.g. an inactive aux head).
        depth: The ``depth`` the rows were collapsed to (None: every leaf).
    """

    model: str
    input_size: tuple[int, ...]
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    mult_adds: int = 0
    activation_bytes: int = 0
    param_bytes: int = 0
    input_bytes: int = 0
    unlisted_params: int = 0
    depth: int | None = None

    @property
    def non_trainable_params(self) -> int:
        """Parameters with ``requires_grad=False``."""
        return self.total_params - self.trainable_params

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with ``model``, ``input_size``, ``depth``, ``rows``, ``totals``."""
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "depth": self.depth,
            "rows": [row.to_dict() for row in self.rows],
            "totals": {
                "params": self.total_params,
                "trainable_params": self.trainable_params,
                "non_trainable_params": self.non_trainable_params,
                "unlisted_params": self.unlisted_params,
                "mult_adds": self.mult_adds,
                "activation_bytes": self.activation_bytes,
                "param_bytes": self.param_bytes,
                "input_bytes": self.input_bytes,
            },
        }

    def totals_lines(self) -> list[str]:
        """The totals as human-readable lines."""
        lines = [
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
        ]
        if self.unlisted_params:
            lines.append(f"Params outside the listed rows: {self.unlisted_params:,}")
        lines += [
            f"Mult-adds: {format_count(self.mult_adds)} ({self.mult_adds:,})",
            f"Input size: {format_bytes(self.input_bytes)}",
            f"Activation memory (leaf outputs): {format_bytes(self.activation_bytes)}",
            f"Params size: {format_bytes(self.param_bytes)}",
        ]
        return lines

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The summary table as text: ``(header, one row of cells per layer)``; the last two
        columns (parameters, mult-adds) are numbers, aligned right."""
        header = ["Layer", "Type", "Kernel", "Output shape", "Params", "Mult-adds"]
        body = [
            [
                display_name(row),
                row.type,
                format_kernel(row.kernel_size),
                format_shape(row.output_shape),
                f"{row.params:,}",
                f"{row.mult_adds:,}",
            ]
            for row in self.rows
        ]
        return header, body

    def __str__(self) -> str:
        header, body = self.table()
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        right = {4, 5}

        def fmt(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = "-" * len(fmt(["-" * w for w in widths]))
        title = f"{self.model} summary, input {list(self.input_size)}"
        lines = [title, rule, fmt(header), rule, *(fmt(r) for r in body), rule]
        return "\n".join([*lines, *self.totals_lines()])


# ---------------------------------------------------------------- formatting helpers


def display_name(row: LayerRow) -> str:
    """The row's name with ``(call N)`` for repeated calls."""
    return row.name + (f" (call {row.call})" if row.call > 1 else "")


def format_kernel(kernel: tuple[int, ...] | None) -> str:
    """``(3, 3)`` -> ``"3x3"``; None -> ``""``."""
    return "x".join(str(k) for k in kernel) if kernel else ""


def format_shape(shape: Any) -> str:
    """A shape, list of shapes or dict of shapes as compact text."""
    if shape is None:
        return "-"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {format_shape(v)}" for k, v in shape.items()) + "}"
    if (shape and isinstance(shape[0], (list, dict))) or shape == []:
        return "(" + ", ".join(format_shape(s) for s in shape) + ")"
    return "[" + ", ".join(str(s) for s in shape) + "]"


def format_count(n: float) -> str:
    """1_814_000_000 -> ``"1.81 G"``."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return str(int(n))


def format_bytes(n: float) -> str:
    """Bytes in binary units (``"44.59 MiB"``)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------- counting


def _shape_of(value: Any) -> Any:
    if isinstance(value, Tensor):
        return list(value.shape)
    if isinstance(value, dict):
        return {str(k): _shape_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shape_of(v) for v in value]
    return None


def _bytes_of(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_bytes_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_bytes_of(v) for v in value)
    return 0


def _kernel(module: nn.Module) -> tuple[int, ...] | None:
    k = getattr(module, "kernel_size", None)
    if k is None:
        return None
    if isinstance(k, int):
        name = type(module).__name__
        dims = 3 if name.endswith("3d") else 1 if name.endswith("1d") else 2
        return (k,) * dims
    try:
        return tuple(int(v) for v in k)
    except (TypeError, ValueError):
        return None


@dataclass
class _Call:
    name: str
    module: nn.Module
    parent: int | None
    level: int
    call: int
    has_child: bool = False
    output: Any = None
    output_bytes: int = 0
    flops_start: int = 0
    flops: int = 0  # inclusive: this call and everything it called
    done: bool = False


def _input_shape(input_size: Sequence[int]) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in input_size)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"input_size must be (C, H, W) or (B, C, H, W) integers, got {input_size!r}"
        ) from err
    if len(dims) not in (3, 4) or min(dims) < 1:
        raise InputError(
            f"input_size must be (C, H, W) or (B, C, H, W) of positive integers, got "
            f"{tuple(input_size)!r}"
        )
    return dims if len(dims) == 4 else (1, *dims)


def summary(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    depth: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> ModelSummary:
    """Summarize ``model`` layer by layer for an input of ``input_size``.

    The model is not changed: hooks are removed in ``finally`` and every submodule's
    train/eval flag is restored; the forward pass runs in eval mode under ``no_grad``.

    Args:
        model: Any ``nn.Module`` taking one image batch.
        input_size: (C, H, W) (batch 1) or (B, C, H, W).
        depth: None lists every leaf call; N collapses everything below nesting level N into
            its ancestor at level N (0: one row for the whole model).
        device: Device of the zero input (default: the model's; ``meta`` works).
        dtype: Dtype of the input (default: the model's floating dtype, else float32).

    Returns:
        The rows and totals (see :class:`ModelSummary`).

    Raises:
        InputError: A bad ``input_size`` or ``depth``, or an input the model cannot take
            (the message names the layer that failed).

    Example:
        >>> s = summary(torchvision.models.resnet18(), (3, 224, 224))   # doctest: +SKIP
        >>> s.total_params
        11689512
    """
    shape = _input_shape(input_size)
    check_optional_int("depth", depth, minimum=0)
    if device is None:
        device = model_device(model)
    if dtype is None:
        dtype = model_device_dtype(model)[1] or torch.float32
    x = torch.zeros(shape, device=device, dtype=dtype)

    calls: list[_Call] = []
    stack: list[int] = []
    counts: dict[str, int] = {}
    names: dict[int, str] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), n)
    root_name = type(model).__name__

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = names.get(id(module), "") or root_name
        counts[name] = counts.get(name, 0) + 1
        parent = stack[-1] if stack else None
        if parent is not None:
            calls[parent].has_child = True
        call = _Call(name, module, parent, len(stack), counts[name])
        call.flops_start = counter.get_total_flops()
        calls.append(call)
        stack.append(len(calls) - 1)

    def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        # pop to this module's own entry (robust to a child whose hook did not run)
        while stack:
            idx = stack.pop()
            if calls[idx].module is module:
                break
        else:  # pragma: no cover - a post hook without its pre hook
            return
        c = calls[idx]
        c.done = True
        c.output = _shape_of(output)
        c.output_bytes = _bytes_of(output)
        c.flops = counter.get_total_flops() - c.flops_start

    counter = FlopCounterMode(display=False)
    handles = []
    flags = [(m, m.training) for m in model.modules()]
    try:
        seen_modules: set[int] = set()
        for module in model.modules():
            if id(module) in seen_modules:
                continue
            seen_modules.add(id(module))
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
        model.eval()
        with torch.no_grad(), counter:
            try:
                model(x)
            except (NotImplementedError, torch.OutOfMemoryError):
                raise
            except (RuntimeError, ValueError, IndexError) as err:
                where = calls[stack[-1]] if stack else None
                layer = f" in layer {where.name!r} ({type(where.module).__name__})" if where else ""
                reason = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                raise InputError(
                    f"input_size {tuple(shape)} does not fit {root_name}: the forward pass "
                    f"failed{layer}: {reason}"
                ) from err
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag

    return _assemble(model, shape, x, calls, depth)


def _assemble(
    model: nn.Module, shape: tuple[int, ...], x: Tensor, calls: list[_Call], depth: int | None
) -> ModelSummary:
    own_flops = [c.flops for c in calls]
    is_leaf = [not c.has_child for c in calls]
    for c in calls:
        if c.parent is not None:
            own_flops[c.parent] -= c.flops

    counted: set[int] = set()

    def new_params(params: Any) -> int:
        n = 0
        for p in params:
            if id(p) not in counted:
                counted.add(id(p))
                n += p.numel()
        return n

    def row(head: _Call, params: int, flops: int) -> LayerRow:
        return LayerRow(
            name=head.name,
            type=type(head.module).__name__,
            depth=head.level,
            kernel_size=_kernel(head.module),
            output_shape=head.output,
            params=params,
            mult_adds=flops // 2,
            output_bytes=head.output_bytes,
            call=head.call,
        )

    rows: list[LayerRow] = []
    row_of: dict[int, int] = {}  # call index -> index in rows, for collapsed sub-trees
    for i, c in enumerate(calls):
        params = new_params(c.module.parameters(recurse=is_leaf[i]))
        if depth is not None and c.level > depth:
            parent = c.parent
            assert parent is not None
            r = row_of[parent]
            row_of[i] = r
            rows[r].params += params
            rows[r].mult_adds += own_flops[i] // 2
        elif is_leaf[i] or (depth is not None and c.level == depth):
            row_of[i] = len(rows)
            rows.append(row(c, params, own_flops[i]))
        elif params or own_flops[i]:
            # a container with its own parameters (a ViT's class token) or its own
            # arithmetic (functional attention): a row with just those
            rows.append(row(c, params, own_flops[i]))

    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    return ModelSummary(
        model=type(model).__name__,
        input_size=shape,
        rows=rows,
        total_params=total,
        trainable_params=sum(p.numel() for p in unique.values() if p.requires_grad),
        mult_adds=sum(own_flops) // 2,
        activation_bytes=sum(
            c.output_bytes for c, leaf in zip(calls, is_leaf, strict=True) if leaf
        ),
        param_bytes=sum(p.numel() * p.element_size() for p in unique.values()),
        input_bytes=x.numel() * x.element_size(),
        unlisted_params=total - sum(r.params for r in rows),
        depth=depth,
    )
