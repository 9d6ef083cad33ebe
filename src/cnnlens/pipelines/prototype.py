"""What a class or a channel looks like to a network, into a folder (the library side of
``cnnlens prototype`` and ``cnnlens visualize``).

    run_prototypes("runs/mnist/model.safetensors", "runs/protos", classes="3,1")
    run_visualize("runs/shapes/model.safetensors", "runs/vis", layer="features", channels="0-15")

:func:`run_prototypes`: class prototypes near each class's mean image (the class-mean prior
from the checkpoint's training set, :func:`class_means_for`), written by
:func:`cnnlens.prototypes.figures.save_prototypes`. :func:`run_visualize`: activation
maximization of channels of a layer or of classes, written by
:func:`cnnlens.prototypes.figures.save_visualizations`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cnnlens.core.checks import check_choice, check_float, check_int
from cnnlens.errors import DataError, InputError
from cnnlens.pipelines.options import check_out_dir

logger = logging.getLogger("cnnlens")

__all__ = ["class_means_for", "init_image", "probe", "run_prototypes", "run_visualize"]


def class_means_for(info: Any, dataset: str | None, data_dir: Path | None) -> Any:
    """Class means of the checkpoint's training set (or ``dataset``), fitted to the model's
    input size.

    Raises:
        DataError: no dataset to take them from, or one whose classes or channels differ from
            the model's.
    """
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
        logger.info("resizing the class means of %s to %s", name, size)
        means = F.interpolate(means, size=size, mode="bilinear", align_corners=False)
    return means


def init_image(init: str, channels: int) -> Any:
    """``"zeros"``, ``"noise"``, or the image file ``init`` as a [0, 1] tensor."""
    if init in ("zeros", "noise"):
        return init
    path = Path(init)
    if not path.exists():
        raise InputError(f"--init must be zeros, noise or an image file; {init!r} does not exist")
    from cnnlens.data import load_image, to_tensor

    img = load_image(path, mode="L" if channels == 1 else "RGB")
    return to_tensor(img, preset=None, channels=channels)  # [0, 1], size kept (checked later)


def run_prototypes(
    model: str,
    out: Path,
    *,
    classes: str | None = None,
    init: str = "zeros",
    steps: int = 1000,
    lam: float = 0.1,
    lr: float = 0.01,
    target: float = 0.99,
    dataset: str | None = None,
    data_dir: Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> Any:
    """Class prototypes of ``model`` written to ``out`` (grid.png, one PNG per class,
    prototypes.json; with an image ``init`` also start.png and change_*.png).

    Returns:
        The :class:`~cnnlens.prototypes.PrototypeResult`.
    """
    check_int("--steps", steps)
    check_float("--lambda", lam, minimum=0.0)
    check_float("--lr", lr, minimum=0.0, strict_minimum=True)
    check_float("--stop-at", target, minimum=0.0, strict_minimum=True, maximum=1.0)
    check_out_dir(out)
    from cnnlens.models import load
    from cnnlens.prototypes import class_prototypes
    from cnnlens.prototypes.figures import save_prototypes

    net, info = load(model, device=device)
    shape = (info.in_channels, *info.input_size)
    start = init_image(init, info.in_channels)
    prior = class_means_for(info, dataset, data_dir) if lam > 0 else None
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
    return result


def probe(net: Any, shape: tuple[int, ...], preset: str, layer: str | None) -> tuple[int, int]:
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


def run_visualize(
    model: str,
    out: Path,
    *,
    layer: str | None = None,
    channels: str | None = None,
    classes: str | None = None,
    device: str = "cpu",
    **options: Any,
) -> Any:
    """Activation maximization of ``channels`` of ``layer`` (default the first 16) or of
    ``classes``, written to ``out`` (grid.png, one PNG per image, visualizations.json).

    Args:
        options: the options of :func:`cnnlens.prototypes.maximize.visualize_channels`
            (``param``, ``transforms``, ``steps``, ``lr``, ``tv``, ``l2``, ``blur_every``,
            ``seed``, ``progress``).

    Returns:
        The :class:`~cnnlens.prototypes.maximize.VisualizationResult`.
    """
    check_int("--steps", options.get("steps", 1))
    check_float("--lr", options.get("lr", 0.1), minimum=0.0, strict_minimum=True)
    for key in ("tv", "l1", "l2"):
        check_float(f"--{key}", options.get(key, 0.0), minimum=0.0)
    check_int("--blur-every", options.get("blur_every", 0), minimum=0)
    check_out_dir(out)
    check_choice("--param", options.get("param", "fft"), ("fft", "pixel"))
    check_choice("--transforms", options.get("transforms", "standard"), ("standard", "none"))
    if classes is None and layer is None:
        raise InputError("give --layer (with --channels) for channels, or --class for classes")
    from cnnlens.models import load
    from cnnlens.prototypes import parse_classes, parse_indices
    from cnnlens.prototypes.figures import save_visualizations
    from cnnlens.prototypes.maximize import visualize_channels, visualize_classes

    net, info = load(model, device=device)
    shape = (info.in_channels, *info.input_size)
    options = {**options, "preset": info.preset}
    if classes is not None:
        n, _ = probe(net, shape, info.preset, None)
        idx = parse_classes(classes, info.class_names, n)
        result = visualize_classes(net, idx, shape, class_names=info.class_names, **options)
    else:
        from cnnlens.core.layers import resolve_layer

        name, _ = resolve_layer(net, layer)
        _, n = probe(net, shape, info.preset, name)
        chans = parse_indices(
            channels if channels is not None else f"0-{min(n, 16) - 1}",
            n,
            what="channel",
            owner=f"layer {name!r}",
            error=InputError,
        )
        result = visualize_channels(net, name, chans, shape, **options)
    save_visualizations(result, out)
    return result
