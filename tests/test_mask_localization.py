"""Top-k intersection, attribution localisation, ROC AUC: equal to Quantus, ties by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cnnlens.metrics.mask_localization import (
    attribution_localisation,
    roc_auc,
    top_k_intersection,
)
from cnnlens.metrics.registry import MetricInputs, get_metric

quantus = pytest.importorskip("quantus")


def _data(b=4, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(b, h, w, generator=g) - 0.2  # distinct values, some negative
    masks = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        y0, x0 = torch.randint(0, h - 4, (2,), generator=g).tolist()
        masks[i, y0 : y0 + 3 + i, x0 : x0 + 4] = True
    return maps, masks


def _quantus(metric, maps, masks):
    x = np.zeros((maps.shape[0], 1, *maps.shape[1:]), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(
            metric(
                model=None,
                x_batch=x,
                y_batch=np.zeros(maps.shape[0], dtype=int),
                a_batch=maps.unsqueeze(1).numpy(),
                s_batch=masks.unsqueeze(1).numpy().astype(np.float32),
            ),
            dtype=np.float64,
        )


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_quantus(seed):
    maps, masks = _data(seed=seed)
    kw = {"disable_warnings": True, "normalise": False}
    for concept in (False, True):
        want = _quantus(
            quantus.TopKIntersection(k=15, concept_influence=concept, **kw), maps, masks
        )
        got = top_k_intersection(maps, masks, k=15, concept_influence=concept)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    want = _quantus(quantus.AttributionLocalisation(**kw), maps, masks)
    np.testing.assert_allclose(attribution_localisation(maps, masks).numpy(), want, rtol=1e-5)
    want = _quantus(
        quantus.AttributionLocalisation(positive_attributions=True, abs=False, **kw), maps, masks
    )
    got = attribution_localisation(maps, masks, positive_only=True, absolute=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    want = _quantus(quantus.AUC(**kw), maps, masks)
    np.testing.assert_allclose(roc_auc(maps, masks).numpy(), want, rtol=1e-6)


def test_weighted_localisation_uses_the_mask_share_not_quantus_batch_slice():
    """Quantus weights by |S| / x_batch[2:].size: the batch minus two images, so its score
    of the same image changes with the batch size; cnnlens uses |S| / (H W)."""
    maps, masks = _data(b=4)
    kw = {"disable_warnings": True, "normalise": False, "weighted": True}
    q4 = _quantus(quantus.AttributionLocalisation(**kw), maps, masks)
    q3 = _quantus(quantus.AttributionLocalisation(**kw), maps[:3], masks[:3])
    assert not np.allclose(q4[:3], q3)  # Quantus: same images, different scores
    plain = attribution_localisation(maps, masks)
    share = masks.flatten(1).float().mean(1)
    torch.testing.assert_close(attribution_localisation(maps, masks, weighted=True), plain * share)
    torch.testing.assert_close(
        attribution_localisation(maps[:3], masks[:3], weighted=True), (plain * share)[:3]
    )


def test_ties_and_constant_maps_by_hand():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # 4 of 16 pixels
    flat = torch.zeros(1, 4, 4)
    # a constant map: chance for top-k (4/16), AUC exactly 0.5
    assert top_k_intersection(flat, masks, k=3).item() == pytest.approx(0.25)
    assert roc_auc(flat, masks).item() == pytest.approx(0.5)
    perfect = masks.float()
    assert roc_auc(perfect, masks).item() == 1.0
    assert top_k_intersection(perfect, masks, k=4).item() == 1.0


def test_registry_scorers():
    maps, masks = _data()
    inputs = MetricInputs(None, torch.zeros(4, 3, 12, 10), maps.clamp(min=0), masks=masks)
    for name in ("top_k_intersection", "attribution_localisation", "roc_auc"):
        info = get_metric(name)
        assert info.family == "localization" and info.needs_masks and info.higher_is_better
        got = info.scorer(inputs)
        assert got.shape == (4,) and torch.isfinite(got).all()
