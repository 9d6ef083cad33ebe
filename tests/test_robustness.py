"""Robustness metrics: equal to Quantus on the same perturbations, seeded, batched, checked."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.errors import InputError
from cnnlens.metrics import robustness as R
from cnnlens.metrics.registry import MetricInputs, get_metric
from cnnlens.models.seeds import GapCNN
from conftest import ReluNet

quantus = pytest.importorskip("quantus")

S = 4  # draws per test: enough to exercise the max/mean over draws


def _gap() -> nn.Module:
    torch.manual_seed(0)
    return GapCNN(5, 3).eval()


def _relu() -> nn.Module:
    torch.manual_seed(1)
    model = ReluNet(classes=5).eval()
    model(torch.zeros(1, 3, 16, 16))  # materialize the lazy linear layer
    return model


def _explainer(model: nn.Module, method: str):
    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cnnlens.explain(model, x, method, target=target).maps

    return explain


def _quantus_explain(explain):
    def fn(model, inputs, targets, **_):
        maps = explain(torch.as_tensor(inputs), torch.as_tensor(targets))
        return maps.unsqueeze(1).numpy()

    return fn


def _replay(noise: torch.Tensor):
    """A Quantus perturb_func that adds our draws, one per call, in order."""
    calls = {"i": 0}

    def perturb(arr, indices, **_):
        out = (arr + noise[calls["i"]].reshape(arr.shape[0], -1).numpy()).astype(arr.dtype)
        calls["i"] += 1
        return out

    return perturb


def _batch(model: nn.Module, size: int = 16):
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


CASES = [
    # (ours, Quantus class, noise kind, low, quantus kwargs)
    (R.max_sensitivity, "MaxSensitivity", "uniform", -0.2, {}),
    (R.avg_sensitivity, "AvgSensitivity", "uniform", -0.2, {}),
    (R.local_lipschitz_estimate, "LocalLipschitzEstimate", "gaussian", 0.0, {}),
    (R.relative_input_stability, "RelativeInputStability", "uniform", 0.02, {}),
    (R.relative_output_stability, "RelativeOutputStability", "uniform", 0.02, {}),
]


@pytest.mark.parametrize("make_model,method", [(_gap, "saliency"), (_relu, "gradcam")])
@pytest.mark.parametrize("ours,qname,kind,low,qkw", CASES, ids=[c[1] for c in CASES])
def test_equal_to_quantus_on_the_same_draws(make_model, method, ours, qname, kind, low, qkw):
    model = make_model()
    x, y = _batch(model)
    explain = _explainer(model, method)
    maps = explain(x, y)
    noise = R.draw_noise(x, S, kind=kind, low=low, high=0.2, std=0.1, seed=3)
    got = ours(model, x, maps, explain, y, noise=noise, batch_size=7)
    metric = getattr(quantus, qname)(
        nr_samples=S, perturb_func=_replay(noise), disable_warnings=True, **qkw
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.unsqueeze(1).numpy(),
            explain_func=_quantus_explain(explain),
            device="cpu",
        )
    np.testing.assert_allclose(got.numpy(), np.asarray(want, dtype=np.float64), rtol=2e-4)


def test_relative_representation_stability_equals_quantus():
    model = _gap()
    x, y = _batch(model)
    explain = _explainer(model, "saliency")
    maps = explain(x, y)
    noise = R.draw_noise(x, S, low=0.02, high=0.2, seed=4)
    layer = "features.block4.relu"  # Quantus hooks leaf modules only (no nn.Sequential)
    got = R.relative_representation_stability(model, x, maps, explain, y, layer=layer, noise=noise)
    metric = quantus.RelativeRepresentationStability(
        nr_samples=S, perturb_func=_replay(noise), layer_names=[layer], disable_warnings=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.unsqueeze(1).numpy(),
            explain_func=_quantus_explain(explain),
            device="cpu",
        )
    np.testing.assert_allclose(got.numpy(), np.asarray(want, dtype=np.float64), rtol=2e-4)


def test_lipschitz_by_hand_on_a_linear_explainer():
    """For Phi(x) = 2 * x (summed over channels) the ratio is exactly 2 ||sum_c d|| / ||d||."""
    model = _gap()
    x, y = _batch(model)

    def explain(xx, _t):
        return 2 * xx.sum(1)

    noise = R.draw_noise(x, 3, kind="gaussian", std=0.1, seed=0)
    got = R.local_lipschitz_estimate(model, x, explain(x, y), explain, y, noise=noise)
    ratio = (2 * noise.sum(2).flatten(2).norm(dim=2)) / noise.flatten(2).norm(dim=2)
    torch.testing.assert_close(got, ratio.amax(0).float(), rtol=1e-5, atol=1e-6)


def test_seeded_and_independent_of_the_batch_size():
    model = _gap()
    x, y = _batch(model)
    maps = cnnlens.explain(model, x, "saliency", target=y).maps
    a = R.max_sensitivity(model, x, maps, "saliency", y, n_samples=5, seed=7, batch_size=3)
    b = R.max_sensitivity(model, x, maps, "saliency", y, n_samples=5, seed=7, batch_size=15)
    c = R.max_sensitivity(model, x, maps, "saliency", y, n_samples=5, seed=8, batch_size=15)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_nan_when_the_prediction_changes():
    """Huge noise flips predictions: those images become NaN, the others stay finite."""
    model = _gap()
    x, y = _batch(model)
    maps = cnnlens.explain(model, x, "saliency", target=y).maps
    noise = R.draw_noise(x, 3, low=-50.0, high=50.0, seed=0)
    got = R.max_sensitivity(
        model, x, maps, "saliency", y, noise=noise, nan_when_prediction_changes=True
    )
    with torch.no_grad():
        flipped = torch.stack([model(x + n).argmax(1) != y for n in noise]).any(0)
    assert flipped.any()
    assert torch.equal(got.isnan(), flipped)


def test_registry_scorer_runs_through_metric_inputs():
    model = _gap()
    x, y = _batch(model)
    explain = _explainer(model, "saliency")
    inputs = MetricInputs(model, x, explain(x, y), target=y, explain=explain, seed=5)
    info = get_metric("avg_sensitivity")
    assert info.family == "robustness" and info.needs_explain and not info.higher_is_better
    got = info.scorer(inputs, n_samples=2)
    want = R.avg_sensitivity(model, x, inputs.maps, explain, y, n_samples=2, seed=5)
    torch.testing.assert_close(got, want)
    rrs = get_metric("relative_representation_stability").scorer(inputs, n_samples=2)
    want = R.relative_representation_stability(
        model, x, inputs.maps, explain, y, layer="features", n_samples=2, seed=5
    )
    torch.testing.assert_close(rrs, want)  # the automatic layer: the last spatial one


def test_errors_and_zero_maps():
    model = _gap()
    x, y = _batch(model)
    maps = torch.zeros(3, 16, 16)
    with pytest.raises(InputError, match="noise must have shape"):
        R.max_sensitivity(model, x, maps, "saliency", y, noise=torch.zeros(2, 3, 3, 8, 8))
    with pytest.raises(InputError, match="n_samples"):
        R.max_sensitivity(model, x, maps, "saliency", y, n_samples=0)
    with pytest.raises(InputError, match="explain must be"):
        R.max_sensitivity(model, x, maps, 3, y, n_samples=1)
    with pytest.warns(UserWarning, match="all-zero map"):
        got = R.max_sensitivity(model, x, maps, "saliency", y, n_samples=1)
    assert got.isnan().all()
