"""``cnnlens prototype`` and ``cnnlens visualize``: what a class or a channel looks like to a
network.

    cnnlens prototype --model runs/mnist/model.safetensors --out runs/protos
    cnnlens prototype --model runs/mnist/model.safetensors --classes 3,1 --init eight.png --out o
    cnnlens visualize --model runs/shapes/model.safetensors --layer features --channels 0-15 --out v
    cnnlens visualize --model runs/shapes/model.safetensors --class 0-4 --out v

The pipelines are :func:`cnnlens.pipelines.prototype.run_prototypes` and
:func:`~cnnlens.pipelines.prototype.run_visualize`; this module parses, calls them and prints
the library's warnings as one line each.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show the library's warnings as one ``warning: ...`` line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen: set[str] = set()
            for w in caught:
                text = str(w.message)
                if text not in seen:
                    seen.add(text)
                    typer.echo(f"warning: {text}", err=True)


def prototype_command(
    model: str = typer.Option(
        ..., "--model", "-m", help="Checkpoint written by cnnlens train (or a model name)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    classes: str | None = typer.Option(
        None, "--classes", help="Classes: '0-9', '1,3,5' or class names (default: all)."
    ),
    init: str = typer.Option("zeros", "--init", help="zeros, noise or an image file."),
    steps: int = typer.Option(1000, "--steps", help="Step budget."),
    lam: float = typer.Option(0.1, "--lambda", help="Weight of the class-mean prior (0: none)."),
    lr: float = typer.Option(0.01, "--lr", help="Adam's learning rate."),
    stop_at: float = typer.Option(
        0.99, "--stop-at", help="Stop when every class reaches this probability."
    ),
    old_target: float | None = typer.Option(None, "--target", hidden=True),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        "-d",
        help="Training set for the class means (default: the checkpoint's).",
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder of on-disk datasets."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise start."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:0, ..."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Class prototypes: inputs the model assigns to each class, near the class's mean image.

    Writes OUT/grid.png, OUT/class_<i>_<name>.png, OUT/prototypes.json (final probabilities
    and steps) and, with --init IMAGE, OUT/start.png and OUT/change_<i>_<name>.png.
    """
    from cnnlens.cli._common import renamed
    from cnnlens.pipelines.prototype import run_prototypes

    stop_at = renamed(stop_at, old_target, "--target", "--stop-at")
    with _warnings_as_lines():
        result = run_prototypes(
            model,
            out,
            classes=classes,
            init=init,
            steps=steps,
            lam=lam,
            lr=lr,
            target=stop_at,
            dataset=dataset,
            data_dir=data_dir,
            seed=seed,
            device=device,
            progress=progress,
        )
    for name, p, ok in zip(
        result.class_names, result.probs.tolist(), result.reached.tolist(), strict=True
    ):
        typer.echo(f"{name:>12}  p = {p:.4f}{'' if ok else '  (--stop-at not reached)'}")
    typer.echo(f"{result.steps} steps; wrote {out}")


def visualize_command(
    model: str = typer.Option(..., "--model", "-m", help="Model name or checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    layer: str | None = typer.Option(
        None, "--layer", "-l", help="Dotted layer name (for channel visualizations)."
    ),
    channels: str | None = typer.Option(
        None, "--channels", help="Channels of --layer: '0-15', '3,7' (default: the first 16)."
    ),
    class_: str | None = typer.Option(
        None, "--class", help="Visualize classes instead: an index, '0-4' or names."
    ),
    param: str = typer.Option("fft", "--param", help="fft or pixel."),
    transforms: str = typer.Option(
        "standard",
        "--transforms",
        help="standard (pad, jitter, scale, rotate each step: legible images) or none "
        "(the highest activation).",
    ),
    steps: int = typer.Option(512, "--steps", help="Optimization steps."),
    lr: float = typer.Option(0.1, "--lr", help="Adam's learning rate."),
    tv: float = typer.Option(0.0, "--tv", help="Total-variation penalty weight."),
    l2: float = typer.Option(0.0, "--l2", help="L2 penalty weight."),
    blur_every: int = typer.Option(0, "--blur-every", help="Blur every N steps (0: never)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same images)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:0, ..."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Activation maximization: a grid of images that excite channels of a layer or classes.

    Writes OUT/grid.png, one PNG per image and OUT/visualizations.json.
    """
    from cnnlens.pipelines.prototype import run_visualize

    with _warnings_as_lines():
        result = run_visualize(
            model,
            out,
            layer=layer,
            channels=channels,
            classes=class_,
            device=device,
            param=param,
            transforms=transforms,
            steps=steps,
            lr=lr,
            tv=tv,
            l2=l2,
            blur_every=blur_every,
            seed=seed,
            progress=progress,
        )
    typer.echo(f"{len(result.labels)} images, {steps} steps; wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the ``prototype`` and ``visualize`` commands to ``app``."""
    app.command("prototype")(prototype_command)
    app.command("visualize")(visualize_command)
