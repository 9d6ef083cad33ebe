"""Randomization metrics (eMPRT, sMPRT, random logit): equal to Quantus 0.6 on the same
inputs, seeds and draws, on a seed network and a random-weight torchvision ResNet."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import cnnlens
from cnnlens.errors import InputError, ModelError
from cnnlens.metrics import randomization as R
from cnnlens.metrics import score_methods
from cnnlens.metrics.registry import MetricInputs, get_metric
from cnnlens.models.seeds import GapCNN
from conftest import assert_unchanged, snapshot, torchvision_net

quantus = pytest.importorskip("quantus")


def _gap() -> nn.Module:
    torch.manual_seed(0)
    return GapCNN(5, 3).eval()


ARCHS = {"gap": (_gap, 5), "resnet18": (lambda: torchvision_net("resnet18"), 10)}


def _setup(arch: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, int]:
    make, classes = ARCHS[arch]
    model = make()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, classes


def _saliency(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Signed gradient summed over channels (a deterministic explain_fn)."""
    return cnnlens.explain(model, x, "saliency", target=t).raw.sum(1)


def _q_explain(model, inputs, targets, **_):
    maps = _saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets))
    return maps.detach().unsqueeze(1).numpy()


def _quantus(metric, model, x, y, a=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a,
            explain_func=_q_explain,
            device="cpu",
        )
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_efficient_mprt_equals_quantus(arch: str) -> None:
    model, x, y, _ = _setup(arch)
    before = snapshot(model)
    rng = torch.get_rng_state()
    ours = R.efficient_mprt(model, x, _saliency, target=y, seed=42)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is forked, not used
    assert_unchanged(model, before)
    a = _saliency(model, x, y).detach().unsqueeze(1).numpy()
    ref = _quantus(quantus.EfficientMPRT(disable_warnings=True), model, x, y, a)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_smooth_mprt_equals_quantus_with_the_same_noise(arch: str, monkeypatch) -> None:
    model, x, y, _ = _setup(arch)
    n = 3
    noise = torch.randn(n - 1, *x.shape, generator=torch.Generator().manual_seed(3))
    ours = R.smooth_mprt(model, x, _saliency, target=y, n_samples=n, noise=noise, seed=42)
    calls = iter(range(10**6))
    # Quantus draws np.random.randn per noisy copy and per model: replay ours, in order
    monkeypatch.setattr(np.random, "randn", lambda *s: noise[next(calls) % (n - 1)].numpy())
    monkeypatch.setattr(
        quantus, "explain", lambda model, inputs, targets, **k: _q_explain(model, inputs, targets)
    )
    metric = quantus.SmoothMPRT(
        nr_samples=n, skip_layers=True, return_last_correlation=True, disable_warnings=True
    )
    ref = _quantus(metric, model, x, y)
    # Quantus averages in float32 (a / N added up), cnnlens in float64: two near-equal
    # values of a map may swap ranks, which moves Spearman's rho by ~1e-5 on 1,024 pixels
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-4)


def _quantus_off_class(y: int, classes: int, seed: int = 42) -> int:
    """The class Quantus' RandomLogit picks for a batch of one image."""
    np.random.seed(seed)
    pick = np.random.randint(0, classes - 1, 1)[0]
    return [c for c in range(classes) if c != y][pick]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_random_logit_equals_quantus_per_image(arch: str) -> None:
    model, x, y, classes = _setup(arch)
    a = _saliency(model, x, y).detach().unsqueeze(1).numpy()
    off = torch.tensor([_quantus_off_class(int(t), classes) for t in y])
    ours = R.random_logit(model, x, _saliency, target=y, off_target=off)
    metric = quantus.RandomLogit(num_classes=classes, disable_warnings=True)
    ref = np.concatenate(
        [_quantus(metric, model, x[i : i + 1], y[i : i + 1], a[i : i + 1]) for i in range(3)]
    )
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-6)
    # the deliberate difference: Quantus normalises by one maximum over the whole batch, so
    # an image's score moves with its batch-mates; ours does not
    # (here the batch-mate is the same image with a 10x larger map given in a_batch)
    pair = np.concatenate([a[:1], 10 * a[:1]])
    q2 = _quantus(metric, model, torch.cat([x[:1], x[:1]]), torch.cat([y[:1], y[:1]]), pair)
    assert abs(q2[0] - ref[0]) > 1e-3
    alone = R.random_logit(model, x[:1], _saliency, target=y[:1], off_target=off[:1])
    assert float(alone[0]) == pytest.approx(float(ours[0]), abs=1e-6)


def test_histogram_entropy_is_numpys_histogram_with_scipys_entropy() -> None:
    maps = torch.rand(3, 17, 19, generator=torch.Generator().manual_seed(0)) ** 3
    maps[1, :4] = 0.0
    for bins in (10, 100):
        ours = R.histogram_entropy(maps, bins)
        ref = [scipy.stats.entropy(np.histogram(m.numpy(), bins=bins)[0]) for m in maps]
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12)
    assert float(R.histogram_entropy(torch.ones(1, 4, 4))[0]) == 0.0


def test_randomized_copy_is_quantus_last_bottom_up_model() -> None:
    model = torchvision_net("resnet18")
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(model, channel_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        last = list(wrapped.get_random_layer_generator(order="bottom_up", seed=7))[-1][1]
    ours = R.randomized_copy(model, seed=7)
    for (name, p), q in zip(ours.state_dict().items(), last.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(ours.fc.weight, model.fc.weight)


def test_a_constant_explanation_is_nan_with_a_warning() -> None:
    model, x, y, _ = _setup("gap")
    flat = torch.zeros(3, 32, 32)
    with pytest.warns(UserWarning, match="constant explanation"):
        out = R.efficient_mprt(model, x, _saliency, target=y, maps=flat)
    assert bool(out.isnan().all())


def test_bad_arguments_name_what_was_expected() -> None:
    model, x, y, _ = _setup("gap")
    with pytest.raises(InputError, match="off_target"):
        R.random_logit(model, x, _saliency, target=y, off_target=y)
    with pytest.raises(InputError, match="noise must have shape"):
        R.smooth_mprt(model, x, _saliency, target=y, n_samples=3, noise=torch.zeros(3, 1))
    with pytest.raises(InputError, match="options"):
        R.efficient_mprt(model, x, _saliency, target=y, layer="conv1")
    with pytest.raises(ModelError, match="no parameters"):
        R.randomized_copy(nn.Sequential(nn.Flatten(), nn.ReLU()))


def test_registered_and_run_by_score_methods() -> None:
    model, x, y, _ = _setup("gap")
    names = ["efficient_mprt", "smooth_mprt", "random_logit"]
    for name in names:
        info = get_metric(name)
        assert info.family == "randomization" and info.needs_explain
    assert get_metric("efficient_mprt").higher_is_better
    before = snapshot(model)
    scores = score_methods(model, x, ["gradcam", "saliency"], target=y, metrics=names)
    assert_unchanged(model, before)
    assert set(scores) == {"gradcam", "saliency", "random", "centre"}
    for name in names:
        assert scores["gradcam"][name].shape == (3,)
        assert bool(torch.isfinite(scores["saliency"][name]).all())
        assert name not in scores["random"]  # fixed maps cannot be re-explained
    # a plain callable cannot be re-bound to the randomized copy: NaN, with a warning
    inputs = MetricInputs(
        model=model,
        x=x,
        maps=torch.rand(3, 32, 32),
        target=y,
        explain=lambda xx, t: torch.rand(xx.shape[0], 32, 32),
    )
    with pytest.warns(UserWarning, match="registered method"):
        out = get_metric("efficient_mprt").scorer(inputs)
    assert bool(out.isnan().all())


class _Counting(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_a_registered_method_shares_its_forward_with_the_prediction_check() -> None:
    from cnnlens.metrics import robustness

    model = _Counting(_gap()).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    maps = cnnlens.explain(model, x, "saliency").maps
    noise = robustness.draw_noise(x, 3, low=0.02, high=0.2, seed=1)

    def plain(xx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cnnlens.explain(model, xx, "saliency", target=t).maps

    model.calls = 0
    by_fn = robustness.relative_output_stability(model, x, maps, plain, noise=noise)
    calls_fn, model.calls = model.calls, 0
    by_name = robustness.relative_output_stability(model, x, maps, "saliency", noise=noise)
    torch.testing.assert_close(by_name, by_fn, equal_nan=True)
    assert model.calls < calls_fn  # the check reads the explanation's own logits


def test_a_plain_callable_leaves_randomization_out_of_the_default_metrics() -> None:
    from cnnlens.metrics.evaluate import choose_metrics

    randomization = {"efficient_mprt", "smooth_mprt", "random_logit"}
    assert randomization <= set(choose_metrics(None, False, True))
    plain = choose_metrics(None, False, True, can_rebind=False)
    assert not randomization & set(plain) and "max_sensitivity" in plain
    # asked for by name, they run and say why their scores are NaN (tested above)
    assert choose_metrics(["random_logit"], False, True, can_rebind=False) == ["random_logit"]
