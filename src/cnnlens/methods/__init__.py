"""Explanation methods; importing this package registers the built-in ones."""

from cnnlens.methods.base import BaseCAM, CAMContext, Explainer, GradientMethod
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
from cnnlens.methods.deeplift import DeepLift, DeepLiftShap, GradientShap
from cnnlens.methods.extremal import ExtremalPerturbation
from cnnlens.methods.gradients import (
    Deconvnet,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    Saliency,
)
from cnnlens.methods.lrp import LRP
from cnnlens.methods.noise import SmoothGrad
from cnnlens.methods.perturbation import RISE, Occlusion, PerturbationMethod
from cnnlens.methods.score_cam import ISCAM, SSCAM, AblationCAM, ScoreCAM
from cnnlens.methods.superpixel import LIME, XRAI, KernelSHAP

__all__ = [
    "CAM",
    "ISCAM",
    "KPCACAM",
    "LIME",
    "LRP",
    "RISE",
    "SSCAM",
    "XRAI",
    "AblationCAM",
    "BaseCAM",
    "CAMContext",
    "Deconvnet",
    "DeepLift",
    "DeepLiftShap",
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
    "GradientShap",
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
