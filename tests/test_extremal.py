"""Extremal perturbations: hand-written references (a model that looks at one quadrant)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.methods.extremal import SmoothMask
from conftest import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Quadrant(nn.Module):
    """Class 0 is the mean of the top-left quadrant, class 1 its negative, class 2 the mean
    of the whole image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x[:, :, :8, :8].mean((1, 2, 3))
        return torch.stack([q, -q, x.mean((1, 2, 3))], 1)


def test_the_mask_of_the_quadrant_area_is_the_quadrant() -> None:
    """Fading to 0 a positive image: the quarter of the image that keeps class 0 is its
    top-left quadrant, exactly a quarter of the pixels."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    exp = cnnlens.explain(
        _Quadrant(),
        x,
        "extremal",
        target=0,
        perturbation="fade",
        areas=(0.25,),
        n_iter=150,
        step=2,
        smoothness=1.0,  # a kernel flat within half a pixel: the quadrant's edge stays sharp
    )
    masks = exp.extras["masks"]
    assert masks.shape == (2, 1, 16, 16) and exp.extras["areas"] == [0.25]
    for m in masks[:, 0]:
        assert float(m[:8, :8].mean()) > 0.9
        assert float(m[8:].mean()) < 0.05 and float(m[:, 8:].mean()) < 0.05
        assert abs(float(m.mean()) - 0.25) < 0.02
    torch.testing.assert_close(exp.maps, masks[:, 0] / masks[:, 0].amax((1, 2), keepdim=True))


def test_areas_are_kept_and_the_model_is_left_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    before = snapshot(model)
    exp = cnnlens.explain(model, x, "extremal", topk=2, areas=(0.1, 0.3), n_iter=120)
    assert_unchanged(model, before)
    masks = exp.extras["masks"]
    assert masks.shape == (2, 2, 2, 24, 24)
    area = masks.flatten(3).mean(3)
    torch.testing.assert_close(area, torch.tensor([0.1, 0.3]).expand_as(area), atol=0.03, rtol=0)
    # the ranked-vector constraint holds, not only the mean: the sorted mask is the template
    # (a fraction 1 - a of zeros, then ones) up to the smooth edges
    for j, a in enumerate((0.1, 0.3)):
        ranked = masks[:, :, j].flatten(2).sort(dim=2).values
        template = (torch.arange(24 * 24) >= (1 - a) * 24 * 24).float()
        assert float((ranked - template).pow(2).mean()) < 0.04  # a flat 0.5 mask: 0.25
        share = (masks[:, :, j] > 0.5).flatten(2).float().mean(2)
        torch.testing.assert_close(share, torch.full_like(share, a), atol=0.05, rtol=0)


def test_smooth_mask_is_the_smooth_max_convolution_of_the_paper() -> None:
    """Hand reference of Fong et al.'s smooth max-convolution: ones give ones; one parameter
    alone gives, at each pixel u, smax over its neighbourhood of k(u - c) * 1 and zeros."""
    smooth = SmoothMask((20, 20), step=4, sigma=6.0)
    assert smooth.grid == (5, 5) and smooth.radius == 3
    full = smooth(torch.ones(1, 1, 5, 5))
    assert float(full.min()) > 0.98 and float(full.max()) <= 1.0 + 1e-6  # smax, not max
    param = torch.zeros(1, 1, 5, 5)
    param[0, 0, 2, 2] = 1.0
    got = smooth(param)[0, 0]
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    dist = ((ys - 9.5) ** 2 + (xs - 9.5) ** 2).sqrt()  # the centre of cell (2, 2)
    g = torch.exp(-2 * (dist / 6.0 - 0.5).clamp(min=0) ** 2)
    # neighbourhood of 7 x 7 cells, all but one of them zero; T = 1/20
    want = g * torch.exp(20 * g) / (torch.exp(20 * g) + 48)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert float(got[9, 9]) > 0.99 and float(got[0, 0]) < 0.01  # a blob of radius ~ sigma
