"""The store mode of ``cnnlens explain`` (``--format parquet`` or ``--engine``) and of
``cnnlens report STORE``: parse the shared options, call :mod:`cnnlens.dataset`, print.

    cnnlens explain val/ --model resnet18 --weights DEFAULT --format parquet --out val.store
    cnnlens explain "scans/**/*.png" --model run/model.safetensors --engine ray --out s.store
    cnnlens report val.store
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from cnnlens.errors import InputError

__all__ = ["FORMATS", "explain_store", "is_store", "report_store", "wants_store"]

FORMATS = ("png", "parquet")


def wants_store(fmt: str | None, engine: str | None) -> bool:
    """Whether ``cnnlens explain`` writes a Parquet store: ``--format parquet``, or any
    ``--engine`` (the PNG output has one engine only).

    Raises:
        InputError: an unknown format, or ``--format png`` with ``--engine``.
    """
    if fmt is None:
        return engine is not None
    if fmt.lower() not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt.lower() == "png" and engine is not None:
        raise InputError("--engine writes a Parquet store: use it with --format parquet")
    return fmt.lower() == "parquet"


def explain_store(
    inputs: Sequence[str],
    *,
    model: str,
    out: Path,
    weights: str | None,
    methods: Sequence[str],
    options: Sequence[str],
    targets: Sequence[str],
    target_names: Sequence[str],
    topk: int | None,
    layers: Sequence[str],
    device: str,
    batch_size: int,
    progress: bool,
    engine: str | None,
    ray_address: str | None,
    actors: int,
    map_size: int,
    split: str,
    overwrite: bool,
    workers: int,
) -> None:
    """Run :func:`cnnlens.dataset.explain` from the command line's values and print the
    throughput line and the store's path."""
    from cnnlens.core.registry import get_method, list_methods
    from cnnlens.dataset import explain
    from cnnlens.pipelines.options import parse_method_options, split_values

    if len(inputs) != 1:
        raise InputError(
            f"the Parquet store takes one DATASET (a folder, a glob, a list file or a dataset "
            f"name), got {len(inputs)}: {', '.join(inputs[:3])}"
        )
    names: list[str] = []
    for name in split_values(methods) or ["gradcam"]:
        for n in list_methods() if name.lower() == "all" else [get_method(name).name]:
            if n not in names:
                names.append(n)
    if split_values(targets) and split_values(target_names):
        raise InputError("give only one of --target and --target-name")
    summary = explain(
        inputs[0],
        model,
        out=out,
        method=names,
        weights=weights,
        layer=split_values(layers) or None,
        target=split_values(targets) or split_values(target_names) or None,
        topk=topk,
        options=parse_method_options(options, names),
        map_size=map_size,
        engine=engine or "local",
        batch_size=batch_size,
        workers=workers,
        device=device,
        split=split,
        overwrite=overwrite,
        progress=progress,
        ray_address=ray_address,
        actors=actors,
    )
    typer.echo(summary.line())
    typer.echo(f"store: {summary.store}")


def is_store(path: Path) -> bool:
    """Whether ``path`` is a store folder (it holds the store's settings file)."""
    from cnnlens.dataset.store import SETTINGS_FILE

    return (Path(path) / SETTINGS_FILE).is_file()


def report_store(path: Path, out: Path | None, title: str | None) -> Path:
    """Write the report of a store (see :func:`cnnlens.dataset.build_store_report`)."""
    from cnnlens.dataset import build_store_report

    return build_store_report(path, out, title=title)
