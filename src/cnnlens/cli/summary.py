"""``cnnlens summary MODEL``: the layer-by-layer summary of a named model or a checkpoint.

The pipeline is :func:`cnnlens.pipelines.summary.build_summary` (shapes only, on the
``meta`` device); this module parses, calls it and prints a table or JSON.
"""

from __future__ import annotations

import json
from typing import Any

import typer


def _print_table(result: Any) -> None:
    """The rows as a rich table that fits the terminal: the layer names wrap, the type and the
    numbers never do; in fewer than 100 columns the counts read ``118.0M`` rather than
    ``118,013,952`` and shapes lose their spaces (the totals below keep the exact figures)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from cnnlens.summary import format_count

    console = Console()
    narrow = console.width < 100
    table = Table(
        title=f"{result.model} — input {list(result.input_size)}",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    header, body = result.table()
    for i, column in enumerate(header):
        table.add_column(
            column,
            justify="right" if i >= 4 else "left",
            no_wrap=i > 0,
            overflow="fold",
            min_width=8 if i == 0 else None,
        )
    for layer, cells in zip(result.rows, body, strict=True):
        if narrow:
            counts = (layer.params, layer.mult_adds)
            shape = cells[3].replace(", ", ",")
            cells = [*cells[:3], shape, *(format_count(n).replace(" ", "") for n in counts)]
        table.add_row(*cells)
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
        from cnnlens.pipelines.summary import build_summary

        result = build_summary(model, input_size, depth)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            _print_table(result)
