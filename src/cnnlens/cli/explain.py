"""``cnnlens explain IMAGE_OR_DIR... --model M --out DIR``: explain a model's predictions for
image files and write PNGs, ``results.json`` and ``report.html``.

    cnnlens explain digits/ --model runs/mnist/model.safetensors --method gradcam \\
        --method integrated_gradients --out runs/explain
    cnnlens explain photo.jpg --model resnet50 --weights DEFAULT --topk 2 --method all \\
        --out runs/photo

The pipeline is :func:`cnnlens.pipelines.explain.run_explain`; this module parses the
options, calls it and prints what it did.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]


def explain_command(
    inputs: list[str] = typer.Argument(
        ..., metavar="IMAGE_OR_DIR...", help="Image files and folders of images."
    ),
    model: str = typer.Option(
        ..., "--model", "-m", help="Model name (resnet50) or cnnlens checkpoint (.safetensors)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    weights: str | None = typer.Option(
        None, "--weights", help="Weights for a model name: a file, or a torchvision name."
    ),
    method: list[str] | None = typer.Option(
        None,
        "--method",
        "--methods",
        help="Method names (repeat, comma list, or 'all'); default gradcam.",
    ),
    target: list[str] | None = typer.Option(
        None, "--target", help="Class index to explain (repeat for several); default the top class."
    ),
    target_name: list[str] | None = typer.Option(
        None, "--target-name", help="Class name to explain (repeat for several)."
    ),
    topk: int | None = typer.Option(None, "--topk", help="Explain the K most probable classes."),
    layer: list[str] | None = typer.Option(
        None, "--layer", "-l", help="Layer for CAM methods (repeat: one map per layer)."
    ),
    option: list[str] | None = typer.Option(
        None,
        "--option",
        help="Method option KEY=VALUE, or METHOD.KEY=VALUE (e.g. rise.n_masks=1000).",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
    title: str | None = typer.Option(None, "--title", help="Title of the report."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    # dataset store mode (cnnlens.dataset; see cli/_dataset.py and docs/scale.md)
    fmt: str | None = typer.Option(
        None, "--format", help="png (default: PNGs + report) or parquet (a resumable store)."
    ),
    engine: str | None = typer.Option(
        None, "--engine", help="Store mode engine: local (in-process) or ray (Ray Data)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster to join (default: a local Ray instance)."
    ),
    actors: int = typer.Option(2, "--actors", help="Ray actors (model copies)."),
    map_size: int = typer.Option(64, "--map-size", help="Longer side of the stored maps."),
    split: str = typer.Option("test", "--split", help="Split of a dataset name."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a folder or store written by another run."
    ),
    workers: int = typer.Option(2, "--workers", help="Loader threads (local engine)."),
    # tasks beyond single-label classification (pipelines/explain_tasks.py, docs/tasks.md)
    task: str | None = typer.Option(
        None, "--task", help="detection, segmentation or multilabel (default: classification)."
    ),
    class_: list[str] | None = typer.Option(
        None, "--class", help="Segmentation: class name or index to explain (repeat)."
    ),
    score_threshold: float = typer.Option(
        0.5, "--score-threshold", help="Least detection score / multi-label probability."
    ),
    max_detections: int = typer.Option(
        5, "--max-detections", help="Detections (labels) per image."
    ),
    size: int | None = typer.Option(
        None, "--size", help="Detection/segmentation: resize the shorter side to SIZE pixels."
    ),
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Classes of a random-weight detector or segmenter."
    ),
) -> None:
    """Explain a model's predictions for images: PNGs, results.json and report.html in OUT.

    With --format parquet (or --engine local|ray), explain one DATASET (a folder, a glob, a
    list file or a dataset name) into a resumable Parquet store at OUT instead.
    """
    from cnnlens.cli import _dataset

    if task is not None and task != "classification":
        _explain_task(
            inputs, task=task, model=model, out=out, weights=weights, methods=method or (),
            options=option or (), classes=class_ or (), score_threshold=score_threshold,
            max_detections=max_detections, layer=layer, size=size, num_classes=num_classes,
            device=device, title=title, overwrite=overwrite,
        )  # fmt: skip
        return
    if _dataset.wants_store(fmt, engine):
        _dataset.explain_store(
            inputs, model=model, out=out, weights=weights, methods=method or (),
            options=option or (), targets=target or (), target_names=target_name or (),
            topk=topk, layers=layer or (), device=device, batch_size=batch_size,
            progress=progress, engine=engine, ray_address=ray_address, actors=actors,
            map_size=map_size, split=split, overwrite=overwrite, workers=workers,
        )  # fmt: skip
        return
    from cnnlens.pipelines.explain import run_explain

    run = run_explain(
        inputs,
        model=model,
        out=out,
        weights=weights,
        methods=method or (),
        options=option or (),
        targets=target or (),
        target_names=target_name or (),
        topk=topk,
        layers=layer or (),
        device=device,
        batch_size=batch_size,
        progress=progress,
        title=title,
        overwrite=overwrite,
    )
    typer.echo(
        f"explained {len(run.explained)} image(s) with {len(run.methods)} method(s): "
        f"{run.maps} maps in {run.seconds:.1f} s"
    )
    if run.methods_skipped:
        from cnnlens.pipelines.explain import first_sentence

        typer.echo("methods not applicable to this model (reasons in results.json):")
        for name, reason in run.methods_skipped.items():
            typer.echo(f"  {name}: {first_sentence(reason)}")
    if run.skipped:
        typer.echo(
            f"skipped {len(run.skipped)} input(s): "
            + ", ".join(s["file"] for s in run.skipped[:10])
            + (" ..." if len(run.skipped) > 10 else "")
        )
    typer.echo(f"results: {run.results}")
    typer.echo(f"report: {run.report}")


def _explain_task(inputs: list[str], *, layer: list[str] | None, **kwargs) -> None:
    """``--task detection|segmentation|multilabel``: one map per detection, class region or
    label (cnnlens.pipelines.explain_tasks)."""
    from cnnlens.errors import InputError
    from cnnlens.pipelines.explain_tasks import run_explain_task

    if layer and len(layer) > 1:
        raise InputError("--task takes one --layer")
    run = run_explain_task(inputs, layer=layer[0] if layer else None, **kwargs)
    typer.echo(
        f"explained {len(run.explained)} image(s) ({kwargs['task']}) with "
        f"{len(run.methods)} method(s): {run.maps} pictures in {run.seconds:.1f} s"
    )
    typer.echo(f"results: {run.results}")
    typer.echo(f"report: {run.report}")


def register(app: typer.Typer) -> None:
    """Add the ``explain`` command to the cnnlens command line."""
    app.command("explain")(explain_command)
