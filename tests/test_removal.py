"""Faithfulness correlation: equal to Quantus on the same random subsets; checked by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cnnlens.errors import InputError
from cnnlens.metrics.registry import MetricInputs, get_metric
from cnnlens.metrics.removal import (
    faithfulness_correlation,
    monotonicity_correlation,
    pixel_flipping,
    random_subsets,
    region_perturbation,
    selectivity,
)
from cnnlens.models.seeds import GapCNN
from conftest import ReluNet

quantus = pytest.importorskip("quantus")


def _models():
    torch.manual_seed(0)
    gap = GapCNN(5, 3).eval()
    relu = ReluNet(classes=5).eval()
    relu(torch.zeros(1, 3, 16, 16))
    return [gap, relu]


@pytest.mark.parametrize("which", [0, 1], ids=["gap-cnn", "relu-net"])
def test_equal_to_quantus_on_the_same_subsets(which, monkeypatch):
    model = _models()[which]
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 16, 16, generator=g)
    maps = torch.rand(3, 16, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    runs, size = 6, 20
    subsets = random_subsets(runs, 3, 3 * 16 * 16, size, seed=2)
    got = faithfulness_correlation(model, x, maps, y, subsets=subsets, batch_size=5)
    # Quantus draws each (run, image) subset with np.random.choice, run-major: replay ours
    replay = iter(subsets.reshape(-1, size).numpy())
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: next(replay))
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=runs, subset_size=size, disable_warnings=True, return_aggregate=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.unsqueeze(1).numpy(),
            device="cpu",
        )
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_a_linear_model_with_its_exact_map_correlates_perfectly():
    """f(x) = sum(w * x), w shared by the channels, subsets filled with the minimum b: the
    drop is sum_S w (x - b), and with equal channels the map w (x - b) summed over S is
    that drop, so the correlation is 1."""
    torch.manual_seed(3)
    w = torch.randn(1, 1, 8, 8).expand(-1, 2, -1, -1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(128, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.cat([w.flatten(), -w.flatten()]).view(2, 128))
    x = torch.rand(2, 1, 8, 8).expand(-1, 2, -1, -1).contiguous()
    fill = x.flatten(1).min(1).values.view(-1, 1, 1)
    maps = w[:, 0] * (x[:, 0] - fill)
    got = faithfulness_correlation(model, x, maps, 0, n_runs=20, subset_size=10)
    torch.testing.assert_close(got, torch.ones(2), rtol=0, atol=1e-5)


def test_registry_scorer_and_errors():
    model = _models()[0]
    x = torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 16, 16)
    info = get_metric("faithfulness_correlation")
    assert info.family == "faithfulness" and info.higher_is_better
    got = info.scorer(MetricInputs(model, x, maps, target=torch.tensor([0, 1]), seed=4))
    assert got.shape == (2,) and bool((got.abs() <= 1).all())
    mono = get_metric("monotonicity_correlation")
    got = mono.scorer(MetricInputs(model, x, maps, target=torch.tensor([0, 1]), seed=4))
    assert got.shape == (2,) and bool((got.abs() <= 1).all())
    with pytest.raises(InputError, match="subset_size"):
        faithfulness_correlation(model, x, maps, subset_size=10_000)
    with pytest.raises(InputError, match="subsets must have shape"):
        faithfulness_correlation(model, x, maps, subsets=torch.zeros(3, 5, 4))


@pytest.mark.parametrize("channels,size,step", [(3, 12, 48), (1, 16, 16)])
def test_monotonicity_correlation_equals_quantus_on_the_same_fills(
    channels, size, step, monkeypatch
):
    torch.manual_seed(0)
    model = GapCNN(5, channels).eval()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, channels, size, size, generator=g)
    maps = torch.rand(2, size, size, generator=g) - 0.3  # signed: ranked by |map|
    with torch.no_grad():
        y = model(x).argmax(1)
    samples, steps = 3, channels * size * size // step
    fills = torch.rand(steps, samples, 2, generator=g, dtype=torch.float64)
    got = monotonicity_correlation(
        model, x, maps, y, n_samples=samples, features_in_step=step, fills=fills
    )
    # Quantus draws one uniform fill per image per perturbation (step-major): replay ours
    replay = iter(fills.reshape(-1, 2).numpy())
    monkeypatch.setattr(np.random, "uniform", lambda *a, **k: next(replay))
    metric = quantus.MonotonicityCorrelation(
        nr_samples=samples, features_in_step=step, disable_warnings=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.unsqueeze(1).numpy(),
            device="cpu",
        )
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which,patch", [(0, 4), (1, 8)], ids=["gap-cnn-4", "relu-net-8"])
def test_selectivity_equals_quantus(which, patch):
    model = _models()[which]
    g = torch.Generator().manual_seed(6)
    x = torch.rand(3, 3, 16, 16, generator=g)
    maps = torch.rand(3, 16, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    got = selectivity(model, x, maps, y, patch_size=patch, batch_size=10)
    metric = quantus.Selectivity(patch_size=patch, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curves = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.unsqueeze(1).numpy(),
            device="cpu",
        )
    # Quantus' own get_auc_score calls np.trapz, gone in numpy 2: integrate its curves here
    want = [np.trapezoid(np.asarray(c, dtype=np.float64)) for c in curves]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    scorer = get_metric("selectivity").scorer
    assert scorer(MetricInputs(model, x, maps, target=y)).shape == (3,)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_equals_quantus(order):
    model = _models()[0]
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 3, 16, 16, generator=g)
    maps = torch.rand(3, 16, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    got = region_perturbation(model, x, maps, y, patch_size=4, order=order, regions=10)
    metric = quantus.RegionPerturbation(
        patch_size=4, order=order, regions_evaluation=10, disable_warnings=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.unsqueeze(1).numpy(),
            device="cpu",
        )
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-5, atol=1e-7)
    aopc = get_metric("region_perturbation").scorer(MetricInputs(model, x, maps, target=y))
    assert aopc.shape == (3,)


def test_pixel_flipping_by_hand_and_equal_to_quantus():
    model = _models()[0]
    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 3, 12, 12, generator=g)
    maps = torch.rand(2, 12, 12, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    step = 3 * 16  # 16 whole pixels per step (Quantus needs H*W % step == 0)
    got = pixel_flipping(model, x, maps, y, features_in_step=step, batch_size=5)
    assert got.shape == (2, 9)
    # by hand: one image at a time, the 16 k highest-map pixels set to the image's minimum
    for i in range(2):
        ranked = maps[i].flatten().argsort(descending=True, stable=True)
        for k in range(9):
            xi = x[i].clone().view(3, -1)
            xi[:, ranked[: 16 * (k + 1)]] = x[i].min()
            with torch.no_grad():
                p = model(xi.view(1, 3, 12, 12)).softmax(1)[0, y[i]]
            torch.testing.assert_close(got[i, k], p, rtol=1e-5, atol=1e-6)
    metric = quantus.PixelFlipping(features_in_step=step, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curves = np.asarray(
            metric(
                model=model,
                x_batch=x.numpy(),
                y_batch=y.numpy(),
                a_batch=maps.unsqueeze(1).numpy(),
                device="cpu",
            )
        )
    np.testing.assert_allclose(got.numpy(), curves, rtol=1e-5, atol=1e-7)
    scorer = get_metric("pixel_flipping").scorer
    mean = scorer(MetricInputs(model, x, maps, target=y), features_in_step=step)
    torch.testing.assert_close(mean, got.mean(1))
