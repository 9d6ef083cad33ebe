"""``cnnlens demo --out DIR``: the whole pipeline on bundled data, ending in DIR/report.html.

cnnlens demo --out runs/demo           # about two minutes on two CPU cores
cnnlens demo --out runs/quick --quick  # seconds: small subsets, scaled-down options
"""

from __future__ import annotations

from pathlib import Path

import typer


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Output folder."),
    quick: bool = typer.Option(
        False, "--quick", help="Small subsets and scaled-down options: seconds, not minutes."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of training and of the random methods."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Train on embedded MNIST and generated shapes, explain with every method, write a report."""
    import torch

    from cnnlens.demo import run_demo

    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = run_demo(out, quick=quick, progress=progress, seed=seed, echo=typer.echo)
    typer.echo(
        f"done in {result.seconds:.0f} s: mnist-cnn {result.mnist_accuracy:.1%}, "
        f"gap-cnn on shapes-pair {result.shapes_accuracy:.1%} (exact match), "
        f"{len(result.methods)} methods"
    )
    typer.echo(f"report: {result.report}")


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the cnnlens command line."""
    app.command("demo")(demo_command)
