"""Extremal perturbations: hand-written references (a model that looks at one quadrant)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlens
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
