"""Grid pointing game and the mosaic builder: hand-computed values, layout, the scorer."""

from __future__ import annotations

import pytest
import torch

import cnnlens
from cnnlens.errors import InputError
from cnnlens.metrics import cell_masks, grid_pointing_game, make_mosaics
from cnnlens.metrics.registry import MetricInputs, get_metric
from cnnlens.models.seeds import GapCNN


def test_share_of_positive_mass_by_hand():
    m = torch.full((1, 4, 4), -5.0)
    m[0, :2, 2:] = 3.0  # cell 1 (top right): 4 pixels of 3
    m[0, 2:, :2] = 1.0  # cell 2 (bottom left): 4 pixels of 1
    got = grid_pointing_game(m.expand(4, -1, -1), torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(got, torch.tensor([0.0, 0.75, 0.25, 0.0]))


def test_no_positive_mass_is_chance_with_a_warning():
    with pytest.warns(UserWarning, match="no positive value"):
        got = grid_pointing_game(torch.zeros(2, 6, 6), torch.tensor([0, 3]), grid=3)
    torch.testing.assert_close(got, torch.full((2,), 1 / 9))


def test_cell_masks_tile_the_image_for_odd_sizes():
    masks = cell_masks((7, 5), torch.arange(9), grid=3)
    assert torch.equal(masks.sum(0), torch.ones(7, 5, dtype=torch.long))
    assert masks[0, 0, 0] and masks[8, 6, 4] and not masks[0, 6, 4]


def test_mosaics_hold_the_image_in_its_cell_among_other_classes():
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    x = labels.float().view(-1, 1, 1, 1).expand(-1, 3, 8, 8).clone()
    x += torch.arange(8).float().view(-1, 1, 1, 1) / 100  # tell images of a class apart
    mosaics, cells, target, members = make_mosaics(x, labels, first=torch.arange(8), seed=1)
    assert mosaics.shape == (8, 3, 16, 16)
    assert torch.equal(target, labels)
    for i in range(8):
        assert int(members[i, cells[i]]) == i
        assert len(set(labels[members[i]].tolist())) == 4  # pairwise different classes
        for cell in range(4):
            r, c = divmod(cell, 2)
            tile = mosaics[i, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
            assert torch.equal(tile, x[members[i, cell]])
    small, *_ = make_mosaics(x, labels, first=torch.arange(8), seed=1, resize=True)
    assert small.shape == (8, 3, 8, 8)


def test_mosaic_errors():
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(InputError, match="4 different classes"):
        make_mosaics(x, torch.tensor([0, 0, 1, 2]))
    with pytest.raises(InputError, match="grid must be"):
        make_mosaics(x, torch.arange(4), grid=1)
    with pytest.raises(InputError, match="one cell per map"):
        grid_pointing_game(torch.rand(2, 4, 4), torch.tensor([0]))


def test_registry_scorer_explains_the_mosaic_of_each_image():
    torch.manual_seed(0)
    model = GapCNN(5, 3).eval()
    x = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 1])

    def explain(xx, t):
        return cnnlens.explain(model, xx, "gradcam", target=t).maps

    info = get_metric("grid_pointing_game")
    assert info.family == "localization" and info.higher_is_better and info.needs_explain
    inputs = MetricInputs(model, x, torch.rand(6, 16, 16), target=y, explain=explain, seed=2)
    got = info.scorer(inputs)
    mosaics, cells, labels, _ = make_mosaics(x, y, first=torch.arange(6), seed=2)
    torch.testing.assert_close(got, grid_pointing_game(explain(mosaics, labels), cells))
    assert got.shape == (6,) and bool(((got >= 0) & (got <= 1)).all())
