"""Image IO, preprocessing presets and datasets.

>>> from cnnlens.data import load_image, to_tensor, get_dataset
>>> x = to_tensor(load_image("cat.jpg"), size=224, preset="imagenet")   # doctest: +SKIP
>>> ds = get_dataset("mnist-embedded", split="test")                    # doctest: +SKIP
"""

from __future__ import annotations

from cnnlens.data.base import ImageTensorDataset
from cnnlens.data.datasets import DATASETS, get_dataset, list_datasets
from cnnlens.data.files import RestrictedUnpickler, read_idx, safe_unpickle
from cnnlens.data.geometry import Geometry, geometry
from cnnlens.data.io import IMAGE_EXTENSIONS, MAX_PIXELS, conversion, convert_mode, load_image
from cnnlens.data.masked import MaskedImages, load_masked_folder
from cnnlens.data.preprocess import Preprocessing
from cnnlens.data.presets import PRESETS, Preset, get_preset, list_presets, to_image, to_tensor
from cnnlens.data.shapes import SHAPE_CLASSES

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "PRESETS",
    "SHAPE_CLASSES",
    "Geometry",
    "ImageTensorDataset",
    "MaskedImages",
    "Preprocessing",
    "Preset",
    "RestrictedUnpickler",
    "conversion",
    "convert_mode",
    "geometry",
    "get_dataset",
    "get_preset",
    "list_datasets",
    "list_presets",
    "load_image",
    "load_masked_folder",
    "read_idx",
    "safe_unpickle",
    "to_image",
    "to_tensor",
]
