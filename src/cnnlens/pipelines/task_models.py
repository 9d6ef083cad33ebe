"""Train the small shapes detector and segmenter (:mod:`cnnlens.models.tasks`) on generated
``shapes-objects`` images (:func:`cnnlens.data.objects.make_shapes_objects`), on the CPU in
well under a minute at the defaults.

Both recipes: Adam with a one-cycle learning rate, random batches of a fixed generated
training set, everything drawn from ``seed`` (the global random state is left as it was).

Example:
    >>> run = train_shapes_detector(steps=300)                  # doctest: +SKIP
    >>> run.model(images)[0]["boxes"]                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.checks import check_float, check_int
from cnnlens.data.objects import ShapesObjects, make_shapes_objects
from cnnlens.metrics.tasks import box_masks, localize_objects
from cnnlens.models.tasks import ShapesSegmenter, shapes_detector
from cnnlens.targets import Detection, SegmentationRegion

__all__ = ["TaskTraining", "shapes_trust", "train_shapes_detector", "train_shapes_segmenter"]

logger = logging.getLogger(__name__)


@dataclass
class TaskTraining:
    """A trained task model and how it was trained.

    Attributes:
        model: the model, in eval mode.
        data: the generated training set.
        losses: the training loss at each step.
        seconds: wall time of the training.
        recipe: steps, batch size, learning rate, images, size, seed.
    """

    model: nn.Module
    data: ShapesObjects
    losses: list[float]
    seconds: float
    recipe: dict[str, float | int]


def _fit(
    model: nn.Module,
    loss_of: Callable[[nn.Module, Tensor], Tensor],
    n: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> tuple[list[float], float]:
    """Adam + one-cycle (peak ``lr``) on random batches of ``n`` images; (losses, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr / 2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        loss = loss_of(model, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses, time.perf_counter() - start


def _check(steps: int, n: int, size: int, batch_size: int, lr: float) -> None:
    check_int("steps", steps)
    check_int("n", n)
    check_int("size", size, minimum=32)
    check_int("batch_size", batch_size)
    check_float("lr", lr, minimum=0.0, strict_minimum=True)


def train_shapes_detector(
    *,
    steps: int = 300,
    n: int = 1024,
    size: int = 64,
    batch_size: int = 16,
    lr: float = 4e-3,
    seed: int = 0,
) -> TaskTraining:
    """Train :func:`~cnnlens.models.tasks.shapes_detector` (FCOS: focal, GIoU and
    centerness losses) on ``n`` generated images of two shapes each."""
    _check(steps, n, size, batch_size, lr)
    data = make_shapes_objects(n, size=size, seed=seed, split="train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = shapes_detector(len(data.classes), size=size)

    def loss_of(m: nn.Module, idx: Tensor) -> Tensor:
        losses = m(list(data.images[idx]), data.detection_targets(idx))
        return sum(losses.values(), torch.zeros(()))

    losses, seconds = _fit(model, loss_of, n, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    logger.info("shapes detector: %d steps in %.1f s, last loss %.3f", steps, seconds, losses[-1])
    recipe = {"steps": steps, "batch_size": batch_size, "lr": lr, "n": n, "size": size}
    return TaskTraining(model, data, losses, seconds, {**recipe, "seed": seed})


def train_shapes_segmenter(
    *,
    steps: int = 300,
    n: int = 1024,
    size: int = 64,
    batch_size: int = 16,
    lr: float = 1e-2,
    seed: int = 0,
) -> TaskTraining:
    """Train :class:`~cnnlens.models.tasks.ShapesSegmenter` (per-pixel cross-entropy) on
    ``n`` generated images of two shapes each."""
    _check(steps, n, size, batch_size, lr)
    data = make_shapes_objects(n, size=size, seed=seed, split="train")
    labels = data.segmentation()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ShapesSegmenter(len(data.classes))

    def loss_of(m: nn.Module, idx: Tensor) -> Tensor:
        return F.cross_entropy(m(data.images[idx])["out"], labels[idx])

    losses, seconds = _fit(model, loss_of, n, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    logger.info("shapes segmenter: %d steps in %.1f s, last loss %.3f", steps, seconds, losses[-1])
    recipe = {"steps": steps, "batch_size": batch_size, "lr": lr, "n": n, "size": size}
    return TaskTraining(model, data, losses, seconds, {**recipe, "seed": seed})


#: The shapes detector's layer where only the class evidence flows (see docs/tasks.md).
DETECTOR_CLASS_LAYER = "head.classification_head.conv"


def shapes_trust(
    run: TaskTraining,
    *,
    n_test: int = 64,
    method: str = "gradcam",
    layer: str | None = None,
    **options: object,
) -> list[dict[str, float]]:
    """Localization of a trained shapes detector's or segmenter's maps on ``n_test`` test
    images: per object slot, the means of :class:`~cnnlens.metrics.tasks.ObjectLocalization`.

    Detector: each object's :class:`~cnnlens.targets.Detection` (its true box and label),
    scored against its box; segmenter: each object's class over its predicted region
    (:class:`~cnnlens.targets.SegmentationRegion`), scored against its mask.
    """
    check_int("n_test", n_test)
    size = int(run.recipe["size"])
    data = make_shapes_objects(n_test, size=size, seed=int(run.recipe["seed"]), split="test")
    if isinstance(run.model, ShapesSegmenter):
        masks = data.masks

        def target(i: int, k: int) -> object:
            return SegmentationRegion(int(data.labels[i, k]))
    else:
        masks = box_masks(data.boxes, (size, size))

        def target(i: int, k: int) -> object:
            return Detection(box=data.boxes[i, k].tolist(), label=int(data.labels[i, k]))

    slots = localize_objects(
        run.model, data.images, masks, target, method=method, layer=layer, **options
    )
    return [s.means() for s in slots]
