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
from cnnlens.methods.deeplift import DeepLift, DeepLiftShap, GradientShap
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
from cnnlens.methods.score_cam import AblationCAM, ScoreCAM

__all__ = [
    "CAM",
    "LRP",
    "RISE",
    "AblationCAM",
    "BaseCAM",
    "CAMContext",
    "Deconvnet",
    "DeepLift",
    "DeepLiftShap",
    "EigenCAM",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientMethod",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputXGradient",
    "IntegratedGradients",
    "LayerCAM",
    "Occlusion",
    "PerturbationMethod",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "XGradCAM",
]
