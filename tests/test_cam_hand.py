"""CAM family on a tiny network with hand-set weights: maps computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.methods.base import normalize_maps


class HandNet(nn.Module):
    """x (1, 1, 3, 3) -> 1x1 conv to [x, -x] -> ReLU -> GAP -> linear W."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


X = torch.tensor([[1.0, -2.0, 0.0], [3.0, -1.0, 2.0], [0.0, 0.5, -3.0]]).view(1, 1, 3, 3)
# A0 = relu(x), A1 = relu(-x)
A0 = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 2.0], [0.0, 0.5, 0.0]])
A1 = torch.tensor([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
W = torch.tensor([[1.0, 2.0], [3.0, -1.0]])


def by_hand_minmax(m: torch.Tensor) -> torch.Tensor:
    m = m.clamp(min=0)
    return (m - m.min()) / (m.max() - m.min())


@pytest.mark.parametrize("cls", [0, 1])
def test_cam_and_gradcam_by_hand(cls: int) -> None:
    model = HandNet().eval()
    cam_raw = W[cls, 0] * A0 + W[cls, 1] * A1
    # Grad-CAM: dy/dA_k = W[c, k] / 9 everywhere, so w_k = W[c, k] / 9.
    grad_raw = (W[cls, 0] / 9) * A0 + (W[cls, 1] / 9) * A1

    cam = cnnlens.explain(model, X, "cam", target=cls, layer="relu")
    torch.testing.assert_close(cam.raw[0], cam_raw)
    torch.testing.assert_close(cam.maps[0], by_hand_minmax(cam_raw))

    gc = cnnlens.explain(model, X, "gradcam", target=cls, layer="relu")
    torch.testing.assert_close(gc.raw[0], grad_raw)
    torch.testing.assert_close(gc.maps[0], by_hand_minmax(grad_raw))
    assert gc.layer == "relu" and gc.targets.tolist() == [cls]


def test_gradcam_variants_by_hand() -> None:
    model = HandNet().eval()
    cls = 1
    g = W[cls].view(2, 1, 1) / 9 * torch.ones(2, 3, 3)  # constant gradients per channel
    acts = torch.stack([A0, A1])
    # HiResCAM: sum_k g_k * A_k ; LayerCAM: sum_k relu(g_k) * A_k
    torch.testing.assert_close(
        cnnlens.explain(model, X, "hirescam", target=cls, layer="relu").raw[0], (g * acts).sum(0)
    )
    torch.testing.assert_close(
        cnnlens.explain(model, X, "layercam", target=cls, layer="relu").raw[0],
        (g.clamp(min=0) * acts).sum(0),
    )
    # XGrad-CAM: w_k = sum(g * A) / sum(A)
    w_x = (g * acts).sum((1, 2)) / acts.sum((1, 2))
    torch.testing.assert_close(
        cnnlens.explain(model, X, "xgradcam", target=cls, layer="relu").raw[0],
        (w_x.view(2, 1, 1) * acts).sum(0),
        rtol=1e-5,
        atol=1e-6,
    )
    # Grad-CAM++: alpha = g^2 / (2 g^2 + sum(A) g^3), w = sum(alpha * relu(g))
    s = acts.sum((1, 2)).view(2, 1, 1)
    alpha = g**2 / (2 * g**2 + s * g**3 + 1e-6)
    w_pp = (alpha * g.clamp(min=0)).sum((1, 2))
    torch.testing.assert_close(
        cnnlens.explain(model, X, "gradcam++", target=cls, layer="relu").raw[0],
        (w_pp.view(2, 1, 1) * acts).sum(0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_eigencam_by_hand() -> None:
    model = HandNet().eval()
    acts = torch.stack([A0, A1]).reshape(2, 9).T.double()  # (hw, C)
    centred = acts - acts.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[0]
    if proj.min().abs() > proj.max().abs():
        proj = -proj
    exp = cnnlens.explain(model, X, "eigencam", layer="relu")
    torch.testing.assert_close(exp.raw[0], proj.reshape(3, 3).float())


def test_upsampling_is_bilinear_half_pixel() -> None:
    model = HandNet().eval()
    x = nn.functional.interpolate(X, size=(6, 6), mode="nearest")
    # pool the 6x6 back to 3x3 at the layer by striding the conv
    model.conv.stride = (2, 2)
    exp = cnnlens.explain(model, x, "gradcam", target=0, layer="relu")
    assert exp.raw.shape == (1, 3, 3) and exp.maps.shape == (1, 6, 6)
    up = nn.functional.interpolate(
        exp.raw.clamp(min=0)[:, None], size=(6, 6), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(exp.maps, normalize_maps(up))


def test_constant_map_is_zero_not_nan() -> None:
    model = HandNet().eval()
    exp = cnnlens.explain(model, torch.zeros(1, 1, 3, 3), "gradcam", target=0, layer="relu")
    assert torch.equal(exp.maps, torch.zeros(1, 3, 3))
    assert torch.isfinite(exp.raw).all()


def test_cam_top_channels_keeps_the_strongest_channel() -> None:
    model = HandNet().eval()
    # mean(A0) = 6.5/9 > mean(A1) = 6/9: keep only channel 0
    exp = cnnlens.explain(model, X, "cam", target=1, layer="relu", top_channels=1)
    torch.testing.assert_close(exp.raw[0], W[1, 0] * A0)


def test_cam_refuses_a_model_without_gap_head() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2)).eval()
    with pytest.raises(cnnlens.errors.ModelError, match="global average pooling"):
        cnnlens.explain(model, X, "cam", layer="1")
    model_conv = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(cnnlens.errors.ModelError, match=r"no nn\.Linear"):
        cnnlens.explain(model_conv, X, "cam", target=0, layer="0")


class _AuxAfterHead(nn.Module):
    """GAP + linear head, plus an auxiliary linear layer registered (and run) after it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
        self.fc = nn.Linear(2, 3)
        self.aux = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.features(x).mean((2, 3)))
        return logits + 0 * self.aux(logits)


def test_cam_finds_the_head_by_its_input_not_by_its_position() -> None:
    torch.manual_seed(0)
    model = _AuxAfterHead().eval()
    exp = cnnlens.explain(model, X, "cam", target=2, layer="features")
    acts = model.features(X).detach()
    expected = torch.einsum("c,bchw->bhw", model.fc.weight[2].detach(), acts)
    torch.testing.assert_close(exp.raw, expected)
    # before the ReLU: the pooling sees ReLU(A), so CAM is built from ReLU(A) (as for
    # torchvision's DenseNet, whose ReLU is functional) and equals CAM after the ReLU
    before = cnnlens.explain(model, X, "cam", target=2, layer="features.0")
    torch.testing.assert_close(before.raw, expected)
    model.features[1] = nn.Sigmoid()  # now neither A nor ReLU(A) is what the head pools
    with pytest.raises(cnnlens.errors.ModelError, match=r"linear layers: 'fc', 'aux'"):
        cnnlens.explain(model, X, "cam", layer="features.0")
