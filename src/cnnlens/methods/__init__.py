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
from cnnlens.methods.cam_extra import (
    KPCACAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAMElementWise,
    ShapleyCAM,
)
from cnnlens.methods.extremal import ExtremalPerturbation
from cnnlens.methods.gradients import (
    Deconvnet,
    GradientMethod,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    Saliency,
)
from cnnlens.methods.noise import SmoothGrad
from cnnlens.methods.perturbation import RISE, Occlusion, PerturbationMethod
from cnnlens.methods.score_cam import AblationCAM, ScoreCAM
from cnnlens.methods.score_cam_smooth import ISCAM, SSCAM
from cnnlens.methods.superpixel import LIME, XRAI, KernelSHAP

__all__ = [
    "CAM",
    "ISCAM",
    "KPCACAM",
    "LIME",
    "RISE",
    "SSCAM",
    "XRAI",
    "AblationCAM",
    "BaseCAM",
    "Deconvnet",
    "EigenCAM",
    "EigenGradCAM",
    "Explainer",
    "ExtremalPerturbation",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GradientMethod",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputXGradient",
    "IntegratedGradients",
    "KernelSHAP",
    "LayerCAM",
    "Occlusion",
    "PerturbationMethod",
    "Saliency",
    "ScoreCAM",
    "ShapleyCAM",
    "SmoothGrad",
    "XGradCAM",
]
