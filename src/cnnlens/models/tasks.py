"""Small task models: a detector and a segmenter that train on generated shapes on the CPU,
and torchvision's detection and segmentation models by name.

The shapes models stand on one small backbone (:class:`ShapesBackbone`: strided and dilated
3x3 conv blocks, one feature map) shaped like torchvision's (``out_channels`` and
``return_layers``), so every target finds its automatic layer the same way as on
torchvision's models (``backbone.body``):

* :func:`shapes_detector`: torchvision's FCOS (Tian et al., 2019, arXiv:1904.01355) on one
  stride-8 level, a one-conv head; images in [0, 1];
* :class:`ShapesSegmenter`: the backbone at stride 4 and a 1x1 classifier, upsampled to the
  input, returning ``{"out": (B, K, H, W)}`` like torchvision's segmenters.

Example:
    >>> det = shapes_detector(num_classes=6, size=64)
    >>> seg = ShapesSegmenter(num_classes=6)
    >>> net = create_task_model("fasterrcnn_mobilenet_v3_large_320_fpn", "detection",
    ...                         num_classes=4, size=96)   # random weights
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.checks import check_choice, check_int
from cnnlens.errors import ModelError
from cnnlens.models.weights import load_weights, looks_like_path

__all__ = [
    "TASK_MODELS",
    "ShapesBackbone",
    "ShapesSegmenter",
    "create_task_model",
    "list_task_models",
    "shapes_detector",
]

logger = logging.getLogger(__name__)

_MEAN, _STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # images in [0, 1]


def _block(cin: int, cout: int, **kw: Any) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, bias=False, **kw), nn.BatchNorm2d(cout), nn.ReLU()]


class ShapesBackbone(nn.Module):
    """Four 3x3 conv blocks (BN, ReLU) to one feature map at stride 4 or 8.

    Stride 8: three stride-2 blocks and a dilated one; stride 4: two stride-2 blocks and two
    dilated ones (a wider view at a finer map, for segmentation). Returns ``{"0": map}`` as
    torchvision's backbones do; ``return_layers`` names the returned layer (``body``).

    Args:
        stride: 4 or 8.
        channels: channels of the returned map (a multiple of 32: FCOS's GroupNorm).
    """

    def __init__(self, stride: int = 8, channels: int = 64) -> None:
        super().__init__()
        check_choice("stride", stride, (4, 8), error=ModelError)
        check_int("channels", channels, error=ModelError)
        c = channels
        if stride == 8:
            layers = [*_block(3, 16, stride=2, padding=1), *_block(16, 32, stride=2, padding=1)]
            layers += [*_block(32, c, stride=2, padding=1), *_block(c, c, padding=2, dilation=2)]
        else:
            layers = [*_block(3, 16, stride=2, padding=1), *_block(16, 32, stride=2, padding=1)]
            layers += [*_block(32, c, padding=2, dilation=2), *_block(c, c, padding=4, dilation=4)]
        self.body = nn.Sequential(*layers)
        self.out_channels = c
        self.return_layers = {"body": "0"}

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict([("0", self.body(x))])


def shapes_detector(
    num_classes: int = 6, *, size: int = 64, channels: int = 64, score_thresh: float = 0.3
) -> nn.Module:
    """A small FCOS detector (class 0 the background) for ``size``-pixel images in [0, 1].

    One feature level at stride 8 (anchor size 8: FCOS's points), a head with one conv per
    tower; up to 10 detections per image above ``score_thresh`` (NMS IoU 0.6).
    """
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    check_int("num_classes", num_classes, minimum=2, error=ModelError)
    check_int("size", size, minimum=16, error=ModelError)
    backbone = ShapesBackbone(8, channels)
    return FCOS(
        backbone,
        num_classes,
        min_size=size,
        max_size=size,
        image_mean=_MEAN,
        image_std=_STD,
        anchor_generator=AnchorGenerator(((8,),), ((1.0,),)),
        head=FCOSHead(channels, 1, num_classes, num_convs=1),
        score_thresh=score_thresh,
        detections_per_img=10,
    )


class ShapesSegmenter(nn.Module):
    """A small segmenter: :class:`ShapesBackbone` at stride 4, a 1x1 classifier, bilinear
    upsampling to the input; ``{"out": (B, num_classes, H, W)}`` for images in [0, 1]."""

    def __init__(self, num_classes: int = 6, channels: int = 64) -> None:
        super().__init__()
        check_int("num_classes", num_classes, minimum=2, error=ModelError)
        self.backbone = ShapesBackbone(4, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = (x - _MEAN[0]) / _STD[0]
        z = self.classifier(self.backbone(z)["0"])
        return {"out": F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)}


#: torchvision's detection and segmentation builders by task.
TASK_MODELS: dict[str, tuple[str, ...]] = {
    "detection": (
        "shapes-detector",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "fcos_resnet50_fpn",
        "retinanet_resnet50_fpn",
        "retinanet_resnet50_fpn_v2",
        "ssd300_vgg16",
        "ssdlite320_mobilenet_v3_large",
        "maskrcnn_resnet50_fpn",
    ),
    "segmentation": (
        "shapes-segmenter",
        "deeplabv3_mobilenet_v3_large",
        "deeplabv3_resnet50",
        "deeplabv3_resnet101",
        "fcn_resnet50",
        "fcn_resnet101",
        "lraspp_mobilenet_v3_large",
    ),
}


def list_task_models(task: str) -> list[str]:
    """torchvision model names :func:`create_task_model` builds for ``task``."""
    check_choice("task", task, TASK_MODELS, error=ModelError)
    return sorted(TASK_MODELS[task])


def create_task_model(
    name: str,
    task: str,
    *,
    num_classes: int | None = None,
    size: int | None = None,
    weights: str | None = None,
) -> nn.Module:
    """A detection or segmentation model by name, in eval mode.

    ``shapes-detector`` / ``shapes-segmenter`` (:func:`shapes_detector`,
    :class:`ShapesSegmenter`; 6 classes unless ``num_classes``) or a torchvision model.
    Random weights unless ``weights`` is given: a weights file (``.safetensors``, or a state
    dict read with ``weights_only=True``), or torchvision weights by name (``"DEFAULT"``:
    downloaded when online, from torch's cache otherwise). A detector resizes its input to
    ``size`` (its ``min_size`` and ``max_size``) when given.

    Raises:
        ModelError: an unknown name or task, or bad arguments.
        WeightsError: a weights file that cannot be read safely or does not fit.
    """
    check_choice("task", task, TASK_MODELS, error=ModelError)
    if name not in TASK_MODELS[task]:
        raise ModelError(
            f"--model {name!r} is not a {task} model cnnlens builds by name; choose from "
            f"{', '.join(list_task_models(task))}"
        )
    file = weights if weights is not None and looks_like_path(weights) else None
    if name.startswith("shapes-"):
        if weights is not None and file is None:
            raise ModelError(f"{name} has no named weights; give a weights file, got {weights!r}")
        k = num_classes if num_classes is not None else 6
        model = shapes_detector(k, size=size or 64) if task == "detection" else ShapesSegmenter(k)
    else:
        model = _torchvision_task_model(name, task, num_classes, size, None if file else weights)
    if file is not None:
        load_weights(model, file)
    return model.eval()


def _torchvision_task_model(
    name: str, task: str, num_classes: int | None, size: int | None, weights: str | None
) -> nn.Module:
    from torchvision.models import get_model

    kwargs: dict[str, Any] = {}
    if weights is not None and num_classes is not None:
        raise ModelError(
            f"num_classes is for random weights; {name}'s weights {weights!r} bring their own "
            "classes (fine-tune and give a weights file to change them)"
        )
    if weights is None:
        kwargs.update(weights=None, weights_backbone=None)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
    else:
        kwargs["weights"] = weights
    if size is not None and task == "detection" and not name.startswith("ssd"):
        kwargs.update(min_size=size, max_size=size)
    try:
        return get_model(name, **kwargs)
    except (TypeError, ValueError, KeyError) as err:
        raise ModelError(f"bad arguments for {name}: {err}") from err
    except (OSError, RuntimeError) as err:
        raise ModelError(
            f"weights {weights!r} of {name} could not be loaded ({err}); they download once "
            "when online, then load from torch's cache (~/.cache/torch/hub/checkpoints)"
        ) from err
