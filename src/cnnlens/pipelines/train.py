"""Train a classifier on a named dataset, or measure a checkpoint's accuracy, into a folder
(the library side of ``cnnlens train`` and ``cnnlens evaluate``).

    run = run_train("mnist-cnn", "mnist-embedded", out="runs/mnist")
    run.result.test.accuracy          # runs/mnist/model.safetensors, metrics.json, confusion.png

The steps: the recipe of the (model, dataset) pair with the given hyperparameters over it
(:func:`cnnlens.training.get_recipe`), the dataset's splits (:func:`load_splits`), the
training loop (:func:`cnnlens.training.train`), ``metrics.json`` and the confusion matrix.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlens.errors import DataError, InputError
from cnnlens.pipelines.options import check_out_dir

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluateRun",
    "TrainRun",
    "load_splits",
    "parse_dataset_options",
    "run_evaluate",
    "run_train",
    "write_json",
]


@dataclass
class TrainRun:
    """What :func:`run_train` did.

    Attributes:
        arch: the architecture's registry name.
        dataset: the dataset's name.
        out: the output folder.
        checkpoint: ``out/model.safetensors``.
        metrics: ``out/metrics.json`` (config, history, test metrics).
        confusion: ``out/confusion.png`` (None without a test split).
        result: the :class:`~cnnlens.training.TrainResult`.
    """

    arch: str
    dataset: str
    out: Path
    checkpoint: Path
    metrics: Path
    confusion: Path | None
    result: Any


@dataclass
class EvaluateRun:
    """What :func:`run_evaluate` did: the model's info, the
    :class:`~cnnlens.training.EvalResult` and the files written (none without ``out``)."""

    info: Any
    result: Any
    files: list[Path]


def parse_dataset_options(options: Sequence[str] | None) -> dict[str, Any]:
    """``["n=2000", "size=32", "crop=true"]`` -> ``{"n": 2000, "size": 32, "crop": True}``
    (``none`` stays a text: it is a preset's name)."""
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


def load_splits(
    dataset: str,
    splits: tuple[str, ...],
    data_dir: Path | None,
    download: bool,
    options: dict[str, Any],
) -> list[Any]:
    """The ``splits`` of ``dataset`` (:func:`cnnlens.data.get_dataset`)."""
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


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` as JSON atomically (NaN and infinities as null)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_finite(obj), indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)


def _hyperparameters(arch: str, dataset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The recipe of (arch, dataset) with the values given over it, checked."""
    from cnnlens.training import check_hyperparameters, get_recipe

    hp = {**get_recipe(arch, dataset), **{k: v for k, v in given.items() if v is not None}}
    check_hyperparameters(
        hp["epochs"],
        hp["lr"],
        hp["batch_size"],
        hp["optimizer"],
        hp["schedule"],
        hp["weight_decay"],
    )
    return hp


def _check_out(out_dir: Path, resume: bool) -> Path:
    """The checkpoint path in ``out_dir``, after checking the folder (and, with ``resume``,
    the training state to continue)."""
    from cnnlens.training import state_path

    check_out_dir(out_dir)
    ckpt = out_dir / "model.safetensors"
    if resume and not state_path(ckpt).is_file():
        raise DataError(
            f"--resume: no training state {str(state_path(ckpt))!r}; train into this --out "
            f"without --resume first"
        )
    return ckpt


def run_train(
    model: str,
    dataset: str,
    *,
    data_dir: Path | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    seed: int = 0,
    out: Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
    download: bool = False,
    dataset_options: Sequence[str] = (),
    progress: bool = False,
) -> TrainRun:
    """Train ``model`` (an architecture name) on ``dataset``; write ``out/model.safetensors``,
    ``metrics.json`` and ``confusion.png``.

    Hyperparameters left None come from the recipe of the (model, dataset) pair
    (:func:`cnnlens.training.get_recipe`). ``out`` defaults to ``runs/<model>-<dataset>``.

    Raises:
        CnnlensError: a bad hyperparameter, dataset option or folder, an unknown model or
            dataset, a model that does not fit the data, ``resume`` without a saved run.
    """
    from cnnlens import models
    from cnnlens.training import plot_confusion, train

    arch = models.resolve_name(model)
    given = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "schedule": schedule,
    }
    hp = _hyperparameters(arch, dataset, given)
    out_dir = out if out is not None else Path("runs") / f"{arch}-{dataset}"
    ckpt = _check_out(out_dir, resume)
    options = parse_dataset_options(dataset_options)
    spec = models.get_spec(arch)
    if dataset == "folder":  # images are resized to what the model expects
        options.setdefault("size", list(spec.input_size))
        options.setdefault("channels", spec.in_channels)
        options.setdefault("preset", spec.preset)
    train_set, test_set = load_splits(dataset, ("train", "test"), data_dir, download, options)
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
    write_json(out_dir / "metrics.json", metrics)
    confusion = None
    if result.test is not None:
        confusion = out_dir / "confusion.png"
        plot_confusion(result.test, confusion)
    return TrainRun(arch, dataset, out_dir, ckpt, out_dir / "metrics.json", confusion, result)


def run_evaluate(
    model: str,
    dataset: str,
    *,
    data_dir: Path | None = None,
    split: str = "test",
    batch_size: int = 256,
    out: Path | None = None,
    download: bool = False,
    dataset_options: Sequence[str] = (),
) -> EvaluateRun:
    """Accuracy, per-class accuracy and confusion matrix of a checkpoint on a dataset; with
    ``out``, also ``out/metrics.json`` and ``out/confusion.png``.

    The dataset is normalized with the model's preset; a difference between the model's
    and the dataset's class names is a warning.
    """
    from cnnlens import models
    from cnnlens.data import get_preset
    from cnnlens.training import check_compatible, evaluate, plot_confusion

    if out is not None:  # before any work
        check_out_dir(out)
    net, info = models.load(model)
    options = parse_dataset_options(dataset_options)
    if dataset == "folder":
        options.setdefault("size", list(info.input_size))
        options.setdefault("channels", info.in_channels)
        options.setdefault("preset", info.preset)
    (ds,) = load_splits(dataset, (split,), data_dir, download, options)
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
    files: list[Path] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            out / "metrics.json",
            {"model": str(model), "dataset": dataset, "split": split, **result.to_dict()},
        )
        plot_confusion(result, out / "confusion.png")
        files = [out / "metrics.json", out / "confusion.png"]
    return EvaluateRun(info, result, files)
