"""Overlays land where the model looked: a centre-cropped input's map put back on the photo."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import cnnlens
from cnnlens import viz
from cnnlens.data import geometry, to_tensor
from cnnlens.errors import InputError


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(skdata.chelsea())  # 451 x 300 photo


def test_geometry_matches_to_tensor_crop(cat: Image.Image) -> None:
    geo = geometry(cat, size=224, crop=True)
    # short side 300 -> 256, long side 451 -> 385; centre 224 crop at (80, 16) of 385 x 256
    assert geo.image_size == (300, 451) and geo.input_size == (224, 224) and geo.cropped
    sx, sy = 451 / 385, 300 / 256
    assert geo.box == pytest.approx((80 * sx, 16 * sy, 304 * sx, 240 * sy))
    # the crop's content is the photo's content at the mapped place: sample the photo there
    x = to_tensor(cat, size=224, crop=True)  # values in [0, 1]
    photo = np.asarray(cat, dtype=np.float64) / 255.0
    for row, col in [(10, 10), (112, 50), (200, 190)]:
        y, xx = geo.to_image(row, col)
        expected = photo[int(y), int(xx)]
        assert np.abs(x[:, row, col].numpy() - expected).max() < 0.12


def test_peak_lands_on_the_photo_pixel(cat: Image.Image) -> None:
    geo = geometry(cat, size=224, crop=True)
    m = torch.zeros(224, 224)
    row, col = 60, 150
    m[row, col] = 1.0
    values, inside = viz.map_on_image(m, (300, 451), geo)
    y, x = np.unravel_index(values.argmax(), values.shape)
    ey, ex = geo.to_image(row, col)
    assert abs(y + 0.5 - ey) <= 1.0 and abs(x + 0.5 - ex) <= 1.0
    # outside the crop the model saw nothing: the left and right strips are not inside
    assert not inside[:, :90].any() and not inside[:, 360:].any() and inside[150, 225]


def test_map_of_the_crop_reproduces_the_photo(cat: Image.Image) -> None:
    # a "map" that is the input's own red channel, put back, must match the photo's red
    # channel inside the crop; stretching it over the whole photo (the old README) must not
    geo = geometry(cat, size=224, crop=True)
    m = to_tensor(cat, size=224, crop=True)[0]
    red = np.asarray(cat, dtype=np.float64)[..., 0] / 255.0
    placed, inside = viz.map_on_image(m, (300, 451), geo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", viz.GeometryWarning)
        stretched, _ = viz.map_on_image(m, (300, 451))
    err_placed = np.abs(placed - red)[inside].mean()
    err_stretched = np.abs(stretched - red)[inside].mean()
    assert err_placed < 0.03 < 3 * err_placed < err_stretched


def test_overlay_with_geometry_and_warning(cat: Image.Image) -> None:
    geo = geometry(cat, size=224, crop=True)
    m = torch.zeros(224, 224)
    m[100:120, 100:120] = 1.0
    out = np.asarray(viz.overlay(cat, m, geometry=geo, alpha=1.0), dtype=np.float64)
    assert out.shape == (300, 451, 3)
    photo = np.asarray(cat, dtype=np.float64)
    # outside the crop: the photo faded half-way to grey, no map
    assert np.allclose(out[:, :50], 0.5 * photo[:, :50] + 0.25 * 255, atol=1.0)
    with pytest.warns(viz.GeometryWarning, match="geometry="):
        viz.overlay(cat, m)
    with pytest.warns(viz.GeometryWarning):
        viz.explanation_figure(cat, m)
    with warnings.catch_warnings():
        warnings.simplefilter("error", viz.GeometryWarning)
        viz.explanation_figure(cat, m, geometry=geo)
        viz.overlay(to_tensor(cat, size=224, crop=True), m)  # on the model's input: fine
        viz.overlay(cat.resize((90, 60)), m[:60, :90])  # same aspect: fine
    with pytest.raises(InputError, match="photo"):
        viz.overlay(cat.resize((100, 100)), m, geometry=geo)
    with pytest.raises(InputError, match="model input"):
        viz.overlay(cat, m[:100], geometry=geo)


def test_plain_resize_geometry(cat: Image.Image) -> None:
    geo = geometry(cat, size=(64, 96))
    assert not geo.cropped and geo.box == (0.0, 0.0, 451.0, 300.0)
    assert geometry((300, 451)).input_size == (300, 451)
    assert to_tensor(cat, size=(64, 96)).shape[1:] == geo.input_size
    y, x = cnnlens.data.geometry(cat, size=(64, 96)).to_image(0, 0)
    assert (y, x) == pytest.approx((0.5 * 300 / 64, 0.5 * 451 / 96))
