"""``cnnlens prototype`` and ``cnnlens visualize``: what a class or a channel looks like to a
network.

    cnnlens prototype --model runs/mnist/model.safetensors --out runs/protos
    cnnlens prototype --model runs/mnist/model.safetensors --classes 3,1 --init eight.png --out o
    cnnlens visualize --model runs/shapes/model.safetensors --layer features --channels 0-15 --out v
    cnnlens visualize --model runs/shapes/model.safetensors --class 0-4 --out v
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from cnnlens.errors import DataError, InputError

log = logging.getLogger("cnnlens")


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


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise InputError(f"--steps must be a positive integer, got {steps}")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a folder")


def _class_means(info: Any, dataset: str | None, data_dir: Path | None) -> Any:
    """Class means of the checkpoint's training set, fitted to the model's input size."""
    import torch.nn.functional as F

    from cnnlens.data import get_dataset
    from cnnlens.prototypes import class_means

    name = dataset or info.dataset
    if not name:
        raise DataError(
            f"the class-mean prior needs the training set, but {info.source or info.arch!r} "
            "records no dataset; pass --dataset NAME, or --lambda 0 to drop the prior"
        )
    if data_dir is not None and not data_dir.is_dir():
        raise DataError(f"--data-dir {str(data_dir)!r} does not exist or is not a folder")
    train_set = get_dataset(name, split="train", root=data_dir)
    means = class_means(train_set)
    n = info.num_classes or (len(info.class_names) if info.class_names else None)
    if n is not None and means.shape[0] != n:
        raise DataError(
            f"dataset {name!r} has {means.shape[0]} classes but the model has {n}; pass the "
            "--dataset the model was trained on"
        )
    size = tuple(info.input_size)
    if means.shape[1] != info.in_channels:
        raise DataError(
            f"dataset {name!r} has {means.shape[1]}-channel images but the model takes "
            f"{info.in_channels} channels"
        )
    if tuple(means.shape[2:]) != size:
        log.info("resizing the class means of %s to %s", name, size)
        means = F.interpolate(means, size=size, mode="bilinear", align_corners=False)
    return means


def _init_image(init: str, channels: int) -> Any:
    if init in ("zeros", "noise"):
        return init
    path = Path(init)
    if not path.exists():
        raise InputError(f"--init must be zeros, noise or an image file; {init!r} does not exist")
    from cnnlens.data import load_image, to_tensor

    img = load_image(path, mode="L" if channels == 1 else "RGB")
    return to_tensor(img, preset=None, channels=channels)  # [0, 1], size kept (checked later)


def prototype_command(
    model: str = typer.Option(
        ..., "--model", "-m", help="Checkpoint written by cnnlens train (or a model name)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    classes: str | None = typer.Option(
        None, "--classes", help="Classes: '0-9', '1,3,5' or class names (default: all)."
    ),
    init: str = typer.Option("zeros", "--init", help="zeros, noise or an image file."),
    steps: int = typer.Option(1000, "--steps", help="Step budget."),
    lam: float = typer.Option(0.1, "--lambda", help="Weight of the class-mean prior (0: none)."),
    lr: float = typer.Option(0.01, "--lr", help="Adam's learning rate."),
    target: float = typer.Option(0.99, "--target", help="Stop when every class reaches this."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Training set for the class means (default: the checkpoint's)."
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
    _check_steps(steps)
    _check_out(out)
    from cnnlens.models import load
    from cnnlens.prototypes import class_prototypes
    from cnnlens.prototypes.figures import save_prototypes

    net, info = load(model, device=device)
    shape = (info.in_channels, *info.input_size)
    start = _init_image(init, info.in_channels)
    prior = _class_means(info, dataset, data_dir) if lam > 0 else None
    with _warnings_as_lines():
        result = class_prototypes(
            net,
            classes,
            prior=prior,
            lam=lam,
            init=start,
            shape=shape,
            preset=info.preset,
            class_names=info.class_names,
            lr=lr,
            steps=steps,
            target_prob=target,
            seed=seed,
            progress=progress,
        )
        save_prototypes(result, out)
    for name, p, ok in zip(
        result.class_names, result.probs.tolist(), result.reached.tolist(), strict=True
    ):
        typer.echo(f"{name:>12}  p = {p:.4f}{'' if ok else '  (target not reached)'}")
    typer.echo(f"{result.steps} steps; wrote {out}")


def _probe(net: Any, shape: tuple[int, ...], preset: str, layer: str | None) -> tuple[int, int]:
    """(number of model outputs, channels of ``layer``'s output) from one forward pass."""
    import torch

    from cnnlens.core.capture import frozen
    from cnnlens.prototypes._util import device_dtype, preset_for
    from cnnlens.prototypes.objectives import capture_layers

    device, dtype = device_dtype(net)
    x = preset_for(preset, shape[0]).normalize(torch.full((1, *shape), 0.5)).to(device, dtype)
    layers = [layer] if layer else []
    with frozen(net), torch.no_grad(), capture_layers(net, layers) as (acts, names):
        logits = net(x)
        act = acts.get(names[layer]) if layer else None
    if layer and act is None:
        raise InputError(f"layer {layer!r} returned no tensor, so it has no channels to show")
    return int(logits.shape[1]), (int(act.shape[1]) if act is not None else 0)


def visualize_command(
    model: str = typer.Option(..., "--model", "-m", help="Model name or checkpoint."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
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
    _check_steps(steps)
    _check_out(out)
    if param not in ("fft", "pixel"):
        raise InputError(f"--param must be fft or pixel, got {param!r}")
    if transforms not in ("standard", "none"):
        raise InputError(f"--transforms must be standard or none, got {transforms!r}")
    if class_ is None and layer is None:
        raise InputError("give --layer (with --channels) for channels, or --class for classes")
    from cnnlens.models import load
    from cnnlens.prototypes import parse_classes, parse_indices
    from cnnlens.prototypes.figures import save_visualizations
    from cnnlens.prototypes.maximize import visualize_channels, visualize_classes

    net, info = load(model, device=device)
    shape = (info.in_channels, *info.input_size)
    options = dict(
        param=param,
        transforms=transforms,
        steps=steps,
        lr=lr,
        tv=tv,
        l2=l2,
        blur_every=blur_every,
        seed=seed,
        preset=info.preset,
        progress=progress,
    )
    run: Callable[[], Any]
    if class_ is not None:
        n, _ = _probe(net, shape, info.preset, None)
        idx = parse_classes(class_, info.class_names, n)

        def run() -> Any:
            return visualize_classes(net, idx, shape, class_names=info.class_names, **options)

    else:
        assert layer is not None
        from cnnlens.core.layers import resolve_layer

        name, _ = resolve_layer(net, layer)
        _, n = _probe(net, shape, info.preset, name)
        chans = parse_indices(
            channels if channels is not None else f"0-{min(n, 16) - 1}",
            n,
            what="channel",
            owner=f"layer {name!r}",
            error=InputError,
        )

        def run() -> Any:
            return visualize_channels(net, name, chans, shape, **options)

    with _warnings_as_lines():
        result = run()
        save_visualizations(result, out)
    typer.echo(f"{len(result.labels)} images, {steps} steps; wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the ``prototype`` and ``visualize`` commands to ``app``."""
    app.command("prototype")(prototype_command)
    app.command("visualize")(visualize_command)
