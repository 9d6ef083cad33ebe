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
    # short side 300 -> 256, long side 451 -> int(384.85) = 384 (torchvision's rule);
    # centre 224 crop at (80, 16) of 384 x 256
    assert geo.image_size == (300, 451) and geo.input_size == (224, 224) and geo.cropped
    sx, sy = 451 / 384, 300 / 256
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


def test_readme_library_example_runs_and_places_the_map(
    cat: Image.Image, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "geometry=geo" in code
    # offline: random weights instead of the download, scikit-image's cat as the photo
    code = code.replace('weights="DEFAULT"', "weights=None")
    cat.save(tmp_path / "cat_and_dog.jpg")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", viz.GeometryWarning)
        exec(compile(code, "README.md", "exec"), {})
    assert Image.open(tmp_path / "cat.png").size == (451, 300)
    assert (tmp_path / "cat_and_dog.png").is_file()


@pytest.mark.parametrize(
    ("weights", "size", "resize", "interpolation"),
    [
        ("ResNet50_Weights.IMAGENET1K_V1", 224, None, "bilinear"),
        ("ResNet50_Weights.IMAGENET1K_V2", 224, 232, "bilinear"),
        ("EfficientNet_B3_Weights.IMAGENET1K_V1", 300, 320, "bicubic"),
    ],
)
def test_crop_matches_torchvision_transforms(
    cat: Image.Image, weights: str, size: int, resize: int | None, interpolation: str
) -> None:
    import torchvision

    cls, name = weights.split(".")
    entry = getattr(torchvision.models, cls)[name]  # transforms only: nothing downloads
    expected = entry.transforms()(cat)
    got = to_tensor(
        cat, size=size, preset="imagenet", crop=True, resize=resize, interpolation=interpolation
    )
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_explain_cli_preprocesses_as_the_weights_declare(cat: Image.Image, tmp_path) -> None:
    import torchvision

    from cnnlens.models.checkpoint import _info_for_name
    from cnnlens.pipelines.explain import load_batch as _load_batch

    info = _info_for_name("efficientnet_b3", "DEFAULT")  # metadata only: nothing downloads
    assert (info.resize, info.interpolation, tuple(info.input_size)) == (320, "bicubic", (300, 300))
    path = tmp_path / "cat.png"
    cat.save(path)
    ok, tensors, bad = _load_batch([path], info)
    expected = torchvision.models.EfficientNet_B3_Weights.DEFAULT.transforms()(cat)
    assert ok == [0] and not bad
    torch.testing.assert_close(tensors[0], expected, atol=1e-5, rtol=0)
    assert info.preprocessing().geometry(cat).input_size == (300, 300)
