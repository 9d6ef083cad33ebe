"""What a new user trips over (issue 18): CAM on DenseNet, VGG's automatic layer, the result of
cnnlens.models.load passed to explain, photos whose colours are changed to fit the model."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from PIL import Image

import cnnlens
from cnnlens.data import conversion
from cnnlens.errors import InputError


def test_cam_on_densenet_reads_the_relu_before_the_pooling() -> None:
    torch.manual_seed(0)
    # torchvision's DenseNet (densenet121's forward: F.relu(features), pooling, classifier),
    # small blocks so the test builds it fast
    net = torchvision.models.DenseNet(16, (2, 2, 2), 16, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    exp = cnnlens.explain(net, x, "cam", target=[5, 7])
    assert exp.layer == "features"
    with torch.no_grad():
        logits = net(x)
    # CAM's identity: the map's spatial mean is the class score less its bias, which holds
    # only for the ReLU'd activations DenseNet's forward pools (F.relu(features))
    bias = net.classifier.bias.detach()
    expected = torch.stack([logits[0, 5] - bias[5], logits[1, 7] - bias[7]])
    torch.testing.assert_close(exp.raw.mean(dim=(1, 2)), expected, atol=1e-4, rtol=1e-4)


def test_vgg_automatic_layer_is_the_last_relu_of_features_not_the_pooling() -> None:
    torch.manual_seed(0)
    net = torchvision.models.vgg11(weights=None).eval()  # vgg16's layout, fewer convs
    exp = cnnlens.explain(net, torch.randn(1, 3, 64, 64), "gradcam")
    assert exp.layer == f"features.{len(net.features) - 2}"  # the ReLU before the last MaxPool
    assert isinstance(net.get_submodule(exp.layer), torch.nn.ReLU)


def test_explain_takes_what_models_load_returns() -> None:
    loaded = cnnlens.models.load("simplecnn")
    assert isinstance(loaded, tuple)
    exp = cnnlens.explain(loaded, torch.randn(1, 3, 32, 32), "gradcam")
    assert exp.maps.shape == (1, 32, 32)
    with pytest.raises(InputError, match=r"torch\.nn\.Module, got tuple"):
        cnnlens.explain((loaded[0], "not info"), torch.randn(1, 3, 32, 32))


def test_photos_changed_to_fit_the_model_are_named_in_one_line(tmp_path, caplog) -> None:
    from cnnlens.pipelines.explain import run_explain

    Image.new("L", (32, 32), 120).save(tmp_path / "grey.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 100)).save(tmp_path / "clear.png")
    Image.new("RGB", (32, 32), (100, 20, 30)).save(tmp_path / "colour.png")
    assert "channel repeated to RGB" in conversion(tmp_path / "grey.png", "RGB")
    assert "composited on white" in conversion(tmp_path / "clear.png", "RGB")
    assert "converted to greyscale" in conversion(tmp_path / "colour.png", "L")
    assert conversion(tmp_path / "colour.png", "RGB") is None
    assert conversion(tmp_path / "grey.png", "L") is None
    for i in range(2):
        Image.new("L", (32, 32), 60 * i).save(tmp_path / f"more{i}.png")
    with caplog.at_level(logging.WARNING, logger="cnnlens.pipelines.explain"):
        run_explain([tmp_path], model="simplecnn", out=tmp_path / "out", methods=["saliency"])
    lines = [r.getMessage() for r in caplog.records if r.name == "cnnlens.pipelines.explain"]
    grey = [line for line in lines if "channel repeated" in line]
    assert len(grey) == 1 and "grey.png" in grey[0] and "more0.png" in grey[0], lines
    assert sum("composited on white" in line for line in lines) == 1
    assert not any("colour.png" in line for line in lines)
