"""Issue 12: vision transformers, channels-last CNNs and video CNNs.

Random-weight torchvision models at small inputs (a small VisionTransformer configuration;
the 224-pixel ones are marked slow), against pytorch-grad-cam with its documented
``reshape_transform`` (Pearson >= 0.99), Score-CAM and a video Grad-CAM computed by hand.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import cnnlens
from conftest import assert_unchanged, hook_count, pearson, snapshot

PEERS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}


def tokens_to_maps(h: int, w: int):
    """pytorch-grad-cam's documented ViT reshape_transform: drop the class token."""

    def transform(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return transform


def nhwc_to_maps(t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented Swin reshape_transform (channels last to first)."""
    return t.permute(0, 3, 1, 2)


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=5,
    )
    nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision zero-initializes the head
    return vit.eval()


def score_cam_by_hand(model: nn.Module, x: torch.Tensor, layer: nn.Module, cls: int):
    """Score-CAM (Wang et al., 2020) of one image at a ViT block, a loop over channels."""
    got = {}
    handle = layer.register_forward_hook(lambda m, i, o: got.setdefault("a", o.detach()))
    with torch.no_grad():
        model(x)
        handle.remove()
        a = tokens_to_maps(4, 4)(got["a"])[0]
        zero = model(torch.zeros_like(x))[0, cls]
        scores = []
        for k in range(a.shape[0]):
            up = nn.functional.interpolate(a[k][None, None], size=x.shape[-2:], mode="bilinear")
            mask = (up - up.min()) / (up.max() - up.min())
            scores.append(model(x * mask[0])[0, cls] - zero)
        w = torch.softmax(torch.stack(scores), 0)
    return (w[:, None, None] * a).sum(0)


def agree(ours: torch.Tensor, peer_cls, model, layer, x, targets, transform=None) -> float:
    peer = peer_cls(model, [layer], reshape_transform=transform)
    ref = peer(x, targets=[ClassifierOutputTarget(t) for t in targets])
    return pearson(ours, torch.as_tensor(ref))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_vit_against_pytorch_grad_cam(method: str) -> None:
    vit = small_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = snapshot(vit)
    exp = cnnlens.explain(vit, x, method, target=[0, 1])
    assert exp.layer == "encoder.layers.encoder_layer_1.ln_1"  # a block's first LayerNorm
    assert_unchanged(vit, before)  # checked before the peer, which leaves .grad set
    assert hook_count(vit) == 0
    layer = vit.encoder.layers[-1].ln_1
    assert agree(exp.maps, PEERS[method], vit, layer, x, [0, 1], tokens_to_maps(4, 4)) >= 0.99


def test_vit_score_cam_pixel_methods_and_the_final_norm() -> None:
    vit = small_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layer = "encoder.layers.encoder_layer_1.ln_1"
    exp = cnnlens.explain(vit, x, "scorecam", target=[0, 1], layer=layer)
    for i in range(2):  # Score-CAM from the paper, on the tokens read as a 4x4 grid by hand
        ref = score_cam_by_hand(vit, x[i : i + 1], vit.encoder.layers[-1].ln_1, i)
        torch.testing.assert_close(exp.raw[i], ref, atol=1e-5, rtol=1e-4)
    for method, opts in [("saliency", {}), ("integrated_gradients", {"n_steps": 4})]:
        assert cnnlens.explain(vit, x, method, **opts).maps.shape == (2, 32, 32)
    # the final norm feeds only the class token: a warning, never a silent empty map
    with pytest.warns(RuntimeWarning, match="does not depend on layer 'encoder.ln'"):
        cnnlens.explain(vit, x, "gradcam", layer="encoder.ln")


def test_swin_channels_last_layers_against_pytorch_grad_cam() -> None:
    torch.manual_seed(0)
    swin = torchvision.models.swin_t().eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = int(swin(x).argmax())
    for name in ["features.7", "norm"]:
        exp = cnnlens.explain(swin, x, "gradcam", layer=name, target=top)
        assert exp.maps.shape == (1, 64, 64)
        layer = swin.get_submodule(name)
        assert agree(exp.maps, GradCAM, swin, layer, x, [top], nhwc_to_maps) >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext_tiny", "maxvit_t", "vit_b_16"])
def test_torchvision_transformers_at_224(name: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    if name == "vit_b_16":
        nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = int(model(x).argmax())
    layer, transform = {
        "convnext_tiny": ("features.7", None),
        "maxvit_t": ("blocks.3", None),
        "vit_b_16": ("encoder.layers.encoder_layer_11.ln_1", tokens_to_maps(14, 14)),
    }[name]
    exp = cnnlens.explain(model, x, "gradcam", layer=layer, target=top)
    module = model.get_submodule(layer)
    assert agree(exp.maps, GradCAM, model, module, x, [top], transform) >= 0.99


# ---------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------


class TinyVideoNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv3d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2))
        self.last = nn.Conv3d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.last(self.conv(x))).mean((2, 3, 4)))


def test_video_gradcam_by_hand_and_every_gradient_method() -> None:
    torch.manual_seed(0)
    model = TinyVideoNet().eval()
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    before = snapshot(model)
    exp = cnnlens.explain(model, x, "gradcam", target=[1, 2])
    assert exp.layer == "last" and exp.maps.shape == (2, 4, 16, 16)
    acts = model.last(model.conv(x)).detach().requires_grad_(True)
    score = model.fc(torch.relu(acts).mean((2, 3, 4)))[[0, 1], [1, 2]].sum()
    (g,) = torch.autograd.grad(score, acts)
    ref = (g.mean((2, 3, 4), keepdim=True) * acts).sum(1).detach()  # (B, t, h, w)
    torch.testing.assert_close(exp.raw, ref)
    topk = cnnlens.explain(model, x, "layercam", topk=2)
    assert topk.maps.shape == (2, 2, 4, 16, 16)
    for method in ["gradcam++", "xgradcam", "hirescam", "eigencam", "scorecam", "ablationcam"]:
        assert cnnlens.explain(model, x, method).maps.shape == (2, 4, 16, 16)
    for method in ["saliency", "inputxgradient", "integrated_gradients", "smoothgrad"]:
        opts = {"n_steps": 4} if method == "integrated_gradients" else {}
        opts = {"n_samples": 2} if method == "smoothgrad" else opts
        got = cnnlens.explain(model, x, method, target=1, **opts)
        assert got.maps.shape == (2, 4, 16, 16) and got.raw.shape == (2, 3, 4, 16, 16)
    assert_unchanged(model, before)


def test_r3d_18_two_methods() -> None:
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(num_classes=5).eval()
    x = torch.randn(1, 3, 8, 56, 56, generator=torch.Generator().manual_seed(1))
    exp = cnnlens.explain(model, x, "gradcam", layer="layer4")
    assert exp.maps.shape == (1, 8, 56, 56) and float(exp.maps.amax()) == 1.0
    sal = cnnlens.explain(model, x, "saliency")
    assert sal.maps.shape == (1, 8, 56, 56)
    assert int(sal.targets) == int(exp.targets)


def test_video_overlay_of_a_few_frames() -> None:
    from cnnlens import viz

    torch.manual_seed(0)
    model = TinyVideoNet().eval()
    x = torch.rand(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    exp = cnnlens.explain(model, x, "gradcam")
    fig = viz.video_frames(x[0], exp.maps[0], frames=3)
    assert [a.get_title() for a in fig.axes if a.get_title()] == ["frame 0", "frame 2", "frame 3"]
    with pytest.raises(cnnlens.errors.InputError, match=r"\(C, T, H, W\)"):
        viz.video_frames(x, exp.maps[0])
