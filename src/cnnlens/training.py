"""Train and evaluate classifiers: the classic supervised loop, deterministic and resumable.

:func:`train` minimizes cross-entropy (or binary cross-entropy with logits for multi-hot
targets) with SGD + momentum or Adam, logs the running loss, optionally shows a progress
bar, writes a self-describing checkpoint (``cnnlens.models.save_checkpoint``) and a
separate training-state file (optimizer state, epoch, history; safetensors + JSON, never
pickle) from which ``resume=True`` continues. For a given seed on CPU two runs give the
same weights, and a run interrupted and resumed gives the same weights as one that was not:
epoch ``e`` shuffles with a generator seeded from ``(seed, e)`` and reseeds torch's RNG
(dropout) the same way, inside :func:`torch.random.fork_rng` so the caller's RNG state is
left alone.

:func:`evaluate` reports accuracy, per-class accuracy and the confusion matrix (for
multi-label targets: exact-match accuracy, per-class accuracy and one 2x2 matrix per class).

Example:
    >>> from cnnlens import models, data, training              # doctest: +SKIP
    >>> net = models.create("mnist-cnn")
    >>> tr = data.get_dataset("mnist-embedded")
    >>> te = data.get_dataset("mnist-embedded", split="test")
    >>> res = training.train(net, tr, epochs=8, lr=1e-3, batch_size=64, optimizer="adam",
    ...                      test_set=te, checkpoint="runs/mnist/model.safetensors",
    ...                      arch="mnist-cnn", dataset="mnist-embedded")
    >>> res.test.accuracy
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from cnnlens.core.capture import modes_restored
from cnnlens.core.checks import check_choice, check_float, check_int
from cnnlens.core.device import model_device
from cnnlens.core.progress import progress_bar
from cnnlens.errors import DataError, InputError

__all__ = [
    "DEFAULT_RECIPE",
    "OPTIMIZERS",
    "RECIPES",
    "EvalResult",
    "TrainResult",
    "check_compatible",
    "check_hyperparameters",
    "evaluate",
    "get_recipe",
    "plot_confusion",
    "state_path",
    "train",
]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
_STATE_KEY = "cnnlens_training_state"
_STATE_FORMAT = 1

#: Defaults for any (model, dataset) pair without a recipe.
DEFAULT_RECIPE: dict[str, Any] = {
    "epochs": 5,
    "lr": 0.01,
    "batch_size": 64,
    "optimizer": "sgd",
    "weight_decay": 0.0,
    "schedule": "constant",
}

#: Tuned defaults per (architecture, dataset); see docs/training.md for the measured runs.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("mnist-cnn", "mnist-embedded"): {
        "epochs": 5,
        "lr": 1e-3,
        "batch_size": 64,
        "optimizer": "adam",
        "schedule": "cosine",
    },
    ("gap-cnn", "shapes"): {
        "epochs": 6,
        "lr": 1e-3,
        "batch_size": 32,
        "optimizer": "adam",
        "schedule": "cosine",
    },
    ("gap-cnn", "shapes-pair"): {
        "epochs": 6,
        "lr": 1e-3,
        "batch_size": 32,
        "optimizer": "adam",
        "schedule": "cosine",
    },
    # one small object among distractors: more images and epochs, a higher lr
    ("gap-cnn", "shapes-scenes"): {
        "epochs": 8,
        "lr": 2e-3,
        "batch_size": 32,
        "optimizer": "adam",
        "schedule": "cosine",
    },
    # the PyTorch CIFAR-10 tutorial's settings
    ("simplecnn", "cifar10"): {"epochs": 2, "lr": 1e-3, "batch_size": 4, "optimizer": "sgd"},
}


def get_recipe(arch: str | None, dataset: str | None) -> dict[str, Any]:
    """Default hyperparameters for training ``arch`` on ``dataset``.

    Returns:
        A new dict with ``epochs``, ``lr``, ``batch_size``, ``optimizer``, ``weight_decay``
        and ``schedule``: :data:`DEFAULT_RECIPE` updated with ``RECIPES[(arch, dataset)]``.
    """
    return {**DEFAULT_RECIPE, **RECIPES.get((str(arch), str(dataset)), {})}


# --------------------------------------------------------------------------- results


@dataclass
class EvalResult:
    """Classification metrics on one dataset.

    Attributes:
        accuracy: share of samples classified correctly (multi-label: exact match, every
            class decided right).
        per_class: class name -> accuracy. Single-label: recall of that class (share of its
            samples predicted as it; NaN when it has no sample). Multi-label: share of
            samples whose presence/absence of the class is decided right.
        confusion: single-label: (K, K) counts, row = true class, column = predicted.
            Multi-label: (K, 2, 2) per class ``[[TN, FP], [FN, TP]]``.
        classes: class names.
        n: number of samples.
        loss: mean loss (cross-entropy, or BCE-with-logits for multi-label).
        multilabel: whether the targets were multi-hot.
    """

    accuracy: float
    per_class: dict[str, float]
    confusion: np.ndarray
    classes: list[str]
    n: int
    loss: float
    multilabel: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN per-class values become ``None``)."""
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "n": self.n,
            "multilabel": self.multilabel,
            "classes": list(self.classes),
            "per_class": {k: (None if math.isnan(v) else v) for k, v in self.per_class.items()},
            "confusion": self.confusion.tolist(),
        }


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        epochs: epochs completed in total (including those before a resume).
        history: one dict per epoch: ``epoch``, ``loss`` (mean training loss),
            ``train_accuracy``, ``lr`` (at the epoch's end), ``seconds``, and
            ``test_accuracy`` / ``test_loss`` when a test set was given.
        test: metrics on the test set after the last epoch (None without a test set).
        seconds: wall time of this call's training epochs.
        checkpoint: the model checkpoint written, if any.
        state: the training-state file written, if any.
        resumed_from: epochs already done when this call started (0 for a fresh run).
    """

    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    test: EvalResult | None = None
    seconds: float = 0.0
    checkpoint: Path | None = None
    state: Path | None = None
    resumed_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "epochs": self.epochs,
            "resumed_from": self.resumed_from,
            "seconds": self.seconds,
            "history": self.history,
            "test": self.test.to_dict() if self.test is not None else None,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "state": str(self.state) if self.state else None,
        }


# --------------------------------------------------------------------------- helpers


def _base_dataset(ds: Dataset) -> Dataset:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def _classes(ds: Dataset) -> list[str] | None:
    classes = getattr(_base_dataset(ds), "classes", None)
    return [str(c) for c in classes] if classes is not None else None


def _is_multilabel(ds: Dataset) -> bool:
    flag = getattr(_base_dataset(ds), "multilabel", None)
    if flag is not None:
        return bool(flag)
    _, y = ds[0]
    y = torch.as_tensor(y)
    return y.dim() == 1 and y.is_floating_point()


def _first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LazyLinear)):
            return name, m
    return None


def _batches(
    ds: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) batches; in-memory datasets are indexed in bulk instead of one by one."""
    n = len(ds)  # type: ignore[arg-type]
    if hasattr(ds, "get_batch"):
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield ds.get_batch(order[start : start + batch_size])
        return
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)
    yield from loader


def check_compatible(model: nn.Module, dataset: Dataset) -> None:
    """Check that ``model`` takes the dataset's images and has one output per class.

    Runs one forward pass on two samples in eval mode without gradients (the model's modes
    are restored).

    Raises:
        InputError: wrong channel count (the first layer's expected count is named),
            an image size the model cannot take, or a wrong number of outputs.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the dataset is empty")
    x, _ = next(_batches(dataset, min(2, len(dataset)), shuffle=False))  # type: ignore[arg-type]
    c = x.shape[1]
    first = _first_layer(model)
    if first is not None and isinstance(first[1], nn.Conv2d) and first[1].in_channels != c:
        raise InputError(
            f"the dataset's images have {c} channel(s) (shape {tuple(x.shape[1:])}) but the "
            f"model's first layer {first[0]!r} expects {first[1].in_channels}; pick a model "
            f"built with in_channels={c} or a dataset with {first[1].in_channels}"
        )
    device = model_device(model)
    with modes_restored(model), torch.no_grad():
        model.eval()
        try:
            out = model(x.to(device))
        except RuntimeError as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(
                f"the model cannot take the dataset's images of shape {tuple(x.shape[1:])} ({msg})"
            ) from None
    classes = _classes(dataset)
    if out.dim() != 2:
        raise InputError(f"the model's output must be (B, classes), got {tuple(out.shape)}")
    if classes is not None and out.shape[1] != len(classes):
        raise InputError(
            f"the model has {out.shape[1]} outputs but the dataset has {len(classes)} "
            f"classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
        )


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _lr_at(base: float, schedule: str, step: int, total: int) -> float:
    if schedule == "cosine" and total > 0:
        return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / total))
    return base


def _make_optimizer(
    name: str, params: Any, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def state_path(checkpoint: str | os.PathLike[str]) -> Path:
    """The training-state file that goes with a checkpoint:
    ``run/model.safetensors`` -> ``run/model.state.safetensors``."""
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}.state.safetensors")


def _atomic_save(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_state(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    info: dict[str, Any],
) -> None:
    tensors: dict[str, Tensor] = {
        f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    meta = {**info, "format": _STATE_FORMAT, "param_groups": groups, "scalar_state": scalars}
    _atomic_save(tensors, {_STATE_KEY: json.dumps(meta)}, path)


def _load_state(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, optimizer: str
) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get(_STATE_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types
        raise DataError(f"training state {str(path)!r} cannot be read ({err})") from None
    if meta_raw is None:
        raise DataError(f"file {str(path)!r} is not a cnnlens training state")
    meta = json.loads(meta_raw)
    if meta.get("optimizer") != optimizer:
        raise InputError(
            f"optimizer={optimizer!r} but the run in {str(path)!r} used "
            f"{meta.get('optimizer')!r}; resume with the same optimizer"
        )
    model_sd = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise InputError(
            f"the model does not fit the weights in {str(path)!r} ({first}); resume with the "
            f"same architecture"
        ) from None
    device = model_device(model)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, idx, key = k.split("/", 2)
            state.setdefault(int(idx), {})[key] = v.to(device) if key != "step" else v
    for idx, st in meta.get("scalar_state", {}).items():
        state.setdefault(int(idx), {}).update(st)
    sd = opt.state_dict()
    for group, saved in zip(sd["param_groups"], meta["param_groups"], strict=False):
        group.update(saved)
    sd["state"] = state
    opt.load_state_dict(sd)
    return meta


def _save_checkpoint(
    model: nn.Module, path: Path, *, accuracy: float | None, meta: dict[str, Any]
) -> Path:
    from cnnlens.models import save_checkpoint

    return save_checkpoint(
        model,
        path,
        arch=meta["arch"],
        arch_kwargs=meta.get("arch_kwargs"),
        class_names=meta.get("class_names"),
        input_size=meta.get("input_size"),
        preset=meta.get("preset"),
        dataset=meta.get("dataset"),
        accuracy=accuracy,
        extra=meta.get("extra"),
    )


# --------------------------------------------------------------------------- training


def check_hyperparameters(
    epochs: int, lr: float, batch_size: int, optimizer: str, schedule: str, weight_decay: float
) -> None:
    """Refuse hyperparameters :func:`train` cannot use, before anything is loaded or written.

    Raises:
        InputError: epochs or batch_size not a positive integer, lr not positive, unknown
            optimizer or schedule, negative weight decay.
    """
    check_int("epochs", epochs)
    check_float("lr", lr, minimum=0.0, strict_minimum=True)
    check_int("batch_size", batch_size)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("schedule", schedule, SCHEDULES)
    check_float("weight_decay", weight_decay, minimum=0.0)


def _check_run(
    train_set: Dataset,
    test_set: Dataset | None,
    model: nn.Module,
    checkpoint: Any,
    checkpoint_every: int,
    resume: bool,
    arch: str | None,
) -> None:
    """The checks of a training run that come before anything is written."""
    check_int("checkpoint_every", checkpoint_every, minimum=0)
    if checkpoint is not None and arch is None:
        raise InputError("checkpoint= needs arch= (the architecture name to record)")
    if resume and checkpoint is None:
        raise InputError("resume=True needs checkpoint= (where the run was saved)")
    if len(train_set) == 0:  # type: ignore[arg-type]
        raise DataError("the training set is empty")
    check_compatible(model, train_set)
    if test_set is not None:
        check_compatible(model, test_set)


def _checkpoint_meta(
    train_set: Dataset, arch: str | None, arch_kwargs: dict[str, Any] | None, dataset: str | None
) -> dict[str, Any]:
    """What the checkpoint records about the model and its data (not yet the training)."""
    base = _base_dataset(train_set)
    x0, _ = train_set[0]
    preset = getattr(base, "preset", None)
    return {
        "arch": arch,
        "arch_kwargs": arch_kwargs or {},
        "class_names": _classes(train_set),
        "input_size": [int(x0.shape[-2]), int(x0.shape[-1])],
        "preset": getattr(preset, "name", preset),
        "dataset": dataset or getattr(base, "name", None),
    }


def _resume(
    spath: Path, model: nn.Module, opt: torch.optim.Optimizer, config: dict[str, Any]
) -> tuple[int, list[dict[str, Any]]]:
    """Load the training state saved at ``spath``: ``(epochs done, history)``.

    Raises:
        DataError: when there is no state to resume from.
    """
    if not spath.is_file():
        raise DataError(
            f"no training state to resume from: {str(spath)!r} does not exist "
            f"(train without resume first)"
        )
    saved = _load_state(spath, model, opt, config["optimizer"])
    start_epoch = int(saved["epoch"])
    old = saved.get("config", {})
    changed = [k for k in ("lr", "batch_size", "seed", "schedule") if old.get(k) != config[k]]
    if changed:
        logger.warning(
            "resuming with changed %s: the result will differ from an uninterrupted run",
            ", ".join(changed),
        )
    logger.info("resuming from epoch %d of %d (%s)", start_epoch, config["epochs"], spath)
    return start_epoch, list(saved.get("history", []))


@dataclass
class _Loop:
    """What every epoch of one :func:`train` call shares."""

    model: nn.Module
    train_set: Dataset
    opt: torch.optim.Optimizer
    loss_fn: nn.Module
    config: dict[str, Any]
    multilabel: bool
    device: torch.device
    steps_per_epoch: int
    log_every: int
    progress: bool


def _train_epoch(loop: _Loop, epoch: int) -> dict[str, Any]:
    """One epoch of mini-batch descent (seeded from ``(seed, epoch)``); the epoch's mean
    loss, training accuracy and final learning rate."""
    cfg = loop.config
    epochs, batch_size, n = cfg["epochs"], cfg["batch_size"], cfg["train_size"]
    total_steps = epochs * loop.steps_per_epoch
    eseed = _epoch_seed(cfg["seed"], epoch)
    torch.manual_seed(eseed)
    gen = torch.Generator().manual_seed(eseed)
    loop.model.train()
    loss_sum, correct, seen, running = 0.0, 0.0, 0, 0.0
    step = epoch * loop.steps_per_epoch
    title = f"epoch {epoch + 1}/{epochs}"
    with progress_bar(loop.progress, loop.steps_per_epoch, title) as bar:
        for i, (x, y) in enumerate(
            _batches(loop.train_set, batch_size, shuffle=True, generator=gen)
        ):
            if x.shape[0] == 1 and n > 1:  # BatchNorm cannot train on one sample
                step += 1
                continue
            for g in loop.opt.param_groups:
                g["lr"] = _lr_at(cfg["lr"], cfg["schedule"], step, total_steps)
            x, y = x.to(loop.device), y.to(loop.device)
            out = loop.model(x)
            loss = loop.loss_fn(out, y.float() if loop.multilabel else y.long())
            loop.opt.zero_grad(set_to_none=True)
            loss.backward()
            loop.opt.step()
            step += 1
            b = x.shape[0]
            lv = float(loss.detach())
            loss_sum += lv * b
            seen += b
            running = lv if i == 0 else 0.9 * running + 0.1 * lv
            with torch.no_grad():
                if loop.multilabel:
                    correct += float(((out > 0) == (y > 0.5)).all(dim=1).sum())
                else:
                    correct += float((out.argmax(1) == y).sum())
            if loop.log_every and (i + 1) % loop.log_every == 0:
                logger.info(
                    "epoch %d [%d/%d] running loss %.4f",
                    epoch + 1,
                    i + 1,
                    loop.steps_per_epoch,
                    running,
                )
            bar.describe(f"{title} loss {running:.4f}")
            bar.advance()
    if not math.isfinite(loss_sum):
        logger.warning("epoch %d: the loss is not finite; lower the lr", epoch + 1)
    return {
        "epoch": epoch + 1,
        "loss": loss_sum / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "lr": loop.opt.param_groups[0]["lr"],
    }


def _save_epoch(
    loop: _Loop, ckpt: Path, spath: Path, meta: dict[str, Any], history: list[dict[str, Any]]
) -> Path:
    """Write the checkpoint and the training state after the last epoch of ``history``."""
    done = history[-1]["epoch"]
    meta["extra"] = {"training": loop.config, "epochs_done": done}
    path = _save_checkpoint(loop.model, ckpt, accuracy=history[-1].get("test_accuracy"), meta=meta)
    info = {"epoch": done, "optimizer": loop.config["optimizer"], "config": loop.config}
    _save_state(spath, loop.model, loop.opt, {**info, "history": history, **meta})
    return path


def _log_epoch(row: dict[str, Any], epochs: int) -> None:
    logger.info(
        "epoch %d/%d loss %.4f train acc %.4f%s (%.1f s)",
        row["epoch"],
        epochs,
        row["loss"],
        row["train_accuracy"],
        f" test acc {row['test_accuracy']:.4f}" if "test_accuracy" in row else "",
        row["seconds"],
    )


def train(
    model: nn.Module,
    train_set: Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    seed: int = 0,
    test_set: Dataset | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    dataset: str | None = None,
    log_every: int = 100,
) -> TrainResult:
    """Train ``model`` on ``train_set`` (in place) with mini-batch gradient descent.

    The loss is cross-entropy for integer labels and, for multi-hot float targets,
    binary cross-entropy on the logits:

    $$\\mathcal L_{CE} = -\\frac1B\\sum_b \\log \\operatorname{softmax}(z_b)_{y_b}, \\qquad
    \\mathcal L_{BCE} = -\\frac{1}{BK}\\sum_{b,k} y_{bk}\\log\\sigma(z_{bk})
    + (1-y_{bk})\\log(1-\\sigma(z_{bk}))$$

    SGD uses momentum (Polyak heavy ball as in PyTorch); ``schedule="cosine"`` anneals the
    learning rate per step, $\\eta_t = \\tfrac12\\eta_0(1+\\cos(\\pi t/T))$.

    Args:
        model: the network; trained in place, its train/eval flags restored at the end.
        train_set: a dataset of ``(image, label)`` (``cnnlens.data`` datasets are indexed in
            bulk, which is much faster than a DataLoader).
        epochs: total epochs (with ``resume``, the epochs already done count).
        lr: (initial) learning rate.
        batch_size: samples per step.
        optimizer: ``"sgd"`` or ``"adam"``.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        schedule: ``"constant"`` or ``"cosine"``.
        seed: seeds shuffling and dropout; same seed, same weights (on CPU).
        test_set: evaluated after every epoch and at the end.
        progress: show a rich progress bar.
        checkpoint: write the model here at the end (``cnnlens.models.save_checkpoint``;
            needs ``arch``) and the training state next to it (:func:`state_path`).
        checkpoint_every: also write both every this many epochs (0: only at the end).
        resume: continue from the training state next to ``checkpoint``.
        arch: architecture name recorded in the checkpoint.
        arch_kwargs: constructor arguments recorded in the checkpoint.
        dataset: dataset name recorded in the checkpoint (default: the dataset's ``name``).
        log_every: log the running loss every this many steps (logging level INFO).

    Returns:
        A :class:`TrainResult`.

    Raises:
        InputError: bad hyperparameters, a model that does not fit the data, a resume
            with another optimizer or architecture.
        DataError: ``resume`` without a training state to resume from.
    """
    check_hyperparameters(epochs, lr, batch_size, optimizer, schedule, weight_decay)
    _check_run(train_set, test_set, model, checkpoint, checkpoint_every, resume, arch)
    config = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "seed": seed,
        "train_size": len(train_set),  # type: ignore[arg-type]
    }
    meta = {
        **_checkpoint_meta(train_set, arch, arch_kwargs, dataset),
        "extra": {"training": config},
    }
    multilabel = _is_multilabel(train_set)
    opt = _make_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    spath = state_path(ckpt) if ckpt is not None else None
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume:
        assert spath is not None
        start_epoch, history = _resume(spath, model, opt, config)
    loop = _Loop(
        model=model,
        train_set=train_set,
        opt=opt,
        loss_fn=nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss(),
        config=config,
        multilabel=multilabel,
        device=model_device(model),
        steps_per_epoch=math.ceil(config["train_size"] / batch_size),
        log_every=log_every,
        progress=progress,
    )
    result = TrainResult(epochs=start_epoch, history=history, resumed_from=start_epoch)
    t_start = time.perf_counter()
    with modes_restored(model), torch.random.fork_rng(devices=[]):
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            row = _train_epoch(loop, epoch)
            if test_set is not None:
                ev = evaluate(model, test_set, batch_size=max(batch_size, 256))
                row["test_accuracy"], row["test_loss"] = ev.accuracy, ev.loss
                result.test = ev
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            result.epochs = epoch + 1
            _log_epoch(row, epochs)
            last = epoch + 1 == epochs
            if ckpt is not None and (
                last or (checkpoint_every and (epoch + 1) % checkpoint_every == 0)
            ):
                assert spath is not None
                result.checkpoint = _save_epoch(loop, ckpt, spath, meta, history)
                result.state = spath
    result.seconds = time.perf_counter() - t_start
    if test_set is not None and result.test is None:
        result.test = evaluate(model, test_set, batch_size=max(batch_size, 256))
    if ckpt is not None and result.checkpoint is None and start_epoch >= epochs:
        logger.info("nothing to do: the run in %s already has %d epochs", spath, start_epoch)
        result.state = spath
        result.checkpoint = ckpt if ckpt.is_file() else None
    return result


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    threshold: float = 0.5,
) -> EvalResult:
    """Accuracy, per-class accuracy and confusion matrix of ``model`` on ``dataset``.

    Single-label: the prediction is the arg-max class. Multi-label (multi-hot float
    targets): class ``k`` is predicted present when $\\sigma(z_k) > $ ``threshold``; the
    accuracy is the exact-match ratio.

    The model's train/eval flags and ``requires_grad`` are restored afterwards.

    Args:
        model: the classifier.
        dataset: ``(image, label)`` samples.
        batch_size: samples per forward pass.
        threshold: probability threshold for multi-label predictions.

    Returns:
        An :class:`EvalResult`.
    """
    check_int("batch_size", batch_size)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("cannot evaluate on an empty dataset")
    from cnnlens.core.capture import frozen

    multilabel = _is_multilabel(dataset)
    classes = _classes(dataset)
    device = model_device(model)
    logit_thr = math.log(threshold / (1 - threshold))
    preds, targets, loss_sum, n = [], [], 0.0, 0
    with frozen(model), torch.no_grad():
        for x, y in _batches(dataset, batch_size, shuffle=False):
            out = model(x.to(device)).float().cpu()
            if multilabel:
                loss_sum += float(
                    nn.functional.binary_cross_entropy_with_logits(out, y.float(), reduction="sum")
                ) / max(out.shape[1], 1)
                preds.append(out > logit_thr)
                targets.append(y > 0.5)
            else:
                loss_sum += float(nn.functional.cross_entropy(out, y.long(), reduction="sum"))
                preds.append(out.argmax(1))
                targets.append(y.long())
            n += x.shape[0]
            k = out.shape[1]
    pred, true = torch.cat(preds), torch.cat(targets)
    if classes is None:
        classes = [str(i) for i in range(k)]
    if multilabel:
        acc = float((pred == true).all(dim=1).float().mean())
        per = (pred == true).float().mean(dim=0)
        conf = np.zeros((k, 2, 2), dtype=np.int64)
        t, p = true.numpy().astype(int), pred.numpy().astype(int)
        for c in range(k):
            np.add.at(conf[c], (t[:, c], p[:, c]), 1)
        per_class = {classes[c]: float(per[c]) for c in range(k)}
    else:
        acc = float((pred == true).float().mean())
        conf = np.zeros((k, k), dtype=np.int64)
        np.add.at(conf, (true.numpy(), pred.numpy()), 1)
        support = conf.sum(axis=1)
        per_class = {
            classes[c]: float(conf[c, c] / support[c]) if support[c] else float("nan")
            for c in range(k)
        }
    return EvalResult(
        accuracy=acc,
        per_class=per_class,
        confusion=conf,
        classes=list(classes),
        n=n,
        loss=loss_sum / n,
        multilabel=multilabel,
    )


def plot_confusion(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Write the confusion matrix of ``result`` as a PNG (matplotlib, Agg canvas).

    Single-label: a K x K heat map, rows = true class, columns = predicted, counts written
    in the cells. Multi-label: one bar per class with its accuracy, and TN/FP/FN/TP counts.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(path)
    k = len(result.classes)
    if result.multilabel:
        fig = Figure(figsize=(max(5.0, 0.9 * k + 2), 4.0))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        vals = [result.per_class[c] for c in result.classes]
        ax.bar(range(k), vals, color="tab:blue")
        for i in range(k):
            (tn, fp), (fn, tp) = result.confusion[i]
            ax.text(i, 0.02, f"TP {tp}\nFN {fn}\nFP {fp}\nTN {tn}", ha="center", fontsize=7)
        ax.set_xticks(range(k), result.classes, rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("per-class accuracy")
        ax.set_title(f"exact match {result.accuracy:.2%} (n={result.n})")
    else:
        size = max(4.0, 0.5 * k + 2)
        fig = Figure(figsize=(size + 1, size))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        conf = result.confusion
        im = ax.imshow(conf, cmap="Blues")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if k <= 30:
            hi = conf.max() / 2 if conf.size else 0
            for i in range(k):
                for j in range(k):
                    color = "white" if conf[i, j] > hi else "black"
                    ax.text(
                        j, i, str(conf[i, j]), ha="center", va="center", fontsize=7, color=color
                    )
            ax.set_xticks(range(k), result.classes, rotation=45, ha="right")
            ax.set_yticks(range(k), result.classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"accuracy {result.accuracy:.2%} (n={result.n})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
