"""Completeness, input invariance, non-sensitivity: equal to Quantus 0.6 on the same inputs
(a seed network and a random-weight torchvision ResNet-18), checked by hand, and the
deliberate differences shown."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.errors import InputError
from cnnlens.metrics.axiomatic import completeness, input_invariance, non_sensitivity
from cnnlens.metrics.registry import MetricInputs, get_metric
from cnnlens.models.seeds import GapCNN
from conftest import assert_unchanged, hook_count, simplecnn, snapshot, torchvision_net

quantus = pytest.importorskip("quantus")


def _quantus(metric, model, x, y, maps=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=None if maps is None else maps.unsqueeze(1).numpy(),
            device="cpu",
            **kwargs,
        )
    return np.asarray(out)


def _seed_net():
    torch.manual_seed(0)
    return GapCNN(5, 1).eval()


MODELS = {"gap-cnn": (_seed_net, 1, 12), "resnet18": (lambda: torchvision_net("resnet18"), 3, 8)}


def _batch(name, b=2, seed=0, size=None):
    make, c, default = MODELS[name]
    size = size or default
    model = make()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, size, size, generator=g)
    maps = torch.rand(b, size, size, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, maps, y


@pytest.mark.parametrize("name", list(MODELS))
def test_completeness_equals_quantus_delta_and_verdict(name):
    model, x, maps, y = _batch(name)
    got = completeness(model, x, maps, y)
    baseline = None
    seen = []  # Quantus' output_func receives its f(x) - f(black): record it

    def record(delta):
        seen.append(delta)
        return delta

    metric = quantus.Completeness(output_func=record, normalise=False, disable_warnings=True)
    verdict = _quantus(metric, model, x, y, maps)
    if x.shape[1] > 1:
        # Quantus' baseline indices come from the (B, 1, H, W) map: on RGB images only the
        # first channel is set to black. cnnlens blackens every channel; given Quantus'
        # half-black baseline, the deltas agree.
        assert not np.allclose(got.delta.numpy(), seen[0], rtol=1e-3)
        half = x.clone()
        half[:, 0] = x.flatten(1).min(1).values.view(-1, 1, 1)
        baseline = half
    got = completeness(model, x, maps, y, baseline=baseline)
    np.testing.assert_allclose(got.delta.numpy(), seen[0], rtol=1e-5, atol=1e-6)
    assert not verdict.any() and not got.complete.any()
    # a map that sums exactly to Quantus' delta (one pixel holds it) is complete in both
    exact = torch.zeros_like(maps)
    exact[:, 0, 0] = torch.as_tensor(seen[0])
    assert _quantus(metric, model, x, y, exact).all()
    again = completeness(model, x, exact, y, baseline=baseline)
    assert again.complete.all() and (again.gap == 0).all()


def test_integrated_gradients_is_complete_within_its_integration_error():
    model, x, _, y = _batch("gap-cnn", seed=1)
    exp = cnnlens.explain(model, x, "integrated_gradients", target=y, baseline=0.0, n_steps=64)
    got = completeness(model, x, exp.raw.sum(1), y, baseline=0.0)
    assert bool((got.relative_error < 0.05).all()), got.relative_error
    saliency = cnnlens.explain(model, x, "saliency", target=y).raw.sum(1)
    assert bool((completeness(model, x, saliency, y, baseline=0.0).relative_error > 0.05).all())


def _raw(method):
    """A Quantus explain_func giving cnnlens' raw attributions (B, C, H, W)."""

    def explain(model, inputs, targets, **kwargs):
        x = torch.as_tensor(np.asarray(inputs))
        exp = cnnlens.explain(model, x, method, target=torch.as_tensor(targets))
        return exp.raw.detach().numpy()

    return explain


def _raw_fn(model, method):
    return lambda x, target: cnnlens.explain(model, x, method, target=target).raw


@pytest.mark.parametrize("method,invariant", [("saliency", True), ("inputxgradient", False)])
def test_input_invariance_equals_quantus_on_a_net_without_padding(method, invariant):
    """SimpleCNN's first conv has a bias and no padding: Quantus' bias change is exact."""
    model = simplecnn()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    before = snapshot(model)
    got = input_invariance(model, x, _raw_fn(model, method), y)
    assert hook_count(model) == 0
    assert_unchanged(model, before)
    a = _raw(method)(model, x.numpy(), y.numpy())
    metric = quantus.InputInvariance(disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a,
            explain_func=_raw(method),
            device="cpu",
        )
    assert got.tolist() == list(want) == [invariant] * 2


def test_input_invariance_where_quantus_cannot_shift_the_first_layer():
    """ResNet-18's first conv has no bias (Quantus fails); GapCNN's has padding 1, so
    Quantus' bias change leaves the borders shifted and calls saliency not invariant."""
    model, x, _, y = _batch("resnet18")
    a = _raw("saliency")(model, x.numpy(), y.numpy())
    metric = quantus.InputInvariance(disable_warnings=True)
    with pytest.raises((TypeError, AttributeError)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a,
            explain_func=_raw("saliency"),
            device="cpu",
        )
    assert input_invariance(model, x, _raw_fn(model, "saliency"), y).all()
    assert not input_invariance(model, x, _raw_fn(model, "inputxgradient"), y).any()
    # a padded first conv with a bias: the shift is absorbed only in the interior there
    torch.manual_seed(3)
    padded = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)
    ).eval()
    y = padded(x).argmax(1)
    a = _raw("saliency")(padded, x.numpy(), y.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = metric(
            model=padded,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a,
            explain_func=_raw("saliency"),
            device="cpu",
        )
    assert not any(theirs)
    assert input_invariance(padded, x, _raw_fn(padded, "saliency"), y).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_non_sensitivity_equals_quantus(name):
    model, x, maps, y = _batch(name, seed=4, size=4 if name == "resnet18" else 8)
    maps[:, ::2] = 0.0  # every other row has no attribution
    got = non_sensitivity(model, x, maps, y, batch_size=128)
    metric = quantus.NonSensitivity(normalise=False, disable_warnings=True)
    want = _quantus(metric, model, x, y, maps)
    np.testing.assert_array_equal(got.numpy(), want.astype(np.float64))
    assert bool((got > 0).all())


class _LeftHalf(nn.Module):
    """A linear score of the left half of the image only (the right half is ignored)."""

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].flatten(1).sum(1)
        return torch.stack([left, -left], 1)


def test_non_sensitivity_by_hand():
    model = _LeftHalf()
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(5)) + 0.5
    y = torch.zeros(2, dtype=torch.long)
    exact = torch.zeros(2, 6, 6)
    exact[..., :3] = 1.0
    got = non_sensitivity(model, x, exact, y, activation=None)
    # disagreements: only a left-half value already at the image's minimum moves nothing
    at_min = (x[..., :3] == x.flatten(1).min(1).values.view(-1, 1, 1, 1)).flatten(1).sum(1)
    assert got.tolist() == at_min.float().tolist()
    uniform = non_sensitivity(model, x, torch.ones(2, 6, 6), y, activation=None)
    assert uniform.tolist() == (36 + at_min).float().tolist()  # right half: 2 x 18 values
    patches = non_sensitivity(model, x, torch.ones(2, 6, 6), y, patch_size=3, activation=None)
    assert patches.tolist() == [2.0, 2.0]  # two of four 3x3 patches lie on the right
    steps = non_sensitivity(model, x, torch.ones(2, 6, 6), y, features_in_step=3, activation=None)
    assert steps.tolist() == [12.0, 12.0]  # half rows: 12 of the 24 groups lie on the right
    # Quantus compares per-step flags with per-value ones: any step > 1 is a shape error
    metric = quantus.NonSensitivity(features_in_step=3, normalise=False, disable_warnings=True)
    with pytest.raises(ValueError):
        _quantus(metric, model.eval(), x, y, exact, softmax=False)


def test_registry_scorers():
    model, x, maps, y = _batch("gap-cnn", b=3, seed=6)
    explain = lambda xs, t: cnnlens.explain(model, xs, "saliency", target=t).maps  # noqa: E731
    maps = explain(x, y)
    inputs = MetricInputs(model, x, maps, target=y, explain=explain)
    for name in ("completeness", "input_invariance", "non_sensitivity"):
        info = get_metric(name)
        assert info.family == "axiomatic"
        got = info.scorer(inputs)
        assert got.shape == (3,) and bool(torch.isfinite(got).all()), name
    assert get_metric("input_invariance").scorer(inputs).tolist() == [1.0, 1.0, 1.0]
    assert get_metric("input_invariance").needs_explain
    with pytest.raises(InputError, match="patch_size"):
        non_sensitivity(model, x, maps, patch_size=0)
