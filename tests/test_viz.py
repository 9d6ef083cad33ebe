"""Pictures: overlays, masked images, signed attributions, figures and atomic PNG files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens import viz
from cnnlens.errors import DataError, InputError

# Hand-known colormap ends: jet(0) = (0, 0, 0.5), jet(1) = (0.5, 0, 0); bwr goes blue-white-red.
JET_LOW = (0, 0, 128)
JET_HIGH = (128, 0, 0)
BWR_BLUE = (0, 0, 255)
BWR_RED = (255, 0, 0)


def _rgb_image(h: int = 4, w: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- overlay / heatmap / masked


def test_overlay_alpha_zero_gives_the_image_and_alpha_one_the_colormap() -> None:
    img = _rgb_image()
    m = np.zeros((4, 5))
    m[0, 0], m[3, 4] = 0.0, 1.0
    out0 = np.asarray(viz.overlay(Image.fromarray(img), m, alpha=0.0))
    assert out0.dtype == np.uint8
    np.testing.assert_array_equal(out0, img)
    out1 = np.asarray(viz.overlay(img, m, alpha=1.0))
    assert tuple(out1[0, 0]) == JET_LOW
    assert tuple(out1[3, 4]) == JET_HIGH
    # Other colormap names work: viridis(1.0) is yellow (0.993, 0.906, 0.144).
    out_v = np.asarray(viz.overlay(img, m, alpha=1.0, cmap="viridis"))
    np.testing.assert_allclose(out_v[3, 4], [253, 231, 37], atol=1)


def test_overlay_alpha_half_blends_linearly() -> None:
    img = np.full((2, 2, 3), 200, dtype=np.uint8)
    m = np.ones((2, 2))
    out = np.asarray(viz.overlay(img, m, alpha=0.5))
    # 0.5 * 200/255 + 0.5 * jet(1) = (0.5*200/255 + 0.25, 0.5*200/255, 0.5*200/255)
    expected = np.round(np.array([100 / 255 + 0.25, 100 / 255, 100 / 255]) * 255)
    np.testing.assert_array_equal(out[1, 1], expected.astype(np.uint8))


def test_overlay_grey_tensor_is_denormalized_with_the_mnist_preset() -> None:
    raw = torch.tensor([[0.0, 0.5], [0.25, 1.0]])
    mean, std = 0.1307, 0.3081
    x = ((raw - mean) / std)[None]  # (1, H, W) normalized like MNIST
    out = np.asarray(viz.overlay(x, torch.zeros(2, 2), alpha=0.0, preset="mnist"))
    assert out.shape == (2, 2, 3)
    expected = np.round(raw.numpy() * 255).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_preset_object_name_and_unknown_name() -> None:
    raw = torch.rand(3, 3, 3)
    preset = SimpleNamespace(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.1))
    x = (raw - torch.tensor(preset.mean)[:, None, None]) / torch.tensor(preset.std)[:, None, None]
    got = np.asarray(viz.show_image(x, preset=preset))
    np.testing.assert_array_equal(got, np.round(raw.permute(1, 2, 0).numpy() * 255))
    imnet = ((raw - torch.tensor([0.485, 0.456, 0.406])[:, None, None])
             / torch.tensor([0.229, 0.224, 0.225])[:, None, None])  # fmt: skip
    got = np.asarray(viz.show_image(imnet, preset="imagenet"))
    np.testing.assert_allclose(got, np.round(raw.permute(1, 2, 0).numpy() * 255), atol=1)
    with pytest.raises(DataError, match="preset 'nope' is unknown"):
        viz.show_image(imnet, preset="nope")


def test_heatmap_alone_uses_the_colormap() -> None:
    m = torch.tensor([[0.0, 1.0]])
    out = np.asarray(viz.heatmap(m))
    assert tuple(out[0, 0]) == JET_LOW and tuple(out[0, 1]) == JET_HIGH


def test_masked_equals_image_times_map_rgb_and_grey() -> None:
    img = _rgb_image(3, 3)
    m = np.linspace(0, 1, 9).reshape(3, 3)
    out = np.asarray(viz.masked(img, m))
    expected = np.round(img / 255.0 * m[..., None] * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    grey = Image.fromarray(img[..., 0])
    out_g = np.asarray(viz.masked(grey, m))
    assert out_g.ndim == 2
    np.testing.assert_array_equal(out_g, np.round(img[..., 0] * m).astype(np.uint8))


def test_map_of_another_size_is_resized_bilinearly() -> None:
    img = np.full((4, 4), 255, dtype=np.uint8)
    m = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    out = np.asarray(viz.masked(img, m))
    # align_corners=False: output columns sample x = 0, 0.25, 0.75, 1 between the two values.
    np.testing.assert_array_equal(out[2], np.round(np.array([0, 0.25, 0.75, 1]) * 255))


def test_float_image_without_preset_outside_unit_range_is_rescaled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    x = torch.tensor([[[-1.0, 1.0]]])
    with caplog.at_level("WARNING"):
        out = np.asarray(viz.show_image(x))
    np.testing.assert_array_equal(out, [[0, 255]])
    assert "no preset" in caplog.text


def test_bad_inputs_raise_input_errors() -> None:
    img = _rgb_image()
    with pytest.raises(InputError, match="cmap 'nocmap'"):
        viz.overlay(img, np.zeros((4, 5)), cmap="nocmap")
    with pytest.raises(InputError, match="alpha"):
        viz.overlay(img, np.zeros((4, 5)), alpha=1.5)
    with pytest.raises(InputError, match=r"single \(H, W\) map"):
        viz.overlay(img, np.zeros((2, 4, 5)))
    with pytest.raises(InputError, match="NaN"):
        viz.overlay(img, np.full((4, 5), np.nan))
    with pytest.raises(InputError, match="image must be"):
        viz.overlay([1, 2, 3], np.zeros((4, 5)))
    with pytest.raises(InputError, match="preset has 3 channels but the image has 1"):
        viz.show_image(torch.zeros(1, 4, 4), preset=([0.1, 0.2, 0.3], [1, 1, 1]))


# ---------------------------------------------------------------- signed attributions


def _signed_ramp() -> np.ndarray:
    """|s| = 0..100 (so the 99th percentile of |s| is exactly 99); odd values negative."""
    v = np.arange(101, dtype=np.float64)
    v[1::2] *= -1
    return v.reshape(1, 101)


def test_diverging_view_clips_at_the_percentile_and_keeps_the_sign() -> None:
    s = _signed_ramp()
    values, t = viz.attribution_values(s, view="all", percentile=99)
    assert t == pytest.approx(99.0)
    assert values[0, 99] == -1.0  # s = -99: the percentile value reaches the blue end
    assert values[0, 100] == 1.0  # s = 100 is an outlier, clipped to the red end
    assert values[0, 98] == pytest.approx(98 / 99)
    assert values[0, 0] == 0.0
    out = np.asarray(viz.attribution(s))
    assert tuple(out[0, 99]) == BWR_BLUE
    assert tuple(out[0, 100]) == BWR_RED
    np.testing.assert_allclose(out[0, 0], (255, 255, 255), atol=2)  # 0 is white (centre)
    assert out[0, 98, 0] > out[0, 98, 2]  # positive: red side
    assert out[0, 97, 2] > out[0, 97, 0]  # negative: blue side


def test_attribution_views_and_channel_sum() -> None:
    s = _signed_ramp()
    pos, _ = viz.attribution_values(s, view="positive", percentile=100)
    neg, tn = viz.attribution_values(s, view="negative", percentile=100)
    ab, ta = viz.attribution_values(s, view="absolute", percentile=100)
    assert np.all(pos[s < 0] == 0) and np.all(neg[s > 0] == 0)
    assert pos[0, 100] == 1.0 and neg[0, 99] == 1.0 and tn == 99.0 and ta == 100.0
    np.testing.assert_allclose(ab[0], np.abs(s[0]) / 100)
    # (C, H, W) raw attributions are summed over channels before the view is taken.
    chw = torch.tensor(np.stack([s, -2 * s, s]))
    summed, _ = viz.attribution_values(chw, view="all", percentile=100)
    np.testing.assert_allclose(summed, np.zeros_like(s))  # s - 2s + s = 0
    chw = torch.tensor(np.stack([s, s, s]))
    summed, t3 = viz.attribution_values(chw, view="all", percentile=100)
    assert t3 == 300.0
    np.testing.assert_allclose(summed, s / 100)


def test_attribution_all_zero_and_bad_arguments() -> None:
    values, t = viz.attribution_values(np.zeros((3, 3)))
    assert t == 0.0 and not values.any()
    with pytest.raises(InputError, match="view must be one of"):
        viz.attribution_values(np.ones((3, 3)), view="both")
    with pytest.raises(InputError, match="percentile"):
        viz.attribution_values(np.ones((3, 3)), percentile=0)


def test_attribution_over_an_image_blends() -> None:
    s = np.zeros((2, 2))
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    out = np.asarray(viz.attribution(s, image=img, alpha=0.5, percentile=100))
    # bwr at the centre is (nearly) white: half of it over black.
    np.testing.assert_allclose(out[0, 0], (128, 128, 128), atol=2)


# ---------------------------------------------------------------- figures


def _texts(fig: matplotlib.figure.Figure) -> list[str]:
    out = [fig.get_suptitle()]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_ylabel(), ax.get_xlabel()]
    return [t for t in out if t]


def test_grid_size_labels_and_png_pixels(tmp_path: Path) -> None:
    cells = [[np.zeros((8, 8)), _rgb_image(8, 8), None], [viz.Panel(np.ones((8, 8)), "cap")]]
    fig = viz.grid(cells, ["row a", "row b"], ["c1", "c2", "c3"], title="T", colorbar="jet")
    w = 3 * 2.4 + 0.45 + 0.85
    h = 2 * 2.4 + 0.40 + 0.45 + 0.28  # one row holds a caption
    np.testing.assert_allclose(fig.get_size_inches(), [w, h])
    texts = _texts(fig)
    for label in ["row a", "row b", "c1", "c2", "c3", "T", "cap"]:
        assert label in texts
    path = viz.save_png(fig, tmp_path / "sub" / "grid.png")
    with Image.open(path) as im:
        assert im.size == (round(w * 100), round(h * 100))
    with pytest.raises(InputError, match="row_labels must have 2"):
        viz.grid(cells, ["only one"])


def test_methods_layers_classes_grids() -> None:
    images = torch.rand(3, 3, 16, 16)
    maps = {"gradcam": torch.rand(3, 4, 4), "rise": [torch.rand(16, 16), None, torch.rand(8, 8)]}
    fig = viz.methods_grid(images, maps, image_labels=["a", "b", "c"], title="methods")
    assert fig.get_size_inches()[1] == pytest.approx(3 * 2.4 + 0.40 + 0.45)
    texts = _texts(fig)
    assert {"input", "gradcam", "rise", "a", "b", "c", "methods"} <= set(texts)
    assert len(fig.axes) == 3 * 3 + 1  # cells + colorbar
    # An empty cell (None) draws nothing.
    assert not fig.axes[2 * 3 + 1].images and fig.axes[2 * 3 + 0].images

    fig = viz.layers_grid(list(images[:2]), {"layer1": torch.rand(2, 8, 8)}, show_input=False)
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["layer1", ""]

    grey = torch.rand(2, 1, 12, 12)
    fig = viz.classes_grid(
        grey, {"circle": torch.rand(2, 3, 3), "square": torch.rand(2, 3, 3)},
        probs={"circle": [0.25, 0.75], "square": [0.5, 0.125]},
        image_labels=[viz.label_with_prob("circle", 0.75), "square"],
    )  # fmt: skip
    texts = _texts(fig)
    assert {"p = 0.25", "p = 0.75", "p = 0.12", "circle · p = 0.75", "square"} <= set(texts)
    with pytest.raises(InputError, match=r"maps\['x'\] must hold one map per image \(2\)"):
        viz.methods_grid(list(grey), {"x": [torch.rand(3, 3)]})


def test_explanation_and_attribution_figures() -> None:
    img = torch.rand(3, 10, 10)
    fig = viz.explanation_figure(img, torch.rand(5, 5), method="gradcam", class_name="cat",
                                 prob=0.934)  # fmt: skip
    assert fig.get_suptitle() == "gradcam — cat · p = 0.93"
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "heatmap", "overlay"]
    assert len(fig.axes) == 4  # three panels and the colorbar
    assert fig.axes[3].get_ylabel() == "relevance"
    s = _signed_ramp()
    fig = viz.attribution_figure(np.zeros((1, 101)), s, percentile=99)
    cbar = fig.axes[-1]
    assert cbar.get_ylim() == pytest.approx((-99.0, 99.0))


def test_save_png_is_atomic_and_roundtrips(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb_image())
    path = tmp_path / "x.png"
    path.write_bytes(b"old")
    assert viz.save_png(img, path) == path
    with Image.open(path) as back:
        np.testing.assert_array_equal(np.asarray(back), np.asarray(img))
    assert sorted(os.listdir(tmp_path)) == ["x.png"]  # no temp file left behind
    with pytest.raises(InputError, match="expected a matplotlib Figure or a PIL image"):
        viz.save_png(np.zeros((2, 2)), tmp_path / "y.png")
    assert sorted(os.listdir(tmp_path)) == ["x.png"]


def test_figures_never_touch_pyplot() -> None:
    code = textwrap.dedent(
        """
        import sys, numpy as np
        from cnnlens import viz
        fig = viz.methods_grid([np.zeros((4, 4))], {"m": [np.ones((4, 4))]})
        viz.to_png_bytes(fig)
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
