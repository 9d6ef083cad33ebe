"""``cnnlens train`` and ``cnnlens evaluate``: train a classifier on a named dataset and
measure a checkpoint's accuracy.

    cnnlens train --model mnist-cnn --dataset mnist-embedded --out runs/mnist
    cnnlens evaluate --model runs/mnist/model.safetensors --dataset mnist-embedded

The pipelines are :func:`cnnlens.pipelines.train.run_train` and
:func:`~cnnlens.pipelines.train.run_evaluate`; this module parses, calls them and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    import torch

    from cnnlens.core.checks import check_int

    torch.set_num_threads(check_int("--threads", threads))


def _print_eval(title: str, result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_edge=False)
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name, acc in result.per_class.items():
        table.add_row(name, "-" if acc != acc else f"{acc:.2%}")
    console = Console()
    console.print(table)
    kind = "exact-match accuracy" if result.multilabel else "accuracy"
    console.print(f"{kind}: [bold]{result.accuracy:.2%}[/bold] (n={result.n})")


def train_command(
    model: str = typer.Option(..., "--model", "-m", help="Architecture name (cnnlens models)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name (see cnnlens.data)."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Folder of cifar10 / mnist / folder datasets."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs (default: recipe)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default: recipe)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Default: recipe."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="sgd or adam."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="L2 penalty."),
    schedule: str | None = typer.Option(None, "--schedule", help="constant or cosine."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialization, shuffling, dropout."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default runs/<model>-<dataset>)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out."),
    checkpoint_every: int = typer.Option(
        0, "--checkpoint-every", help="Also save every N epochs (0: only at the end)."
    ),
    download: bool = typer.Option(False, "--download", help="Download cifar10/mnist if missing."),
    dataset_option: list[str] | None = typer.Option(
        None, "--dataset-option", "-D", help="Dataset option KEY=VALUE (e.g. n=2000)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for torch (default: torch's choice)."
    ),
) -> None:
    """Train MODEL on DATASET; write OUT/model.safetensors, metrics.json, confusion.png."""
    _set_threads(threads)
    from cnnlens.pipelines.train import run_train

    run = run_train(
        model,
        dataset,
        data_dir=data_dir,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        weight_decay=weight_decay,
        schedule=schedule,
        seed=seed,
        out=out,
        resume=resume,
        checkpoint_every=checkpoint_every,
        download=download,
        dataset_options=dataset_option or (),
        progress=progress,
    )
    result = run.result
    if result.test is not None:
        _print_eval(f"{run.arch} on {run.dataset} (test)", result.test)
    typer.echo(
        f"trained {result.epochs} epochs in {result.seconds:.1f} s -> {run.checkpoint}, "
        f"{run.out / 'metrics.json'}, {run.out / 'confusion.png'}"
    )


def evaluate_command(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint file (or model name)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Dataset folder."),
    split: str = typer.Option("test", "--split", help="train, test (or all)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per forward pass."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write metrics.json and confusion.png here."
    ),
    download: bool = typer.Option(False, "--download", help="Download cifar10/mnist if missing."),
    dataset_option: list[str] | None = typer.Option(
        None, "--dataset-option", "-D", help="Dataset option KEY=VALUE."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for torch (default: torch's choice)."
    ),
) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a checkpoint on a dataset."""
    _set_threads(threads)
    from cnnlens.pipelines.train import run_evaluate

    run = run_evaluate(
        model,
        dataset,
        data_dir=data_dir,
        split=split,
        batch_size=batch_size,
        out=out,
        download=download,
        dataset_options=dataset_option or (),
    )
    _print_eval(f"{run.info.arch} on {dataset} ({split})", run.result)
    if run.files:
        typer.echo(f"wrote {run.files[0]} and {run.files[1]}")


def register(app: typer.Typer) -> None:
    """Add the ``train`` and ``evaluate`` commands to ``app``."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
