"""`cnnlens demo --quick` end to end, its configurations, and the helpers it shares with
`cnnlens explain` (cnnlens.viz.render, cnnlens.metrics.describe)."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens.cli.main import main
from cnnlens.metrics.describe import map_stats, probabilities, scalar_extras, top_predictions
from cnnlens.pipelines.demo import FULL, QUICK, _conv_layers, _subset
from cnnlens.pipelines.options import method_options
from cnnlens.viz import render_map, show_input, signed_view, slug


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, buf.getvalue()


def test_quick_demo_writes_a_report_with_every_picture_embedded(demo: tuple[Path, str]) -> None:
    out, printed = demo
    report = out / "report.html"
    assert f"report: {report}" in printed
    assert "mnist-cnn test accuracy" in printed and "Total params: 2,099,557" in printed
    html = report.read_text()
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/") for s in sources)
    # every map PNG the demo wrote is in the page byte for byte
    maps = sorted(p for p in (out / "digits").glob("*.png") if not p.name.endswith("_input.png"))
    info = json.loads((out / "demo.json").read_text())
    assert len(maps) == QUICK.digits * len(info["methods"])
    for p in maps:
        assert base64.b64encode(p.read_bytes()).decode() in html, p.name
    for name in ("methods_grid", "gradcam_layers", "shapes_classes_gradcam", "shapes_classes_cam"):
        png = out / "figures" / f"{name}.png"
        assert base64.b64encode(png.read_bytes()).decode() in html, name
    for title in ("Grad-CAM across layers", "Two classes in one image", "Sanity check"):
        assert title in html
    assert (out / "figures" / "overview.png").stat().st_size < 300_000


def test_quick_demo_covers_every_registered_method(demo: tuple[Path, str]) -> None:
    out, _ = demo
    info = json.loads((out / "demo.json").read_text())
    registered = set(cnnlens.list_methods())
    assert set(info["methods"]) | set(info["methods_skipped"]) == registered
    # mnist-cnn flattens into two linear layers: no global average pooling, so no CAM
    assert set(info["methods_skipped"]) == {"cam"}
    assert info["prototypes"] == 11  # ten classes + the from-image example
    assert [s["method"] for s in info["sanity"]] == list(QUICK.sanity_methods)
    for s in info["sanity"]:  # the verdict of cnnlens.metrics.sanity.cascade_verdict
        assert 0.0 <= s["low"] <= s["upper"] <= s["high"] <= 1.0 and s["n"] == QUICK.sanity_images
        want = None if s["low"] < 0.5 <= s["high"] else s["high"] < 0.5
        assert s["passed"] is want and 0.0 <= s["final"] <= 1.0


def test_quick_demo_accuracy_matches_the_checkpoint(demo: tuple[Path, str]) -> None:
    from cnnlens import models
    from cnnlens.data import get_dataset
    from cnnlens.training import evaluate

    out, _ = demo
    info = json.loads((out / "demo.json").read_text())
    net, card = models.load(out / "mnist-cnn" / "model.safetensors")
    assert card.dataset == "mnist-embedded" and card.class_names == [str(i) for i in range(10)]
    test_set = _subset(get_dataset("mnist-embedded", split="test"), QUICK.mnist_test)
    assert info["mnist_accuracy"] == pytest.approx(evaluate(net, test_set).accuracy, abs=1e-6)
    _, card2 = models.load(out / "gap-cnn" / "model.safetensors")
    assert card2.dataset == "shapes-pair" and card2.input_size == (QUICK.shapes_size,) * 2


# ------------------------------------------------------------------------------ helpers


def test_probabilities_and_top_predictions() -> None:
    scores = torch.tensor([[0.0, math.log(3.0), -1e9]])
    p = probabilities(scores)
    assert torch.allclose(p, torch.tensor([[0.25, 0.75, 0.0]]))
    assert torch.allclose(probabilities(torch.zeros(1, 2), "sigmoid"), torch.full((1, 2), 0.5))
    assert torch.equal(probabilities(scores, None), scores)
    with pytest.raises(cnnlens.CnnlensError, match="activation"):
        probabilities(scores, "relu")
    with pytest.raises(cnnlens.CnnlensError, match=r"\(B, N\)"):
        probabilities(torch.zeros(2, 3, 4))
    top = top_predictions(p[0], ["a", "b", "c"], k=2)
    assert top == [
        {"class": "b", "index": 1, "prob": pytest.approx(0.75)},
        {"class": "a", "index": 0, "prob": pytest.approx(0.25)},
    ]
    assert len(top_predictions(p[0], ["a", "b", "c"], k=5)) == 3


def test_map_stats_hand_computed() -> None:
    m = torch.zeros(4, 4)
    m[1, 2] = 1.0
    m[3, 0] = 0.5
    m[0, 0] = 0.25
    stats = map_stats(m, torch.full((3, 4, 4), -0.5), {"delta": 0.125})
    assert stats == {  # rounded to 4 decimals for results.json
        "mean": pytest.approx(1.75 / 16, abs=1e-4),
        "coverage": pytest.approx(2 / 16),
        "peak_y": pytest.approx(1.5 / 4),
        "peak_x": pytest.approx(2.5 / 4),
        "sum": pytest.approx(-24.0),
        "delta": pytest.approx(0.125),
    }
    assert "sum" not in map_stats(m, torch.zeros(2, 2))  # a CAM raw map has no channel axis


def test_scalar_extras() -> None:
    extras = {"delta": torch.tensor([[0.1, 0.2], [0.3, 0.4]]), "note": "x", "big": torch.ones(2, 5)}
    assert scalar_extras(extras, (1, 0), (2, 2)) == {"delta": pytest.approx(0.3)}
    assert scalar_extras({"delta": torch.tensor([0.5, 0.25])}, (1,), (2,)) == {"delta": 0.25}


def test_signed_view() -> None:
    saliency = cnnlens.get_method("saliency")
    ig = cnnlens.get_method("integrated_gradients")
    m = torch.rand(4, 4)
    mixed = torch.tensor([-1.0, 2.0]).repeat(8)[:16].reshape(1, 4, 4)
    assert signed_view(ig, mixed, m)
    assert not signed_view(saliency, mixed, m)  # absmax: a magnitude method
    assert not signed_view(ig, mixed.abs(), m)  # one sign only
    assert not signed_view(ig, None, m)
    assert not signed_view(cnnlens.get_method("gradcam"), torch.rand(2, 2), m)


def test_render_map_views() -> None:
    image = torch.zeros(1, 2, 2)  # black (preset none)
    m = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    over = np.asarray(render_map(image, m, min_side=4), dtype=int)
    assert over.shape == (4, 4, 3)  # enlarged 2x
    # O = (1 - a) I + a jet(M) with a = 0.5 over black: jet(1) = (0.5, 0, 0), jet(0) = (0, 0, 0.5)
    assert np.abs(over[0, 3] - [64, 0, 0]).max() <= 1
    assert np.abs(over[3, 0] - [0, 0, 64]).max() <= 1
    raw = torch.tensor([[[2.0, 0.0], [0.0, -2.0]]])
    signed = np.asarray(render_map(image, m, raw=raw, signed=True, min_side=2), dtype=int)
    assert signed[0, 0, 0] > signed[0, 0, 2]  # positive: red
    assert signed[1, 1, 2] > signed[1, 1, 0]  # negative: blue
    assert show_input(torch.ones(3, 5, 7), min_side=12).size == (21, 15)  # x ceil(12 / 5)


def test_method_options_filters_by_constructor() -> None:
    opts = {"n_samples": 2, "n_steps": 4, "n_masks": 9, "batch_size": 7}
    assert method_options(cnnlens.get_method("smoothgrad"), opts) == {
        "n_samples": 2,
        "batch_size": 7,
    }
    assert method_options(cnnlens.get_method("rise"), opts) == {"n_masks": 9, "batch_size": 7}
    assert method_options(cnnlens.get_method("gradcam"), opts) == {}


def test_subset_is_stratified_and_layers_span_the_depth() -> None:
    from cnnlens import models
    from cnnlens.data import get_dataset

    ds = get_dataset("mnist-embedded", split="test")
    sub = _subset(ds, 30)
    assert len(sub) == 30
    assert torch.bincount(sub.targets, minlength=10).tolist() == [3] * 10
    assert _conv_layers(models.create("mnist-cnn")) == ["block1", "block2", "block3"]
    gap = models.create("gap-cnn")
    assert _conv_layers(gap) == ["features.block1", "features.block3", "features.block4"]
    conv = torch.nn.Conv2d
    flat = torch.nn.Sequential(conv(1, 2, 3), torch.nn.ReLU(), conv(2, 2, 3), conv(2, 2, 3))
    flat.append(conv(2, 2, 3))  # no blocks (VGG-like): the convolutions themselves
    assert _conv_layers(flat) == ["0", "3", "4"]
    assert slug("gradcam++") == "gradcampp" and slug("a b/c") == "a-b-c"


def test_demo_options_are_the_methods_presets() -> None:
    from cnnlens.core.registry import preset_options

    everything = cnnlens.list_methods()
    assert QUICK.method_options == preset_options(everything, "tiny") == QUICK.sanity_options
    assert FULL.sanity_options == preset_options(everything, "light")
    light = preset_options(everything, "light")
    for name, opts in FULL.method_options.items():
        ours = dict(FULL.figure_options.get(name, {}))
        assert opts == {**light.get(name, {}), **ours}
        # the figure options are the demo's own only where they differ from the preset
        assert all(light.get(name, {}).get(k) != v for k, v in ours.items())


def test_quick_demo_card_is_mnist_cnn_s_and_methods_go_family_by_family(
    demo: tuple[Path, str],
) -> None:
    from cnnlens.core.registry import FAMILIES

    out, _ = demo
    html = (out / "report.html").read_text()
    card = html.split('<section id="model"')[1].split("</section>")[0]
    assert "mnist-cnn" in card and "gap-cnn" not in card  # gap-cnn has its own section
    methods = json.loads((out / "demo.json").read_text())["methods"]
    ranks = [FAMILIES.index(cnnlens.get_method(m).family) for m in methods]
    assert ranks == sorted(ranks) and methods[0] != "ablationcam", methods
    assert "Reading the maps" in html and "coverage</dt>" in html and "peak_y</dt>" in html
