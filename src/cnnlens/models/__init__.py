"""Models: seed architectures, every torchvision classifier, safe weights, checkpoints.

>>> from cnnlens import models
>>> net = models.create("gap-cnn", num_classes=5)
>>> models.get_spec("resnet50").input_size
(224, 224)
>>> model, info = models.load("run/model.safetensors")     # doctest: +SKIP
"""

from __future__ import annotations

from cnnlens.models.checkpoint import ModelInfo, load, read_checkpoint_info, save_checkpoint
from cnnlens.models.registry import ArchSpec, create, get_spec, list_models, resolve_name
from cnnlens.models.seeds import GapCNN, MnistCNN, MnistDNN, SimpleCNN
from cnnlens.models.weights import check_fit, load_weights, read_state_dict

__all__ = [
    "ArchSpec",
    "GapCNN",
    "MnistCNN",
    "MnistDNN",
    "ModelInfo",
    "SimpleCNN",
    "check_fit",
    "create",
    "get_spec",
    "list_models",
    "load",
    "load_weights",
    "read_checkpoint_info",
    "read_state_dict",
    "resolve_name",
    "save_checkpoint",
]
