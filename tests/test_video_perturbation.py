"""Occlusion and RISE on video input (B, C, T, H, W) (issue 12, item 3): occlusion windows
with a temporal extent against captum's Occlusion over (C, t, h, w) windows, RISE's 3-D masks
against its formula; and r3d_18 at 8x112x112 (slow)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

import cnnlens
from cnnlens.errors import InputError
from cnnlens.methods import RISE


class TinyVideoNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv3d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2))
        self.last = nn.Conv3d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.last(self.conv(x))).mean((2, 3, 4)))


@pytest.fixture(scope="module")
def clip() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyVideoNet().eval(), torch.randn(
        2, 3, 6, 12, 12, generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize(
    ("window", "stride"), [((2, 4, 4), (1, 4, 4)), ((3, 6, 4), (2, 3, 4)), ((6, 5, 5), (6, 3, 3))]
)
def test_video_occlusion_matches_captum(clip, window, stride) -> None:
    model, x = clip
    exp = cnnlens.explain(
        model, x, "occlusion", target=[1, 3], window=window, stride=stride, baseline=0.25
    )
    assert exp.maps.shape == (2, 6, 12, 12) and exp.raw.shape == (2, 3, 6, 12, 12)
    ref = CaptumOcclusion(model).attribute(
        x,
        sliding_window_shapes=(3, *window),
        strides=(3, *stride),
        baselines=0.25,
        target=[1, 3],
    )
    torch.testing.assert_close(exp.raw, ref, rtol=1e-4, atol=1e-6)


def test_a_spatial_window_on_a_video_spans_every_frame(clip) -> None:
    model, x = clip
    flat = cnnlens.explain(model, x, "occlusion", target=2, window=4, stride=4)
    whole = cnnlens.explain(model, x, "occlusion", target=2, window=(6, 4, 4), stride=(1, 4, 4))
    torch.testing.assert_close(flat.raw, whole.raw)
    torch.testing.assert_close(flat.maps, flat.maps[:, :1].expand_as(flat.maps))  # where only
    timed = cnnlens.explain(model, x, "occlusion", target=2, window=(2, 4, 4), stride=(2, 4, 4))
    assert not torch.allclose(timed.maps, timed.maps[:, :1].expand_as(timed.maps))  # and when


def test_video_occlusion_errors(clip) -> None:
    model, x = clip
    with pytest.raises(InputError, match=r"window \(8, 4, 4\) does not fit"):
        cnnlens.explain(model, x, "occlusion", window=(8, 4, 4))
    images = torch.randn(1, 3, 16, 16)
    with pytest.raises(InputError, match=r"\(t, h, w\) box for video"):
        cnnlens.explain(nn.Conv2d(3, 2, 16).eval(), images, "occlusion", window=(2, 4, 4))
    with pytest.raises(InputError, match="window"):
        cnnlens.explain(model, x, "occlusion", window=(1, 2, 3, 4))


def test_video_rise_is_the_weighted_mean_of_its_3d_masks(clip) -> None:
    model, x = clip
    method = RISE(model, n_masks=40, cell_size=4, cell_frames=2, seed=5, batch_size=16)
    exp = method(x, target=[1, 3])
    assert exp.maps.shape == (2, 6, 12, 12) and exp.raw.shape == (2, 3, 6, 12, 12)
    masks = torch.cat(list(method.masks((6, 12, 12))))  # (N, T, H, W), the same every call
    assert masks.shape == (40, 6, 12, 12)
    assert not torch.allclose(masks, masks[:, :1].expand_as(masks))  # they vary in time
    # S = sum_i f_c(x * M_i) M_i / (N p), f_c the softmax probability of class c
    with torch.no_grad():
        ref = []
        for i, t in enumerate([1, 3]):
            p = model(x[i] * masks[:, None]).softmax(-1)[:, t]  # (N,)
            ref.append((p[:, None, None, None] * masks).sum(0) / (40 * 0.5))
    torch.testing.assert_close(exp.raw[:, 0], torch.stack(ref), rtol=1e-4, atol=1e-6)
    # the same batched or clip by clip, and with another batch size
    one = RISE(model, n_masks=40, cell_size=4, cell_frames=2, seed=5, batch_size=7)(x[1:], 3)
    torch.testing.assert_close(one.maps[0], exp.maps[1], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_r3d_18_at_8x112x112_two_methods() -> None:
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(num_classes=5).eval()
    x = torch.randn(1, 3, 8, 112, 112, generator=torch.Generator().manual_seed(1))
    exp = cnnlens.explain(model, x, "gradcam", layer="layer4", target=2)
    assert exp.maps.shape == (1, 8, 112, 112) and exp.raw.shape == (1, 1, 7, 7)
    # by hand: the layer's (B, C, t, h, w) output weighted by its mean gradient
    got = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: got.setdefault("a", o))
    try:
        score = model(x)[0, 2]
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(score, got["a"])
    ref = (g.mean((2, 3, 4), keepdim=True) * got["a"]).sum(1).detach()
    torch.testing.assert_close(exp.raw, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    sal = cnnlens.explain(model, x, "saliency", target=2)
    assert sal.maps.shape == (1, 8, 112, 112) and sal.raw.shape == (1, 3, 8, 112, 112)
    leaf = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(model(leaf)[0, 2], leaf)
    torch.testing.assert_close(sal.raw, gx, rtol=1e-4, atol=1e-6 * float(gx.abs().max()))
