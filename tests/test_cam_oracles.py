"""The CAM family against the peers: captum and pytorch-grad-cam as oracles.

torchvision resnet18, vgg11 and densenet121 with seeded random weights at a small input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import LayerGradCam
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

import cnnlens
from conftest import pearson

PEERS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
}

# model name -> (layers to check); the last one is the usual "last conv" choice
CASES = {
    "resnet18": ["layer2", "layer4"],
    "vgg11": ["features.10", "features.20"],
    "densenet121": ["features.transition2", "features.denseblock4"],
}


@pytest.fixture(scope="module", params=list(CASES))
def net(request):
    torch.manual_seed(0)
    model = getattr(torchvision.models, request.param)().eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the top classes: maps of random-weight nets are not all negative
        targets = model(x).argmax(1).tolist()
    return request.param, model, x, targets


def test_gradcam_raw_equals_captum(net) -> None:
    name, model, x, targets = net
    for layer in CASES[name]:
        exp = cnnlens.explain(model, x, "gradcam", target=targets, layer=layer)
        module = model.get_submodule(layer)
        ref = LayerGradCam(model, module).attribute(x, target=targets, relu_attributions=True)
        torch.testing.assert_close(exp.raw.clamp(min=0), ref[:, 0].detach(), rtol=1e-4, atol=1e-6)


# Eigen-CAM's SVD sign is arbitrary (the peer keeps whatever LAPACK returns, cnnlens corrects
# it), so it is compared on the raw projection up to sign below.
@pytest.mark.parametrize("method", [m for m in PEERS if m != "eigencam"])
def test_maps_agree_with_pytorch_grad_cam(net, method: str) -> None:
    name, model, x, targets = net
    layer = CASES[name][-1]
    exp = cnnlens.explain(model, x, method, target=targets, layer=layer)
    with PEERS[method](model=model, target_layers=[model.get_submodule(layer)]) as peer:
        ref = peer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    for i in range(len(targets)):
        r = pearson(exp.maps[i], torch.from_numpy(ref[i]))
        assert r >= 0.999, f"{name}/{layer}/{method} image {i}: pearson {r:.5f}"
    # both normalize with min-max, so the maps also agree pointwise
    np.testing.assert_allclose(exp.maps.numpy(), ref, atol=2e-3)


def test_eigencam_raw_is_the_peer_projection_up_to_sign(net) -> None:
    name, model, x, _ = net
    layer = CASES[name][-1]
    acts = {}
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, i, o: acts.setdefault("a", o.detach().clone())
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    proj = torch.from_numpy(get_2d_projection(acts["a"].numpy()))
    exp = cnnlens.explain(model, x, "eigencam", layer=layer)
    for i in range(x.shape[0]):
        sign = 1.0 if pearson(exp.raw[i], proj[i]) > 0 else -1.0
        torch.testing.assert_close(exp.raw[i], sign * proj[i], rtol=1e-3, atol=1e-4)
