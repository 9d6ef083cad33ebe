"""``cnnlens assess``: benchmark explanation methods on a dataset with ground truth.

    cnnlens assess --model runs/gap-shapes/model.safetensors --dataset shapes \\
        --methods all --metrics all --n 200 --out runs/assess-shapes --light
    cnnlens assess --model runs/mnist/model.safetensors --dataset mnist-embedded \\
        --metrics deletion,insertion,cascading_randomization --n 100 --out runs/assess-mnist
    cnnlens assess --model my.safetensors --dataset folder --data-dir mydata --out runs/mine
    cnnlens assess --model shapes-segmenter --weights runs/seg.safetensors \\
        --task segmentation --dataset shapes-objects --n 64 --out runs/assess-seg

Writes the table (``table.md``, ``table.csv``, ``table.json``: mean and 95% confidence
interval of every method x metric), the curves and sanity figures (``figures/*.png``) and
``report.html`` to OUT. torch runs on one CPU thread unless ``--threads`` says otherwise
(as in ``cnnlens demo``: on a busy machine two threads that wait for each other are many
times slower than one). The rows go to a Parquet store, ``OUT/rows/`` (the store of
``cnnlens.dataset``); ``--engine ray`` scores them on Ray Data with ``--actors`` model
copies (``--ray-address`` joins a cluster). Interrupted runs resume: run the same command
again and the rows saved in ``OUT/rows/`` are skipped. ``--dataset folder`` reads
``DATA_DIR/images/`` with a parallel ``DATA_DIR/masks/`` of binary PNGs (see docs/evaluation.md).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from cnnlens.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["parse_scoped_options", "register"]


def parse_scoped_options(items: list[str] | None, option: str) -> dict[str, dict[str, Any]]:
    """``["deletion.step=64", "road.noise=0"]`` -> ``{"deletion": {"step": 64}, ...}``.

    Raises:
        InputError: an item that is not ``NAME.KEY=VALUE``.
    """
    from cnnlens.cli._common import parse_value

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        for part in (p.strip() for p in str(item).split(",")):
            if not part:
                continue
            key, sep, raw = part.partition("=")
            name, dot, opt = key.strip().rpartition(".")
            if not sep or not dot or not name or not opt:
                raise InputError(f"{option} must look like NAME.KEY=VALUE, got {part!r}")
            out.setdefault(name, {})[opt.replace("-", "_")] = parse_value(raw)
    return out


def _dataset_options(items: list[str] | None) -> dict[str, Any]:
    from cnnlens.cli._common import parse_value

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise InputError(f"--dataset-option must look like KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(raw)
    return out


def assess_command(
    model: str = typer.Option(
        ..., "--model", "-m", help="cnnlens checkpoint (.safetensors) or a model name."
    ),
    dataset: str = typer.Option(
        ..., "--dataset", "-d", help="shapes, shapes-pair, mnist-embedded, ... or folder."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    weights: str | None = typer.Option(None, "--weights", help="Weights for a model name."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="For folder: the folder holding images/ and masks/."
    ),
    split: str = typer.Option("test", "--split", help="Dataset split."),
    dataset_option: list[str] | None = typer.Option(
        None, "--dataset-option", "-D", help="Dataset option KEY=VALUE (e.g. seed=1)."
    ),
    methods: list[str] | None = typer.Option(
        None, "--methods", "--method", help="Method names (comma list, repeat) or 'all'."
    ),
    metrics: list[str] | None = typer.Option(
        None, "--metrics", "--metric", help="Metric names (comma list, repeat) or 'all'."
    ),
    n: int = typer.Option(200, "--n", help="Images to assess (the first N)."),
    target_from: str = typer.Option(
        "label", "--target-from", help="label (ground-truth class) or predicted (top class)."
    ),
    old_target: str | None = typer.Option(None, "--target", hidden=True),
    option: list[str] | None = typer.Option(
        None,
        "--option",
        help="Method option [METHOD.]KEY=VALUE, e.g. rise.n_masks=1000 (repeat).",
    ),
    metric_option: list[str] | None = typer.Option(
        None, "--metric-option", help="METRIC.KEY=VALUE, e.g. deletion.step=64 (repeat)."
    ),
    light: bool = typer.Option(
        False, "--light", help="Scale down the slow methods (fewer steps, samples, masks)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows explained together."),
    sanity_images: int = typer.Option(
        8, "--sanity-images", help="Images for the sanity check (0: none)."
    ),
    examples: int = typer.Option(3, "--examples", help="Rows shown in figures/examples.png."),
    seed: int = typer.Option(0, "--seed", help="Seed of the baselines and sanity checks."),
    fresh: bool = typer.Option(False, "--fresh", help="Discard earlier rows in OUT."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    title: str | None = typer.Option(None, "--title", help="Title of the report."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    threads: int = typer.Option(
        1, "--threads", min=1, help="torch CPU threads (1 is the safe choice on a busy machine)."
    ),
    engine: str = typer.Option(
        "local", "--engine", help="local (this process) or ray (Ray Data actors)."
    ),
    actors: int = typer.Option(2, "--actors", help="Ray actors (model copies)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster to join (default: a local Ray instance)."
    ),
    task: str = typer.Option(
        "classification",
        "--task",
        help="classification, or segmentation (a segmenter by name or weights file on "
        "shapes-objects: one row per object).",
    ),
) -> None:
    """Benchmark explanation methods: every method x metric with 95% CIs, figures, report."""
    from cnnlens.assess import assess, load_data, resolve_methods
    from cnnlens.cli._common import load_model, parse_method_options, renamed, split_values
    from cnnlens.core.checks import check_int
    from cnnlens.core.registry import preset_options

    check_int("--n", n)
    target = renamed(target_from, old_target, "--target", "--target-from")
    if data_dir is not None and not data_dir.is_dir():
        raise InputError(f"--data-dir {str(data_dir)!r} does not exist or is not a folder")
    chosen = resolve_methods(split_values(methods) or ["all"])
    given = {k: v for k, v in parse_method_options(option, chosen).items() if v}
    base = preset_options(chosen, "light") if light else {}
    m_opts = {k: {**base.get(k, {}), **given.get(k, {})} for k in {**base, **given}}
    x_opts = parse_scoped_options(metric_option, "--metric-option")
    import torch

    from cnnlens.assess.tasks import TASKS, load_objects
    from cnnlens.core.checks import check_choice

    check_choice("--task", task, TASKS, error=InputError)
    if task == "classification":
        net, info = load_model(model, weights, device)
    else:
        net, info = _task_model(model, task, weights, device), None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    with _warnings_as_lines():
        if task != "classification" and dataset != "folder":
            opts = _dataset_options(dataset_option)
            if set(opts) - {"size", "seed"}:
                raise InputError(
                    f"--dataset-option for {dataset} takes size and seed, got {sorted(opts)}"
                )
            data = load_objects(dataset, n=n, split=split, **opts)
        else:
            data = load_data(
                dataset,
                model_info=info,
                split=split,
                root=data_dir,
                n=n,
                options=_dataset_options(dataset_option),
            )
        try:
            res = assess(
                net,
                data,
                out,
                methods=chosen,
                metrics=split_values(metrics) or "all",
                n=n,
                target=target,
                batch_size=batch_size,
                seed=seed,
                method_options=m_opts,
                metric_options=x_opts,
                sanity_images=sanity_images,
                examples=examples,
                model_info=info,
                title=title,
                progress=progress,
                fresh=fresh,
                echo=typer.echo,
                engine=engine,
                actors=actors,
                ray_address=ray_address,
                task=task,
            )
        except KeyboardInterrupt:
            typer.echo(
                f"interrupted: the finished rows are saved in {out / 'rows'}; run the "
                "same command again to resume",
                err=True,
            )
            raise typer.Exit(130) from None
        finally:
            torch.set_num_threads(before)
    _print_table(res)
    typer.echo(f"table: {res.files['table_md']} (also table.csv, table.json)")
    typer.echo(f"report: {res.files['report']}")


def _task_model(model: str, task: str, weights: str | None, device: str) -> Any:
    """A segmenter by name (:func:`cnnlens.models.tasks.create_task_model`) on ``device``."""
    from cnnlens.core.device import resolve_device
    from cnnlens.models.tasks import create_task_model

    return create_task_model(model, task, weights=weights).to(resolve_device(device))


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show each warning as one line ``warning: ...`` on stderr (no file and line)."""
    saved = warnings.showwarning

    def show(message: Any, *_: Any, **__: Any) -> None:
        typer.echo(f"warning: {message}", err=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def _metric_chunks(labels: list[str], first: int, width: int) -> list[list[int]]:
    """Split the metric columns into groups whose table fits ``width`` characters (a number
    column is at least 6 wide, ``-0.123``; each column adds 3 for padding and the rule)."""
    chunks: list[list[int]] = [[]]
    used = first
    for i, label in enumerate(labels):
        need = max(6, len(label)) + 3
        if chunks[-1] and used + need > width:
            chunks.append([])
            used = first
        chunks[-1].append(i)
        used += need
    return chunks


def _print_table(res: Any) -> None:
    """The means as compact tables that fit the terminal (several, one per group of metric
    columns, when one would not): numbers are never cut (the intervals are in table.md)."""
    from rich.console import Console
    from rich.table import Table

    from cnnlens.assess import BASELINES, metric_direction, metric_label

    arrow = {True: "↑", False: "↓", None: ""}
    labels = [metric_label(m) + arrow[metric_direction(m)] for m in res.metrics]
    by = {(r["method"], r["metric"]): r["mean"] for r in res.rows}
    methods = [m for m in [*res.methods, *BASELINES] if any(k[0] == m for k in by)]
    console = Console()
    first = max([len("method"), *(len(m) for m in methods)]) + 2
    chunks = _metric_chunks(labels, first, console.width)
    for n, chunk in enumerate(chunks):
        part = f" ({n + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        table = Table(title=f"means (intervals in table.md){part}", show_edge=False)
        table.add_column("method", no_wrap=True)
        for i in chunk:
            table.add_column(labels[i], justify="right", no_wrap=True, min_width=6)
        for method in methods:
            cells = [by.get((method, res.metrics[i]), float("nan")) for i in chunk]
            table.add_row(method, *("—" if v != v else f"{v:.3f}" for v in cells))
        console.print(table)
    outcome = {True: "passes", False: "FAILS", None: "inconclusive"}
    for v in res.sanity:
        typer.echo(f"sanity ({v.check}): {v.method} {outcome[v.passed]}: {v.detail}")


def register(app: typer.Typer) -> None:
    """Add the ``assess`` command to the cnnlens command line."""
    app.command("assess")(assess_command)
