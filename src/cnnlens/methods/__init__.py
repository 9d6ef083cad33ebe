"""Explanation methods; importing this package registers the built-in ones."""

from cnnlens.methods.base import BaseCAM, Explainer
from cnnlens.methods.cam import (
    CAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)

__all__ = [
    "CAM",
    "BaseCAM",
    "EigenCAM",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "XGradCAM",
]
