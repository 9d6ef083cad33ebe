"""Class prototypes: the input the model takes as most typical of a class, near the data.

For each class :math:`c` an input :math:`x_c` (in the model's input space) is optimized by
Adam to minimize

$$\\mathcal{L}(x_c) = -\\log p(c \\mid x_c)
    + \\lambda \\, \\frac{1}{D} \\lVert x_c - \\bar x_c \\rVert^2$$

the cross-entropy to the class plus :math:`\\lambda` times the mean squared distance to the
class's mean training image :math:`\\bar x_c` (the "expert" prior of the activation-maximization
tutorial of Montavon, Samek & Müller, 2018, "Methods for interpreting and understanding deep
neural networks", Digital Signal Processing 73; after Erhan et al., 2009, and Simonyan et al.,
2014). All classes are optimized together in one batch; the optimization stops as soon as every
class reaches the target probability, or when the step budget is spent.

The start is an all-black image (``"zeros"``), noise (``"noise"``) or a given image: starting
from an 8, the prototype of 3 answers "what would make this 8 a 3?", and
:attr:`PrototypeResult.diff` shows the change.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cnnlens.core.capture import frozen
from cnnlens.core.checks import check_float, check_int
from cnnlens.core.display import Displayable
from cnnlens.core.progress import progress_bar
from cnnlens.errors import DataError, InputError, TargetError
from cnnlens.prototypes._util import device_dtype, preset_for, with_grad

log = logging.getLogger("cnnlens")

INITS = ("zeros", "noise")


@dataclass
class PrototypeResult(Displayable):
    """Class prototypes and how they were reached.

    All image tensors are float32 on the CPU, (K, C, H, W) for the K requested classes.

    Attributes:
        images: the prototypes in display space, [0, 1].
        start: the start images in display space.
        diff: ``images - start`` (display space, in [-1, 1]).
        inputs: the prototypes as the model sees them (normalized).
        classes: the class index of each prototype.
        class_names: a name per prototype (the index as text when the model has none).
        probs: the final probability of each prototype's class, (K,).
        scores: the final softmax over all classes, (K, N).
        reached: whether each class reached ``target_prob``, (K,) bool.
        steps: optimization steps taken (fewer than the budget when all classes reached the
            target early).
        init: ``"zeros"``, ``"noise"`` or ``"image"``.
        lam, lr, target_prob, max_steps: the settings of the run.
        history: the lowest class probability before each step.
    """

    images: Tensor
    start: Tensor
    diff: Tensor
    inputs: Tensor
    classes: list[int]
    class_names: list[str]
    probs: Tensor
    scores: Tensor
    reached: Tensor
    steps: int
    init: str
    lam: float
    lr: float
    target_prob: float
    max_steps: int
    history: list[float] = field(default_factory=list)

    def figure(self, **options: Any) -> Any:
        """What ``show``, ``save`` and Jupyter draw: :func:`~.figures.prototype_figure`."""
        from cnnlens.prototypes.figures import prototype_figure

        return prototype_figure(self, **options)

    @property
    def predicted(self) -> list[int]:
        """The class the model assigns to each prototype."""
        return [int(i) for i in self.scores.argmax(1)]

    def distance_to_start(self) -> Tensor:
        """L2 distance of each prototype to its start in display space, (K,)."""
        return self.diff.flatten(1).norm(dim=1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no pixels): settings, steps and per-class results."""
        dist = self.distance_to_start()
        return {
            "init": self.init,
            "lambda": self.lam,
            "lr": self.lr,
            "target_prob": self.target_prob,
            "max_steps": self.max_steps,
            "steps": self.steps,
            "all_reached": bool(self.reached.all()),
            "classes": [
                {
                    "index": c,
                    "name": name,
                    "prob": float(p),
                    "reached": bool(r),
                    "predicted": pred,
                    "l2_to_start": float(d),
                }
                for c, name, p, r, pred, d in zip(
                    self.classes,
                    self.class_names,
                    self.probs.tolist(),
                    self.reached.tolist(),
                    self.predicted,
                    dist.tolist(),
                    strict=True,
                )
            ],
        }


def class_means(
    dataset: Dataset, num_classes: int | None = None, *, batch_size: int = 512
) -> Tensor:
    """Mean image of each class of a labelled dataset, as the dataset gives them (normalized).

    $$\\bar x_c = \\frac{1}{|\\{i : y_i = c\\}|} \\sum_{i : y_i = c} x_i$$

    Args:
        dataset: yields ``(image (C, H, W), int label)``; a ``tensors()`` method returning
            all normalized images and labels at once is used when present.
        num_classes: rows of the result (default: ``len(dataset.classes)`` or the largest
            label + 1). A class without images gets a NaN row and a warning.

    Returns:
        float32 tensor (N, C, H, W) on the CPU.

    Raises:
        DataError: for an empty dataset or labels that are not class indices.
    """
    if num_classes is None and hasattr(dataset, "classes"):
        num_classes = len(dataset.classes)  # type: ignore[attr-defined]
    sums: Tensor | None = None
    counts = torch.zeros(0)
    shape: tuple[int, ...] = ()
    # Datasets held in memory hand over everything at once (cnnlens.data's tensors()).
    batches = (
        [dataset.tensors()]  # type: ignore[attr-defined]
        if callable(getattr(dataset, "tensors", None))
        else DataLoader(dataset, batch_size=batch_size, shuffle=False)
    )
    for images, labels in batches:
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.is_floating_point():
            raise DataError(
                "class means need integer class labels, got labels of shape "
                f"{tuple(labels.shape)} and dtype {labels.dtype} (multi-label data?)"
            )
        shape = tuple(images.shape[1:])
        images = images.float().flatten(1)
        n = max(int(labels.max()) + 1, counts.shape[0]) if num_classes is None else num_classes
        if int(labels.max()) >= n or int(labels.min()) < 0:
            raise DataError(f"labels must lie in 0..{n - 1}, got {int(labels.max())}")
        if sums is None:
            sums = torch.zeros(n, images.shape[1])
        if n > sums.shape[0]:  # labels grew beyond what the first batches showed
            sums = torch.cat([sums, sums.new_zeros(n - sums.shape[0], sums.shape[1])])
        if n > counts.shape[0]:
            counts = torch.cat([counts, counts.new_zeros(n - counts.shape[0])])
        sums.index_add_(0, labels.long(), images)
        counts.index_add_(0, labels.long(), torch.ones(labels.shape[0]))
    if sums is None:
        raise DataError("class means need a non-empty dataset")
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        warnings.warn(f"classes {empty} have no images; their mean is NaN", stacklevel=2)
    return (sums / counts[:, None]).reshape(-1, *shape)


def parse_indices(
    spec: int | str | Sequence[int | str] | None,
    size: int,
    *,
    names: Sequence[str] | None = None,
    what: str = "class",
    owner: str = "the model",
    error: type[Exception] = TargetError,
) -> list[int]:
    """Indices from an index, a name, a range text (``"0-9"``, ``"1,3,5-7"``) or a list.

    Args:
        spec: what the user gave; None means all of ``range(size)``.
        size: valid indices are ``0..size-1``.
        names: names accepted in place of indices (class names).
        what: the word used in error messages (``"class"``, ``"channel"``).
        owner: what has the indices, for messages (``"the model"``, ``"layer 'fc'"``).
        error: the error type raised.

    Raises:
        ``error``: for an index out of range, an empty range or an unknown name.
    """
    if spec is None:
        return list(range(size))
    items: list[int | str]
    if isinstance(spec, str):
        items = [part.strip() for part in spec.split(",") if part.strip()]
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = list(spec)
    known = list(names) if names else []
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise error(f"a {what} must be an index or a name, got {item!r}")
        if isinstance(item, int):
            out.append(item)
        elif isinstance(item, str) and item in known:
            out.append(known.index(item))
        elif isinstance(item, str) and item.lstrip("-").isdigit():
            out.append(int(item))
        elif (
            isinstance(item, str)
            and "-" in item
            and all(part.strip().isdigit() for part in item.split("-", 1))
        ):
            lo, hi = (int(part) for part in item.split("-", 1))
            if hi < lo:
                raise error(f"{what} range {item!r} is empty; write it low-high")
            out.extend(range(lo, hi + 1))
        else:
            options = ", ".join(known) if known else f"indices 0..{size - 1}"
            raise error(f"{what} {item!r} is not known to {owner}; it knows: {options}")
    if not out:
        raise error(f"no {what} given; give at least one index{' or name' if known else ''}")
    bad = [c for c in out if not 0 <= c < size]
    if bad:
        plural = what + ("es" if what.endswith("s") else "s")
        raise error(
            f"{what} index {bad[0]} is out of range; {owner} has {size} {plural} (0..{size - 1})"
        )
    return out


def parse_classes(
    classes: int | str | Sequence[int | str] | None,
    class_names: Sequence[str] | None,
    num_classes: int,
) -> list[int]:
    """Class indices from an index, a name, a range text (``"0-9"``, ``"1,3,5-7"``) or a list.

    Raises:
        TargetError: for an index out of range or a name the model does not know.
    """
    return parse_indices(classes, num_classes, names=class_names, what="class")


def _fit_start(image: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """A start image (C, H, W) or (B, C, H, W) in display space, fitted to ``shape``."""
    img = image.detach().float().cpu().clone()
    img = img[None] if img.dim() == 3 else img
    if img.dim() == 2:
        img = img[None, None]
    if img.dim() != 4:
        raise InputError(f"init image must be (C, H, W) or (B, C, H, W), got {tuple(image.shape)}")
    c, h, w = shape
    if img.shape[1] != c:
        if img.shape[1] == 1:
            img = img.expand(-1, c, -1, -1)
        elif c == 1 and img.shape[1] == 3:
            warnings.warn("init image is RGB but the model takes grey; averaging", stacklevel=4)
            img = img.mean(1, keepdim=True)
        else:
            raise InputError(f"init image has {img.shape[1]} channels but the model takes {c}")
    if tuple(img.shape[2:]) != (h, w):
        warnings.warn(
            f"init image is {img.shape[3]}x{img.shape[2]} but the model takes {w}x{h}; resizing it",
            stacklevel=4,
        )
        img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
    if img.min() < 0 or img.max() > 1:
        raise InputError(
            "init image must be in display space with values in [0, 1] (not normalized); got "
            f"values in [{float(img.min()):.3g}, {float(img.max()):.3g}]"
        )
    return img


@with_grad
def class_prototypes(
    model: nn.Module,
    classes: int | str | Sequence[int | str] | None = None,
    *,
    prior: Tensor | None = None,
    lam: float = 0.1,
    init: str | Tensor = "zeros",
    shape: tuple[int, int, int] | None = None,
    preset: Any = None,
    class_names: Sequence[str] | None = None,
    lr: float = 0.01,
    steps: int = 1000,
    target_prob: float = 0.99,
    clamp: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> PrototypeResult:
    """Optimize one input per class so that the model assigns it to that class.

    Adam on the inputs only (``torch.autograd.grad`` to them; the model is frozen: no
    parameter ``.grad`` is written and every flag is restored).

    Args:
        model: a classifier returning (B, N) logits.
        classes: which classes (None: all; an index, a name, ``"0-9"``, or a list).
        prior: the class mean images in the model's input space (normalized), (N, C, H, W)
            indexed by class (e.g. :func:`class_means` of the training set), or one (C, H, W)
            image for every class; None drops the prior term.
        lam: the weight :math:`\\lambda` of the prior.
        init: ``"zeros"`` (an all-black image), ``"noise"`` (grey 0.5 plus Gaussian noise of
            standard deviation 0.1, clipped) or start image(s) in display space, (C, H, W) or
            (K, C, H, W) in [0, 1]; an image of another size is resized with a warning.
        shape: (C, H, W) of the model's input; taken from ``prior`` or ``init`` when omitted.
        preset: the model's normalization (name, preset object or None).
        class_names: names of the model's classes (to accept names and label results).
        lr: Adam's learning rate.
        steps: the step budget.
        target_prob: stop once every class has at least this probability.
        clamp: keep the prototypes valid images (projected onto [0, 1] in display space after
            each step); with False, ``images`` are clipped for display only and ``probs``
            refer to the unclipped ``inputs``.
        seed: seed of the local generator used by ``init="noise"``.
        progress: show a progress bar.

    Returns:
        A :class:`PrototypeResult`; a warning names the classes that missed the target.

    Example:
        >>> means = class_means(train_set)                       # doctest: +SKIP
        >>> res = class_prototypes(model, prior=means, preset="mnist")
        >>> res.probs.min() >= 0.99
    """
    check_int("steps", steps)
    check_float("target_prob", target_prob, minimum=0.0, strict_minimum=True, maximum=1.0)
    check_float("lam", lam, minimum=0.0)
    check_float("lr", lr, minimum=0.0, strict_minimum=True)
    c, h, w = _input_shape(shape, prior, init)
    device, dtype = device_dtype(model)
    scale = preset_for(preset, c)
    generator = torch.Generator().manual_seed(int(seed))

    with frozen(model), torch.no_grad():
        probe = model(scale.normalize(torch.zeros(1, c, h, w)).to(device, dtype))
    if not isinstance(probe, Tensor) or probe.dim() != 2:
        raise InputError("the model must return (B, N) class scores")
    num_classes = probe.shape[1]
    idx = parse_classes(classes, class_names, num_classes)
    k = len(idx)
    names = [class_names[i] if class_names and i < len(class_names) else str(i) for i in idx]

    start, init_name = _start_images(init, (c, h, w), k, generator)
    target_means = _prior_means(prior, lam, idx, num_classes, (c, h, w))
    if target_means is not None:
        target_means = target_means.to(device)

    lo = scale.normalize(torch.zeros(1, c, 1, 1)).to(device)
    hi = scale.normalize(torch.ones(1, c, 1, 1)).to(device)
    x = scale.normalize(start).to(device).requires_grad_(True)
    target = torch.tensor(idx, device=device)
    with frozen(model), progress_bar(progress, steps, "prototypes", transient=True) as bar:
        run = _ascend(
            model,
            x,
            target,
            target_means,
            lam,
            lr,
            steps,
            target_prob,
            (lo, hi) if clamp else None,
            dtype,
            bar.advance,
        )
    logits, probs, history, taken = run
    history.pop()  # the last entry is the final state, reported in probs
    scores = torch.softmax(logits.detach().float(), 1).cpu()
    final = probs.detach().cpu()
    reached = final >= target_prob
    if not bool(reached.all()):
        missed = [names[i] for i in (~reached).nonzero().flatten().tolist()]
        warnings.warn(
            f"classes {', '.join(missed)} did not reach probability {target_prob} in {steps} "
            "steps; raise steps or lower lam",
            stacklevel=3,
        )
    inputs = x.detach().float().cpu()
    images = scale.denormalize(inputs).clamp(0, 1)
    return PrototypeResult(
        images=images,
        start=start,
        diff=images - start,
        inputs=inputs,
        classes=idx,
        class_names=names,
        probs=final,
        scores=scores,
        reached=reached,
        steps=taken,
        init=init_name,
        lam=float(lam),
        lr=float(lr),
        target_prob=float(target_prob),
        max_steps=steps,
        history=history,
    )


def _input_shape(
    shape: tuple[int, int, int] | None, prior: Tensor | None, init: str | Tensor
) -> tuple[int, int, int]:
    """(C, H, W) of the model's input: ``shape``, else that of ``prior`` or the init image."""
    if shape is None:
        if prior is not None:
            shape = tuple(prior.shape[-3:])  # type: ignore[assignment]
        elif isinstance(init, Tensor) and init.dim() >= 3:
            shape = tuple(init.shape[-3:])  # type: ignore[assignment]
        else:
            raise InputError(
                "shape (C, H, W) is needed when neither prior nor an init image is given"
            )
    c, h, w = (int(v) for v in shape)  # type: ignore[union-attr]
    return c, h, w


def _start_images(
    init: str | Tensor, shape: tuple[int, int, int], k: int, generator: torch.Generator
) -> tuple[Tensor, str]:
    """The K start images in display space and the name of the init."""
    if isinstance(init, Tensor):
        start = _fit_start(init, shape)
        if start.shape[0] not in (1, k):
            raise InputError(f"init has {start.shape[0]} images; give 1 or one per class ({k})")
        return start.expand(k, -1, -1, -1).clone(), "image"
    if init == "zeros":
        return torch.zeros(k, *shape), init
    if init == "noise":
        return (0.5 + 0.1 * torch.randn((k, *shape), generator=generator)).clamp(0, 1), init
    raise InputError(f"init must be 'zeros', 'noise' or an image tensor, got {init!r}")


def _prior_means(
    prior: Tensor | None,
    lam: float,
    idx: list[int],
    num_classes: int,
    shape: tuple[int, int, int],
) -> Tensor | None:
    """The prior's mean image of each requested class (K, C, H, W) on the CPU, or None when
    the prior term is off."""
    if prior is None or lam <= 0:
        if lam > 0:
            log.info("no prior given: class prototypes use the cross-entropy alone")
        return None
    c, h, w = shape
    p = prior.detach().float().cpu().clone()
    if p.dim() == 3:
        p = p[None].expand(num_classes, -1, -1, -1)
    if p.dim() != 4 or tuple(p.shape[1:]) != (c, h, w) or p.shape[0] < max(idx) + 1:
        raise InputError(
            f"prior must be (N, {c}, {h}, {w}) class means indexed by class for N >= "
            f"{max(idx) + 1}, got {tuple(prior.shape)}"
        )
    means = p[idx]
    if not torch.isfinite(means).all():
        raise InputError("prior has no finite mean image for some requested classes")
    return means


def _ascend(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    target_means: Tensor | None,
    lam: float,
    lr: float,
    steps: int,
    target_prob: float,
    bounds: tuple[Tensor, Tensor] | None,
    dtype: torch.dtype,
    advance: Callable[[], Any],
) -> tuple[Tensor, Tensor, list[float], int]:
    """Adam on the inputs ``x`` (in place) until every class reaches ``target_prob`` or the
    budget is spent; ``(logits, probs, history, steps taken)`` of the final state.

    The loss is the cross-entropy of each class plus ``lam`` times the mean squared distance
    to its prior mean; with ``bounds`` the inputs are projected onto them after each step.
    """
    optimizer = torch.optim.Adam([x], lr=lr)
    history: list[float] = []
    taken = steps
    for step in range(steps + 1):
        logits = model(x.to(dtype)).float()
        logp = torch.log_softmax(logits, 1)
        probs = logp.exp().gather(1, target[:, None])[:, 0]
        history.append(float(probs.detach().min()))
        if bool((probs >= target_prob).all()) or step == steps:
            taken = step
            break
        loss = -logp.gather(1, target[:, None])[:, 0]
        if target_means is not None:
            loss = loss + lam * (x - target_means).pow(2).flatten(1).mean(1)
        (grad,) = torch.autograd.grad(loss.sum(), [x])
        x.grad = grad
        optimizer.step()
        if bounds is not None:
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, bounds[1]), bounds[0]))
        advance()
    return logits, probs, history, taken
