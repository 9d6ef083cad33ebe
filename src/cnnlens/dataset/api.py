"""``cnnlens.dataset.explain``: explain a whole dataset into a resumable Parquet store."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.dataset.job import KIND, SCHEMA_VERSION, ExplainJob, model_hash
from cnnlens.dataset.jobs import BatchDone, RunStats, check_positive, open_job_store
from cnnlens.dataset.local import run_local
from cnnlens.dataset.sources import resolve_source
from cnnlens.dataset.store import canonical_hash
from cnnlens.errors import InputError, ModelError, TargetError

__all__ = ["ENGINES", "KIND", "ExplainSummary", "explain"]

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass
class ExplainSummary:
    """What :func:`explain` did.

    Attributes:
        store: the store folder.
        engine: ``"local"`` or ``"ray"``.
        stats: counts and wall time (:class:`~cnnlens.dataset.local.RunStats`).
        methods: the methods run.
    """

    store: Path
    engine: str
    stats: RunStats
    methods: list[str]

    def line(self) -> str:
        """One line: images computed, resumed, errors, rows, throughput."""
        s = self.stats
        return (
            f"{s.computed} image(s) explained ({s.skipped} already in the store, "
            f"{s.errors} error row(s)), {s.rows} row(s) in {s.seconds:.1f} s: "
            f"{s.images_per_second:.1f} images/s with the {self.engine} engine"
        )


def _methods(
    method: str | Sequence[str], options: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    from cnnlens.core.registry import get_method

    names = [method] if isinstance(method, str) else list(method)
    if not names:
        raise InputError("method must name at least one method (e.g. 'gradcam')")
    out = {get_method(n).name: {} for n in names}
    opts = dict(options or {})
    per_method = opts and all(isinstance(v, Mapping) and k in out for k, v in opts.items())
    for name in out:
        out[name] = dict(opts.get(name, {})) if per_method else dict(opts)
    return out


def _model(
    model: str | os.PathLike[str] | nn.Module,
    weights: str | None,
    device: torch.device,
    input_size: Sequence[int] | None,
    preset: str | None,
    class_names: Sequence[str] | None,
) -> tuple[nn.Module, dict[str, Any]]:
    from cnnlens.models import load

    if isinstance(model, nn.Module):
        if input_size is None:
            raise InputError("input_size=(C, H, W) is needed when model is an nn.Module")
        c, h, w = (int(v) for v in input_size) if len(input_size) == 3 else (3, *input_size)
        info = {"arch": type(model).__name__, "input_size": (h, w), "in_channels": c}
        info |= {"preset": preset or "none", "class_names": list(class_names or [])}
        info |= {"source": None, "multilabel": False}
        return model.to(device), info
    if weights is None and not Path(os.fspath(model)).expanduser().is_file():
        logger.warning(
            "model %s has random weights (no weights given): a later run cannot resume into "
            "this store, its model hash will differ",
            model,
        )
    net, mi = load(model, weights=weights, device=device)
    info = {
        "arch": mi.arch,
        "input_size": tuple(int(v) for v in (input_size or mi.input_size)[-2:]),
        "in_channels": int(mi.in_channels),
        "preset": preset or mi.preset,
        "class_names": list(class_names or mi.class_names or []),
        "source": os.fspath(model),
        "multilabel": bool((mi.extra or {}).get("multilabel")) or mi.dataset == "shapes-pair",
    }
    return net, info


def _num_classes(net: nn.Module, info: dict[str, Any], device: torch.device) -> int:
    from cnnlens.core.capture import frozen

    param = next(iter(net.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    with frozen(net), torch.no_grad():
        probe = net(
            torch.zeros(1, info["in_channels"], *info["input_size"], device=device, dtype=dtype)
        )
    if not isinstance(probe, Tensor) or probe.dim() != 2:
        shape = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
        raise ModelError(f"model must return class scores (B, N) to explain a dataset, got {shape}")
    return int(probe.shape[1])


def _targets_layer_names(
    net: nn.Module,
    info: dict[str, Any],
    dev: torch.device,
    target: Any,
    topk: int | None,
    layer: str | Sequence[str] | None,
) -> tuple[list[int], str | list[str] | None, list[str]]:
    """Checked class indices, the layer argument and the class names (indices as names when
    the model has none, or a wrong count)."""
    from cnnlens.core.classes import parse_class_list
    from cnnlens.core.layers import resolve_layer

    num_classes = _num_classes(net, info, dev)
    given = [target] if isinstance(target, int | str) else list(target or [])
    targets = parse_class_list(
        [str(t) for t in given],
        num_classes=num_classes,
        class_names=info["class_names"] or None,
        option="target",
    )
    if topk is not None and (isinstance(topk, bool) or not 1 <= topk <= num_classes):
        raise TargetError(f"topk must be between 1 and {num_classes}, got {topk}")
    layers = [layer] if isinstance(layer, str) else list(layer or [])
    layers = [resolve_layer(net, name)[0] for name in layers]
    layer_arg = layers[0] if len(layers) == 1 else (layers or None)
    names = info["class_names"]
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return targets, layer_arg, names


def explain(
    dataset: str | os.PathLike[str],
    model: str | os.PathLike[str] | nn.Module,
    *,
    out: str | os.PathLike[str],
    method: str | Sequence[str] = "gradcam",
    weights: str | None = None,
    layer: str | Sequence[str] | None = None,
    target: int | str | Sequence[int | str] | None = None,
    topk: int | None = None,
    options: Mapping[str, Any] | None = None,
    map_size: int = 64,
    engine: str = "local",
    batch_size: int = 16,
    workers: int = 2,
    prefetch: int = 2,
    device: str = "cpu",
    split: str = "test",
    dataset_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    on_batch: Callable[[BatchDone], None] | None = None,
    ray_address: str | None = None,
    actors: int = 2,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    ray_num_cpus: int | None = None,
    input_size: Sequence[int] | None = None,
    preset: str | None = None,
    class_names: Sequence[str] | None = None,
    channels_last: bool = True,
) -> ExplainSummary:
    """Explain every image of ``dataset`` into a Parquet store at ``out`` (resumable).

    Rows already in the store (same image id and content, and the store's settings: model
    hash, methods, options, layer, targets, map size) are skipped; re-running with other
    settings is refused unless ``overwrite``. Each batch is one part file written
    atomically, so a killed run loses at most the batch in flight. An image that cannot be
    read is a row with its ``error``. Schema: :data:`cnnlens.dataset.job.SCHEMA`.

    Args:
        dataset: a folder, a glob, a list file, an image, or a dataset name (``"shapes"``,
            ``"shapes:test"``); see :func:`cnnlens.dataset.sources.resolve_source`.
        model: a model name, a cnnlens checkpoint, or an ``nn.Module`` (then give
            ``input_size`` and ``preset``).
        out: the store folder.
        method: one registered method name or several.
        weights: weights for a model name (a file or a torchvision weights name).
        layer: for CAM methods: a dotted name, a list (one map per layer), or None (auto).
        target: classes explained for every image: indices, ranges (``"0-4"``) or class
            names; default each image's top class.
        topk: explain each image's K most probable classes instead.
        options: method options, ``{"n_steps": 16}`` for every method, or per method
            ``{"integrated_gradients": {"n_steps": 16}}``.
        map_size: longer side of the stored maps (smaller inputs keep their size).
        engine: ``"local"`` (in-process) or ``"ray"`` (Ray Data; ``pip install 'cnnlens[ray]'``).
        batch_size: images per device batch and per part file (docs/benchmarks.md compares
            batch sizes on a CPU; a GPU takes larger ones).
        workers: loader threads (local engine).
        prefetch: batches loaded ahead (local engine).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (local engine; Ray uses ``gpus_per_actor``).
        split: split of a dataset name.
        dataset_options: options of a dataset name (e.g. ``{"n": 500}`` for ``shapes``).
        overwrite: replace a store written with other settings.
        progress: a progress bar (local) or Ray's progress bars.
        on_batch: called after each part file is written.
        ray_address: a Ray cluster to join; None starts a local instance.
        actors: Ray actors (model copies).
        cpus_per_actor: CPUs per Ray actor.
        gpus_per_actor: GPUs per Ray actor (the model then runs on ``cuda``).
        ray_num_cpus: CPUs of a local Ray instance (default: all of the machine).
        input_size: (C, H, W) or (H, W) the model takes (default: the model's).
        preset: normalization preset (default: the model's).
        class_names: names of the classes (default: the model's).
        channels_last: run a channels-last copy of the model (faster convolutions; see
            :func:`cnnlens.dataset.job.channels_last_copy`); False runs the model as given.

    Returns:
        An :class:`ExplainSummary` (``.store`` is the store's path).

    Raises:
        CnnlensError: bad arguments (unknown method, layer, class, engine), a store written
            with other settings, a dataset with no images.

    Example:
        >>> s = cnnlens.dataset.explain("val/", "resnet18", weights="DEFAULT", out="val.store")
        ... # doctest: +SKIP
        >>> table = cnnlens.dataset.load(s.store)                               # doctest: +SKIP
    """
    from cnnlens.core.device import resolve_device

    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    check_positive("map_size", map_size)
    check_positive("batch_size", batch_size)
    if topk is not None and target is not None:
        raise InputError("give target or topk, not both")
    methods = _methods(method, options)
    dev = resolve_device(device) if engine == "local" else torch.device("cpu")
    net, info = _model(model, weights, dev, input_size, preset, class_names)
    targets, layer_arg, names = _targets_layer_names(net, info, dev, target, topk, layer)
    crop = info["preset"] == "imagenet"
    mhash = model_hash(net, info["arch"])
    common = {"layer": layer_arg, "target": targets, "topk": topk, "map_size": map_size}
    common |= {k: info[k] for k in ("input_size", "in_channels", "preset", "multilabel")}
    common["crop"] = crop
    settings = {"schema": SCHEMA_VERSION, "model_hash": mhash, "methods": methods, **common}
    source = resolve_source(dataset, split=split, options=dict(dataset_options or {}))
    job = ExplainJob(
        model=net,
        source=source,
        methods=methods,
        options_hash={
            m: canonical_hash({"method": m, "options": o, **common}) for m, o in methods.items()
        },
        model_hash=mhash,
        class_names=names,
        input_size=info["input_size"],
        in_channels=info["in_channels"],
        preset=info["preset"],
        crop=crop,
        layer=layer_arg,
        target=targets,
        topk=topk,
        map_size=map_size,
        multilabel=info["multilabel"],
        device=str(dev) if engine == "local" else ("cuda" if gpus_per_actor else "cpu"),
        channels_last=bool(channels_last),
    )
    store = open_job_store(
        out,
        job,
        settings=settings,
        overwrite=overwrite,
        info={"arch": info["arch"], "model": info["source"], "class_names": names},
    )
    with store.writing():
        store.remove_stale_temporaries()
        if engine == "local":
            stats = run_local(
                job,
                source.items,
                store,
                batch_size=batch_size,
                workers=workers,
                prefetch=prefetch,
                progress=progress,
                on_batch=on_batch,
            )
        else:
            from cnnlens.dataset.ray_engine import run_ray

            stats = run_ray(
                job,
                source.items,
                store,
                batch_size=batch_size,
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                address=ray_address,
                num_cpus=ray_num_cpus,
                progress=progress,
                on_batch=on_batch,
            )
    summary = ExplainSummary(store.path, engine, stats, list(methods))
    logger.info("%s", summary.line())
    return summary
