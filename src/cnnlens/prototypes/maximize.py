"""Activation maximization for any CNN: find images that excite a class, channel or unit.

$$x^* = \\arg\\max_x \\; f(T(x)) - \\lambda_{1} \\lVert x - \\tfrac12 \\rVert_1
        - \\lambda_{2} \\lVert x - \\tfrac12 \\rVert_2 - \\lambda_{TV}\\, TV(x)
        + \\lambda_{div}\\, D(x)$$

with :math:`f` an :mod:`objective <cnnlens.prototypes.objectives>`, :math:`T` random
robustness transforms, :math:`x` given by a :mod:`parameterization <cnnlens.prototypes.param>`
(Erhan et al., 2009; Simonyan et al., 2014; Mahendran & Vedaldi, 2015; Olah et al., 2017).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import frozen
from cnnlens.core.checks import check_float, check_int
from cnnlens.core.display import Displayable
from cnnlens.core.layers import resolve_layer
from cnnlens.core.progress import progress_bar
from cnnlens.errors import InputError
from cnnlens.prototypes._util import device_dtype, preset_for, with_grad
from cnnlens.prototypes.objectives import (
    L1,
    L2,
    Channel,
    ClassLogit,
    ClassProbability,
    Context,
    Diversity,
    LayerSpec,
    Objective,
    TotalVariation,
    capture_layers,
)
from cnnlens.prototypes.param import PARAMS, FourierImage, ImageParam, PixelImage
from cnnlens.prototypes.transforms import Compose, Transform, standard_transforms

log = logging.getLogger("cnnlens")


@dataclass
class VisualizationResult(Displayable):
    """Images found by activation maximization.

    Attributes:
        images: (B, C, H, W) float32 on the CPU, display space in [0, 1].
        values: the objective of each image without transforms at the end, (B,).
        history: the batch's mean objective (with transforms) at each step.
        labels: a caption per image (e.g. ``"features.3:5"``).
        objective: the objective's description.
        steps: optimization steps run.
        seed: the seed of the run.
        param: ``"fft"`` or ``"pixel"``.
        probs: the model's softmax output for the final images (B, N), for captions.
        classes: the class of each image when the objective is a class (else None).
    """

    images: Tensor
    values: Tensor
    history: list[float]
    labels: list[str]
    objective: str
    steps: int
    seed: int
    param: str
    probs: Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)
    classes: list[int] | None = None

    def figure(self, **options: Any) -> Any:
        """What ``show``, ``save`` and Jupyter draw: :func:`~.figures.visualization_figure`."""
        from cnnlens.prototypes.figures import visualization_figure

        return visualization_figure(self, **options)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no pixels)."""
        out: dict[str, Any] = {
            "objective": self.objective,
            "steps": self.steps,
            "seed": self.seed,
            "param": self.param,
            "options": self.options,
            "images": [
                {"label": label, "value": float(v)}
                for label, v in zip(self.labels, self.values.tolist(), strict=True)
            ],
        }
        if self.probs is not None:
            top = self.probs.max(1)
            for item, p, c in zip(out["images"], top.values, top.indices, strict=True):
                item["top_class"], item["top_prob"] = int(c), float(p)
        for item, p in zip(out["images"], self.class_probs() or [], strict=False):
            item["class_prob"] = p
        return out

    def class_probs(self) -> list[float] | None:
        """The probability of each image's class (class objectives only)."""
        if self.classes is None or self.probs is None:
            return None
        return [float(self.probs[i, c]) for i, c in enumerate(self.classes)]


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose backward pass also lets through gradient that would switch a unit on.

    $$\\frac{\\partial L}{\\partial x} = g \\cdot [x > 0 \\;\\lor\\; g < 0]$$

    (``g`` is the gradient of the loss being minimized, so ``g < 0`` asks for a larger ``x``).
    Without it, a channel that is off everywhere on the starting image has zero gradient and
    never starts (Olah et al., 2017, use the same remedy for the first steps).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * ((x > 0) | (grad < 0)).to(grad.dtype)


def output_relus(model: nn.Module, layers: Sequence[LayerSpec]) -> list[nn.Module]:
    """The ``nn.ReLU`` that produces each layer's output: the layer itself when it is one,
    else the last ``nn.ReLU`` registered inside it (e.g. a conv block's final ReLU)."""
    found: list[nn.Module] = []
    for spec in layers:
        _, module = resolve_layer(model, spec)
        relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
        if relus and all(relus[-1] is not m for m in found):
            found.append(relus[-1])
    return found


@contextmanager
def redirected_relus(
    plan: Sequence[tuple[nn.Module, int]], step: Callable[[], int]
) -> Iterator[None]:
    """Each ``(relu, n)`` of ``plan``: while ``step() < n`` the ``nn.ReLU`` module computes
    the same output but passes the gradient of :class:`_RedirectedReLU`. Hooks removed in
    finally."""
    limits = {id(module): n for module, n in plan}
    inputs: dict[int, Tensor] = {}
    handles = []

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        if step() < limits[id(module)] and torch.is_grad_enabled() and args:
            x = args[0]
            if isinstance(x, Tensor):
                inputs[id(module)] = x.clone() if getattr(module, "inplace", False) else x

    def post(module: nn.Module, _args: object, _out: object) -> Tensor | None:
        x = inputs.pop(id(module), None)
        return None if x is None else _RedirectedReLU.apply(x)

    try:
        for module, _ in plan:
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        yield
    finally:
        for handle in handles:
            handle.remove()
        inputs.clear()


def _relu_plan(
    model: nn.Module, layers: Sequence[LayerSpec], n: int
) -> list[tuple[nn.Module, int]]:
    """Every ``nn.ReLU`` for ``n`` steps; those producing the objective's layers for ``2n``."""
    outputs = output_relus(model, layers)
    return [
        (m, 2 * n if any(m is o for o in outputs) else n)
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]


def _fit(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre-crop a larger image to ``size``; resize a smaller one (bilinear)."""
    h, w = x.shape[2:]
    if (h, w) == size:
        return x
    if h >= size[0] and w >= size[1]:
        top, left = (h - size[0]) // 2, (w - size[1]) // 2
        return x[:, :, top : top + size[0], left : left + size[1]]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _transforms(spec: str | Sequence[Transform] | Transform | None, size: int) -> Transform | None:
    if spec is None or spec == "none":
        return None
    if spec == "standard":
        return standard_transforms(size)
    if isinstance(spec, str):
        raise InputError(f"transforms must be 'standard', 'none' or a list, got {spec!r}")
    if callable(spec):
        return spec
    return Compose(list(spec))


@with_grad
def visualize(
    model: nn.Module,
    objective: Objective,
    shape: tuple[int, int, int],
    *,
    batch: int = 1,
    param: str = "fft",
    decorrelate: bool | Tensor = True,
    decay: float = 1.0,
    preset: Any = None,
    steps: int = 512,
    lr: float = 0.1,
    transforms: str | Sequence[Transform] | Transform | None = "standard",
    l1: float = 0.0,
    l2: float = 0.0,
    tv: float = 0.0,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    diversity: float = 0.0,
    diversity_layer: LayerSpec | None = None,
    init: Tensor | None = None,
    labels: Sequence[str] | None = None,
    redirect_relu: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> VisualizationResult:
    """Optimize images so that ``objective`` is as large as possible.

    Every step: the parameterization gives images in display space, the robustness
    transforms shift, scale and rotate them, the preset normalizes them for the model, one
    forward pass feeds the objective, and Adam takes a step on the image parameters only
    (``torch.autograd.grad`` to them; the model is frozen, no parameter ``.grad`` is written,
    every flag is restored afterwards).

    Args:
        model: the classifier; left exactly as it was.
        objective: what to maximize (see :mod:`cnnlens.prototypes.objectives`).
        shape: (C, H, W) of the model's input.
        batch: images optimized together (objectives may give one index per image).
        param: ``"fft"`` (decorrelated spectrum) or ``"pixel"``.
        decorrelate: optimize RGB in a decorrelated colour basis (True: the ImageNet colour
            matrix; or a (3, 3) matrix from
            :func:`~cnnlens.prototypes.param.color_correlation_sqrt`); ignored for grey images.
        decay: frequency-decay exponent of the Fourier parameterization.
        preset: the model's normalization (name, preset object or None for none).
        steps: optimization steps; lr: Adam's learning rate.
        transforms: ``"standard"``, ``None``/``"none"`` or a list of transforms.
        l1, l2, tv: weights of the L1, L2 (around mid-grey) and total-variation penalties.
        blur_every, blur_sigma: blur the image every ``blur_every`` steps (0: never).
        diversity, diversity_layer: weight and layer of the batch-diversity term (the layer
            defaults to the objective's first layer).
        init: start images for ``param="pixel"``, display space (B or 1, C, H, W).
        labels: a caption per image.
        redirect_relu: for this many first steps, every ``nn.ReLU`` module lets through
            gradient that would switch an inactive unit on (see :class:`_RedirectedReLU`),
            and for twice as many the ReLU that produces an objective layer's output (so a
            channel that is off on the whole start image still starts); 0: never.
        seed: seed of the local random generator (the global RNG is not used).
        progress: show a progress bar.

    Returns:
        A :class:`VisualizationResult` with images in display space.

    Example:
        >>> res = visualize(model, Channel("features.3", 5), (3, 64, 64), tv=0.1)  # doctest: +SKIP
    """
    check_int("steps", steps)
    check_int("batch", batch)
    check_float("lr", lr, minimum=0.0, strict_minimum=True)
    for name, value in (("l1", l1), ("l2", l2), ("tv", tv), ("diversity", diversity)):
        check_float(name, value, minimum=0.0)
    check_int("blur_every", blur_every, minimum=0)
    check_float("blur_sigma", blur_sigma, minimum=0.0, strict_minimum=True)
    if len(shape) != 3:
        raise InputError(f"shape must be (C, H, W), got {tuple(shape)}")
    if param not in PARAMS:
        raise InputError(f"param must be one of {', '.join(PARAMS)}, got {param!r}")
    if labels is not None and len(labels) != batch:
        raise InputError(f"labels has {len(labels)} entries for a batch of {batch} images")
    c, h, w = (int(v) for v in shape)
    device, dtype = device_dtype(model)
    scale = preset_for(preset, c)
    generator = torch.Generator().manual_seed(int(seed))
    full = (batch, c, h, w)
    if init is not None:
        if param != "pixel":
            raise InputError("init images need param='pixel'")
        init = init.detach().float().cpu().clone()
        init = init[None] if init.dim() == 3 else init
        if init.shape[1:] != full[1:] or init.shape[0] not in (1, batch):
            raise InputError(f"init must be (B or 1, {c}, {h}, {w}), got {tuple(init.shape)}")
        init = init.expand(full)
    image_param: ImageParam
    if param == "pixel":
        image_param = PixelImage(
            full, generator=generator, device=device, decorrelate=decorrelate, init=init
        )
    else:
        image_param = FourierImage(
            full, generator=generator, device=device, decorrelate=decorrelate, decay=decay
        )

    total = objective
    if l1:
        total = total - l1 * L1()
    if l2:
        total = total - l2 * L2()
    if tv:
        total = total - tv * TotalVariation()
    if diversity:
        div_layer = diversity_layer if diversity_layer is not None else _first_layer(objective)
        total = total + diversity * Diversity(div_layer)
    transform = _transforms(transforms, min(h, w))
    optimizer = torch.optim.Adam(image_param.params, lr=lr)
    history: list[float] = []

    def forward(images: Tensor, transform: Transform | None) -> Context:
        x = images if transform is None else _fit(transform(images, generator), (h, w))
        x = scale.normalize(x).to(dtype)
        logits = model(x)
        if not isinstance(logits, Tensor):
            raise InputError("the model must return a (B, N) tensor of class scores")
        return Context(image=images, input=x, logits=logits, acts=acts, names=names)

    plan = _relu_plan(model, total.layers, redirect_relu) if redirect_relu > 0 else []
    step = 0  # read by the ReLU redirect
    with (
        frozen(model),
        redirected_relus(plan, lambda: step),
        capture_layers(model, total.layers) as (acts, names),
        progress_bar(progress, steps, f"maximizing {objective.describe()}", transient=True) as bar,
    ):
        for step in range(steps):
            values = total(forward(image_param.image(), transform))
            grads = torch.autograd.grad(-values.sum(), image_param.params)
            for p, g in zip(image_param.params, grads, strict=True):
                p.grad = g
            optimizer.step()
            if blur_every and (step + 1) % blur_every == 0:
                image_param.blur_(blur_sigma)
            history.append(float(values.detach().mean()))
            bar.advance()
        step = steps
        with torch.no_grad():
            images = image_param.image()
            ctx = forward(images, None)
            final = objective(ctx).detach().float().cpu()
            probs = torch.softmax(ctx.logits.float(), 1).cpu() if ctx.logits.dim() == 2 else None
    if labels is None:
        labels = [objective.describe()] * batch
    return VisualizationResult(
        images=images.detach().float().cpu(),
        values=final,
        history=history,
        labels=list(labels),
        objective=total.describe(),
        steps=steps,
        seed=int(seed),
        param=param,
        probs=probs,
        options={"lr": lr, "tv": tv, "l1": l1, "l2": l2, "diversity": diversity},
    )


def _first_layer(objective: Objective) -> LayerSpec:
    if not objective.layers:
        raise InputError("diversity needs diversity_layer= when the objective reads no layer")
    return objective.layers[0]


def visualize_channels(
    model: nn.Module,
    layer: LayerSpec,
    channels: int | Sequence[int],
    shape: tuple[int, int, int],
    **options: Any,
) -> VisualizationResult:
    """One image per channel of ``layer``, optimized together (see :func:`visualize`).

    Example:
        >>> res = visualize_channels(model, "features", range(8), (3, 64, 64))  # doctest: +SKIP
    """
    chans = [channels] if isinstance(channels, int) else list(channels)
    name = layer if isinstance(layer, str) else type(layer).__name__
    labels = [f"{name}:{ch}" for ch in chans]
    return visualize(
        model, Channel(layer, chans), shape, batch=len(chans), labels=labels, **options
    )


def visualize_classes(
    model: nn.Module,
    classes: int | Sequence[int],
    shape: tuple[int, int, int],
    *,
    score: str = "logprob",
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> VisualizationResult:
    """One image per class, optimized together (see :func:`visualize`).

    Args:
        score: ``"logprob"`` (log-softmax, the default: it raises the class against the
            others), ``"prob"`` or ``"logit"``.
        class_names: names for the captions.
    """
    idx = [classes] if isinstance(classes, int) else list(classes)
    if score == "logit":
        objective: Objective = ClassLogit(idx)
    elif score in ("prob", "logprob"):
        objective = ClassProbability(idx, log=score == "logprob")
    else:
        raise InputError(f"score must be 'logprob', 'prob' or 'logit', got {score!r}")
    names = [class_names[i] if class_names and 0 <= i < len(class_names) else str(i) for i in idx]
    result = visualize(model, objective, shape, batch=len(idx), labels=names, **options)
    result.classes = idx
    return result
