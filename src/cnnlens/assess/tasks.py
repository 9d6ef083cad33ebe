"""``cnnlens assess --task segmentation``: the benchmark on a segmentation dataset, one row
per image x object.

A segmenter becomes a (B, K) "classifier" of region scores (:class:`RegionScores`): class
``c``'s score is :class:`cnnlens.targets.SegmentationRegion` ``(c)``, the class's logits
summed over the model's own predicted region of ``c``,

$$s_c(x) = \\sum_{(i,j)} z_{c,ij}(x)\\,[\\arg\\max_k z_{k,ij}(x) = c],$$

recomputed at every forward (the region of the image being scored, so a deletion that
erases the object also shrinks its region). With that, every row of
:func:`cnnlens.assess.assess` is an (image, object): the target is the object's class, the
localization metrics (pointing game, energy pointing game, ...) score the map against that
object's own mask, deletion and insertion follow the region's score (no softmax:
``activation=None``), and the ``random`` and ``centre`` baselines are rows as for
classification. The dataset is ``shapes-objects``
(:func:`cnnlens.data.objects.make_shapes_objects`: two shapes of different classes per
image, class 0 the background), so a class names one object of an image.

The CAM methods read the segmenter's automatic layer of the region target
(:func:`cnnlens.targets.base.backbone_layer`, ``backbone.body`` for the shapes segmenter)
unless ``layer`` is given: the wrapper's own last map would be the 1x1 classifier.

Detection is not done here: a detection's target needs the object's box per row (a
:class:`~cnnlens.targets.Detection` per row), which the assessment's class-index rows do not
carry yet.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.assess.data import AssessData
from cnnlens.core.checks import check_choice, check_int
from cnnlens.errors import InputError, ModelError

__all__ = [
    "OBJECT_DATASETS",
    "TASKS",
    "RegionScores",
    "load_objects",
    "prepare_task",
    "task_method_options",
]

#: The tasks ``assess`` runs.
TASKS = ("classification", "segmentation")
#: The datasets with one row per object (their images hold several labelled objects).
OBJECT_DATASETS = ("shapes-objects",)


class RegionScores(nn.Module):
    """A segmenter as a (B, K) model of region scores (see the module docstring).

    Args:
        model: a segmenter returning (B, K, H, W) logits, or torchvision's ``{"out": ...}``.
        output: the output key or index when the model returns several
            (:func:`cnnlens.targets.base.select_output`).
    """

    def __init__(self, model: nn.Module, output: str | int | None = None) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        from cnnlens.targets.base import select_output

        z = select_output(self.model(x), self.output)
        if z.dim() != 4:
            raise ModelError(
                "assess --task segmentation needs per-pixel class logits (B, K, H, W), got "
                f"an output of shape {tuple(z.shape)}"
            )
        region = F.one_hot(z.detach().argmax(dim=1), z.shape[1]).permute(0, 3, 1, 2)
        return (z * region.to(z.dtype)).flatten(2).sum(dim=2)


def load_objects(
    dataset: str, *, n: int | None = None, size: int = 64, seed: int = 0, split: str = "test"
) -> AssessData:
    """A dataset of several objects per image as assess data: labels (N, K) the objects'
    classes (1.. ; 0 is the background), masks (N, K, H, W) each object's own mask.

    Raises:
        InputError: an unknown dataset or a bad size/count.
    """
    from cnnlens.data.objects import make_shapes_objects

    check_choice("dataset", dataset, OBJECT_DATASETS, error=InputError)
    count = 200 if n is None else n
    check_int("n", count)
    check_int("size", size, minimum=32)
    data = make_shapes_objects(count, size=size, seed=seed, split=split)
    return AssessData(
        name=dataset,
        images=data.images,
        labels=data.labels.long(),
        masks=data.masks.bool(),
        classes=list(data.classes),
        files=[f"{dataset}[{i}]" for i in range(count)],
    )


def task_method_options(
    segmenter: nn.Module,
    methods: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    """Per-method options with ``layer`` set, for the methods that take one and were given
    none, to the region target's automatic layer inside :class:`RegionScores`
    (``model.<layer>``); unchanged when the segmenter has no such layer."""
    from cnnlens.core.registry import get_method
    from cnnlens.targets.base import backbone_layer

    out = {k: dict(v) for k, v in (options or {}).items()}
    layer = backbone_layer(segmenter)
    if layer is None:
        return out
    for m in methods:
        params = inspect.signature(get_method(m).__init__).parameters
        if "layer" in params and "layer" not in out.get(m, {}):
            out.setdefault(m, {})["layer"] = f"model.{layer}"
    return out


def prepare_task(
    task: str,
    model: nn.Module,
    data: AssessData | str,
    methods: Sequence[str],
    method_options: Mapping[str, Mapping[str, Any]] | None,
    n: int | None,
) -> tuple[nn.Module, AssessData | str, dict[str, dict[str, Any]] | None]:
    """The model, data and method options an assessment of ``task`` runs on.

    Raises:
        InputError: an unknown task, or a dataset without objects for segmentation (or
            one with objects for classification).
    """
    check_choice("task", task, TASKS, error=InputError)
    name = data if isinstance(data, str) else data.name
    if task == "classification":
        if name in OBJECT_DATASETS:
            raise InputError(
                f"dataset {name!r} holds objects for detection/segmentation; "
                "use task 'segmentation' (--task segmentation)"
            )
        return model, data, None if method_options is None else dict(method_options)
    if name not in OBJECT_DATASETS:
        raise InputError(
            f"task 'segmentation' needs a dataset of objects with masks "
            f"({', '.join(OBJECT_DATASETS)}), got {name!r}"
        )
    if isinstance(data, str):
        data = load_objects(data, n=n)
    return RegionScores(model), data, task_method_options(model, methods, method_options)
