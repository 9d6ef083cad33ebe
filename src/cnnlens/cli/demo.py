"""``cnnlens demo --out DIR``: the whole pipeline on bundled data, ending in DIR/report.html.

    cnnlens demo --out runs/demo           # minutes
    cnnlens demo --out runs/quick --quick  # seconds: small subsets, the methods' tiny presets

The pipeline is :func:`cnnlens.pipelines.demo.run_demo`; this module sets torch's CPU thread
count, calls it and prints the outcome. The demo runs torch on one CPU thread by default:
on a machine whose cores are busy with other work, threads that wait for each other cost
more than they save (``--threads 2`` on an idle machine; the recorded figures are in
docs/benchmarks.md, "The demo's thread count").
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
    threads: int = typer.Option(
        1, "--threads", min=1, help="torch CPU threads (1 is the safe choice on a busy machine)."
    ),
) -> None:
    """Train on embedded MNIST and generated shapes, explain with every method, write a report."""
    import torch

    from cnnlens.pipelines.demo import run_demo

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run_demo(out, quick=quick, progress=progress, seed=seed, echo=typer.echo)
    finally:
        torch.set_num_threads(before)
    typer.echo(
        f"done in {result.seconds:.0f} s: mnist-cnn {result.mnist_accuracy:.1%}, "
        f"gap-cnn on shapes-pair {result.shapes_accuracy:.1%} (exact match), "
        f"{len(result.methods)} methods"
    )
    typer.echo(f"report: {result.report}")


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the cnnlens command line."""
    app.command("demo")(demo_command)
