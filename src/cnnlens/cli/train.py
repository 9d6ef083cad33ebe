"""``cnnlens train`` and ``cnnlens evaluate``: train a classifier on a named dataset and
measure a checkpoint's accuracy.

    cnnlens train --model mnist-cnn --dataset mnist-embedded --out runs/mnist
    cnnlens evaluate --model runs/mnist/model.safetensors --dataset mnist-embedded
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import typer

from cnnlens.errors import DataError, InputError

logger = logging.getLogger(__name__)

_OUT_FILES = ("model.safetensors", "metrics.json", "confusion.png")


def _parse_options(options: list[str] | None) -> dict[str, Any]:
    """``["n=2000", "size=32", "crop=true"]`` -> ``{"n": 2000, "size": 32, "crop": True}``."""
    parsed: dict[str, Any] = {}
    for item in options or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--dataset-option must look like KEY=VALUE, got {item!r}")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    pass
        parsed[key.strip().replace("-", "_")] = value
    return parsed


def _load_splits(
    dataset: str,
    splits: tuple[str, ...],
    data_dir: Path | None,
    download: bool,
    options: dict[str, Any],
) -> list[Any]:
    from cnnlens.data import get_dataset

    if data_dir is not None and not data_dir.is_dir():
        raise DataError(f"--data-dir {str(data_dir)!r} does not exist or is not a folder")
    return [
        get_dataset(dataset, split=s, root=data_dir, download=download, **options) for s in splits
    ]


def _finite(obj: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) by None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_finite(obj), indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)


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
        None, "--out", help="Output folder (default runs/<model>-<dataset>)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out."),
    checkpoint_every: int = typer.Option(
        0, "--checkpoint-every", help="Also save every N epochs (0: only at the end)."
    ),
    download: bool = typer.Option(False, "--download", help="Download cifar10/mnist if missing."),
    dataset_option: list[str] | None = typer.Option(
        None, "--dataset-option", "-o", help="Dataset option KEY=VALUE (e.g. n=2000)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for torch (default: torch's choice)."
    ),
) -> None:
    """Train MODEL on DATASET; write OUT/model.safetensors, metrics.json, confusion.png."""
    import torch

    _set_threads(threads)

    from cnnlens import models
    from cnnlens.training import (
        check_hyperparameters,
        get_recipe,
        plot_confusion,
        state_path,
        train,
    )

    arch = models.resolve_name(model)
    recipe = get_recipe(arch, dataset)
    given = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "schedule": schedule,
    }
    hp = {**recipe, **{k: v for k, v in given.items() if v is not None}}
    check_hyperparameters(
        hp["epochs"],
        hp["lr"],
        hp["batch_size"],
        hp["optimizer"],
        hp["schedule"],
        hp["weight_decay"],
    )
    out_dir = out if out is not None else Path("runs") / f"{arch}-{dataset}"
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {str(out_dir)!r} exists and is not a folder")
    ckpt = out_dir / "model.safetensors"
    if resume and not state_path(ckpt).is_file():
        raise DataError(
            f"--resume: no training state {str(state_path(ckpt))!r}; train into this --out "
            f"without --resume first"
        )
    options = _parse_options(dataset_option)
    spec = models.get_spec(arch)
    if dataset == "folder":  # images are resized to what the model expects
        options.setdefault("size", list(spec.input_size))
        options.setdefault("channels", spec.in_channels)
        options.setdefault("preset", spec.preset)
    train_set, test_set = _load_splits(dataset, ("train", "test"), data_dir, download, options)
    c = train_set.in_channels
    arch_kwargs = {"num_classes": len(train_set.classes), "in_channels": c}
    if c != spec.in_channels:
        logger.info("building %s with in_channels=%d for dataset %s", arch, c, dataset)
    torch.manual_seed(seed)
    net = models.create(arch, **arch_kwargs)
    result = train(
        net,
        train_set,
        **hp,
        seed=seed,
        test_set=test_set,
        progress=progress,
        checkpoint=ckpt,
        checkpoint_every=checkpoint_every,
        resume=resume,
        arch=arch,
        arch_kwargs=arch_kwargs,
        dataset=dataset,
    )
    metrics = {
        "model": arch,
        "dataset": dataset,
        "config": {**hp, "seed": seed, "dataset_options": options},
        **result.to_dict(),
    }
    _write_json(out_dir / "metrics.json", metrics)
    if result.test is not None:
        plot_confusion(result.test, out_dir / "confusion.png")
        _print_eval(f"{arch} on {dataset} (test)", result.test)
    typer.echo(
        f"trained {result.epochs} epochs in {result.seconds:.1f} s -> {ckpt}, "
        f"{out_dir / 'metrics.json'}, {out_dir / 'confusion.png'}"
    )


def evaluate_command(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint file (or model name)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Dataset folder."),
    split: str = typer.Option("test", "--split", help="train, test (or all)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per forward pass."),
    out: Path | None = typer.Option(
        None, "--out", help="Write metrics.json and confusion.png here."
    ),
    download: bool = typer.Option(False, "--download", help="Download cifar10/mnist if missing."),
    dataset_option: list[str] | None = typer.Option(
        None, "--dataset-option", "-o", help="Dataset option KEY=VALUE."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for torch (default: torch's choice)."
    ),
) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a checkpoint on a dataset."""
    _set_threads(threads)
    from cnnlens import models
    from cnnlens.data import get_preset
    from cnnlens.training import check_compatible, evaluate, plot_confusion

    net, info = models.load(model)
    options = _parse_options(dataset_option)
    if dataset == "folder":
        options.setdefault("size", list(info.input_size))
        options.setdefault("channels", info.in_channels)
        options.setdefault("preset", info.preset)
    (ds,) = _load_splits(dataset, (split,), data_dir, download, options)
    if ds.preset.name != info.preset:
        logger.info("normalizing %s with the model's preset %r", dataset, info.preset)
        ds.preset = get_preset(info.preset)
    check_compatible(net, ds)
    if info.class_names is not None and list(info.class_names) != list(ds.classes):
        logger.warning(
            "the model's classes (%s) differ from the dataset's (%s)",
            ", ".join(info.class_names[:5]),
            ", ".join(ds.classes[:5]),
        )
    result = evaluate(net, ds, batch_size=batch_size)
    _print_eval(f"{info.arch} on {dataset} ({split})", result)
    if out is not None:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {str(out)!r} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        _write_json(
            out / "metrics.json",
            {"model": str(model), "dataset": dataset, "split": split, **result.to_dict()},
        )
        plot_confusion(result, out / "confusion.png")
        typer.echo(f"wrote {out / 'metrics.json'} and {out / 'confusion.png'}")


def register(app: typer.Typer) -> None:
    """Add the ``train`` and ``evaluate`` commands to ``app``."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
