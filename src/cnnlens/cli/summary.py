"""``cnnlens summary MODEL``: the layer-by-layer summary of a named model or a checkpoint.

The model is built on the ``meta`` device (shapes only: no weights are read or allocated),
falling back to the CPU for the few architectures that cannot be built there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import typer

from cnnlens.errors import InputError

logger = logging.getLogger(__name__)

_CPU_RETRY_MAX_PARAMS = 50_000_000


def _parse_size(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as err:
        raise InputError(
            f"--input-size must be C,H,W or B,C,H,W integers (e.g. 3,224,224), got {text!r}"
        ) from err
    if len(dims) not in (3, 4):
        raise InputError(
            f"--input-size must be C,H,W or B,C,H,W integers (e.g. 3,224,224), got {text!r}"
        )
    return dims


def _describe(model: str) -> tuple[str, dict[str, Any], tuple[int, ...], torch.dtype]:
    """(arch, arch_kwargs, default (C, H, W), dtype) for a name or a checkpoint path."""
    from cnnlens import models
    from cnnlens.models.weights import looks_like_path

    if Path(model).expanduser().is_file() or looks_like_path(model):
        info = models.read_checkpoint_info(model)
        dtype = getattr(torch, info.dtype, torch.float32)
        return info.arch, info.arch_kwargs, (info.in_channels, *info.input_size), dtype
    spec = models.get_spec(model)
    return spec.name, {}, (spec.in_channels, *spec.input_size), torch.float32


def build_summary(model: str, input_size: str | None = None, depth: int | None = None) -> Any:
    """The :class:`~cnnlens.summary.ModelSummary` of a model name or checkpoint path."""
    from cnnlens import models
    from cnnlens.summary import summary

    arch, kwargs, default_size, dtype = _describe(model)
    size = _parse_size(input_size) if input_size else default_size
    try:
        with torch.device("meta"):
            net = models.create(arch, **kwargs)
        return summary(net.to(dtype), size, depth=depth)
    except NotImplementedError as err:  # an op without a meta kernel: use real tensors
        logger.info("%s cannot run on the meta device (%s); using the CPU", arch, err)
    except InputError:
        # meta tensors give terse shape errors; for a small model, repeat on the CPU to
        # raise PyTorch's fuller message
        if sum(p.numel() for p in net.parameters()) > _CPU_RETRY_MAX_PARAMS:
            raise
    net = models.create(arch, **kwargs).to(dtype)
    return summary(net, size, depth=depth)


def _print_table(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from cnnlens.summary import display_name, format_kernel, format_shape

    table = Table(title=f"{result.model} — input {list(result.input_size)}", show_lines=False)
    for column, justify in (
        ("Layer", "left"),
        ("Type", "left"),
        ("Kernel", "left"),
        ("Output shape", "left"),
        ("Params", "right"),
        ("Mult-adds", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=column != "Type")
    for row in result.rows:
        table.add_row(
            display_name(row),
            row.type,
            format_kernel(row.kernel_size),
            format_shape(row.output_shape),
            f"{row.params:,}",
            f"{row.mult_adds:,}",
        )
    console = Console()
    console.print(table)
    for line in result.totals_lines():
        console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``summary`` command to ``app``."""

    @app.command("summary")
    def summary_command(
        model: str = typer.Argument(..., help="Model name (e.g. resnet50) or checkpoint path."),
        input_size: str | None = typer.Option(
            None,
            "--input-size",
            help="C,H,W or B,C,H,W (default: the model's own input size).",
        ),
        depth: int | None = typer.Option(
            None, "--depth", min=0, help="Collapse modules nested deeper than N."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Layer by layer: output shapes, parameters, mult-adds, activation memory."""
        result = build_summary(model, input_size, depth)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            _print_table(result)
