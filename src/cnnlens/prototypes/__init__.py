"""Class prototypes and activation maximization: what a class or a channel looks like to a
network.

- :func:`class_prototypes`: one optimized input per class, near the class's mean training
  image, from zeros, noise or a given image (with the change from that image).
- :func:`visualize`, :func:`visualize_channels`, :func:`visualize_classes`: activation
  maximization for any CNN with objectives (:class:`Channel`, :class:`Neuron`,
  :class:`Direction`, :class:`ClassLogit`, :class:`ClassProbability`, ...) that add and scale,
  Fourier or pixel parameterizations, robustness transforms and image priors.
- :mod:`cnnlens.prototypes.figures`: grids, figures and PNG files of the results.
"""

from cnnlens.prototypes.class_prototypes import (
    PrototypeResult,
    class_means,
    class_prototypes,
    parse_classes,
    parse_indices,
)
from cnnlens.prototypes.maximize import (
    VisualizationResult,
    visualize,
    visualize_channels,
    visualize_classes,
)
from cnnlens.prototypes.objectives import (
    L1,
    L2,
    Channel,
    ClassLogit,
    ClassProbability,
    Context,
    Direction,
    Diversity,
    Neuron,
    Objective,
    TotalVariation,
    evaluate,
)
from cnnlens.prototypes.param import (
    FourierImage,
    PixelImage,
    color_correlation_sqrt,
    gaussian_blur,
)
from cnnlens.prototypes.transforms import (
    Compose,
    Jitter,
    Pad,
    RandomRotate,
    RandomScale,
    standard_transforms,
)

__all__ = [
    "L1",
    "L2",
    "Channel",
    "ClassLogit",
    "ClassProbability",
    "Compose",
    "Context",
    "Direction",
    "Diversity",
    "FourierImage",
    "Jitter",
    "Neuron",
    "Objective",
    "Pad",
    "PixelImage",
    "PrototypeResult",
    "RandomRotate",
    "RandomScale",
    "TotalVariation",
    "VisualizationResult",
    "class_means",
    "class_prototypes",
    "color_correlation_sqrt",
    "evaluate",
    "gaussian_blur",
    "parse_classes",
    "parse_indices",
    "standard_transforms",
    "visualize",
    "visualize_channels",
    "visualize_classes",
]
