"""IROF, Sensitivity-n, Infidelity, Sufficiency: equal to Quantus 0.6 on the same inputs
(a seed network and a random-weight torchvision ResNet-18); the deliberate differences shown."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from cnnlens.errors import InputError
from cnnlens.methods.superpixel import segment_images
from cnnlens.metrics.faithfulness_extra import infidelity, irof, sensitivity_n, sufficiency
from cnnlens.metrics.registry import MetricInputs, get_metric
from conftest import simplecnn, torchvision_net

quantus = pytest.importorskip("quantus")
slic = pytest.importorskip("skimage.segmentation").slic

MODELS = {"simplecnn": simplecnn, "resnet18": lambda: torchvision_net("resnet18")}


def _batch(name: str, b: int = 3, seed: int = 0):
    """The model, b images (32 px for the seed network, 16 px for ResNet-18), maps, classes."""
    model = MODELS[name]()
    size = 32 if name == "simplecnn" else 16
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    maps = torch.rand(b, size, size, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, maps, y


def _quantus(metric, model, x, y, maps, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.unsqueeze(1).numpy(),
            device="cpu",
            **kwargs,
        )
    return np.asarray(out, dtype=np.float64)


@pytest.fixture
def trapz(monkeypatch):
    """Quantus' calculate_auc calls np.trapz, gone in numpy 2: give it the same rule."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def _broadcast_mask(arr, mask, **kwargs):
    """Quantus' IROF builds a (B, 1, H, W) mask and its own perturb function asserts it has
    the (B, C, H, W) shape of the images, so it fails on every RGB image; spread it."""
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)


def _irof_quantus(**kwargs):
    return quantus.IROF(
        perturb_func=_broadcast_mask, return_aggregate=False, disable_warnings=True, **kwargs
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_irof_equals_quantus_on_the_same_segments_and_fill(name, trapz, monkeypatch):
    model, x, maps, y = _batch(name, b=2)
    seg = segment_images(x, "grid", n_segments=16)  # 16 cells: few forwards
    # hand Quantus the same segments in place of its SLIC call
    found = iter(seg.numpy())
    monkeypatch.setattr(quantus.helpers.utils, "get_superpixel_segments", lambda **k: next(found))
    got = irof(model, x, maps, y, segments=seg, batch_size=16)
    for i in range(2):
        # Quantus' "mean" fill is the mean of the current (already perturbed) batch: give it
        # the image's own mean, the fill cnnlens uses, as an array
        fill = np.full((1, *x.shape[1:]), float(x[i].mean()), dtype=np.float32)
        metric = _irof_quantus(perturb_baseline=fill)
        want = _quantus(metric, model, x[i : i + 1], y[i : i + 1], maps[i : i + 1])
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-4)


def test_irof_differs_from_quantus_where_its_mean_fill_depends_on_the_batch(trapz):
    """Quantus' default fill, the mean of the whole current batch, makes one image's score
    depend on which other images share its batch; cnnlens' does not."""
    model, x, maps, y = _batch("simplecnn", b=2, seed=3)
    x[1] = x[1] * 0.2  # a dark neighbour pulls the batch mean down
    with pytest.raises(AssertionError, match="shape of arr"):  # its own mask on RGB
        _quantus(quantus.IROF(disable_warnings=True), model, x[:1], y[:1], maps[:1])
    metric = _irof_quantus()
    alone = _quantus(metric, model, x[:1], y[:1], maps[:1])[0]
    together = _quantus(metric, model, x, y, maps)[0]
    assert abs(alone - together) > 1e-3
    seg = torch.as_tensor(
        np.stack([slic(np.moveaxis(xi.numpy(), 0, -1).astype("double"), start_label=0) for xi in x])
    )
    one = irof(model, x[:1], maps[:1], y[:1], segments=seg[:1])
    both = irof(model, x, maps, y, segments=seg)
    torch.testing.assert_close(one[0], both[0])


class _StableSort:
    """numpy with a stable argsort (ties in index order), for one Quantus module."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, axis=-1, **kwargs):
        return np.argsort(a, axis, kind="stable")


@pytest.mark.parametrize("name", list(MODELS))
def test_sensitivity_n_equals_quantus_with_cumulative_mass(name, monkeypatch):
    """Quantus correlates the cumulative drop with the mass of the last step's values only;
    with that mass made cumulative (the removed set's, as in Ancona et al.) the numbers
    are cnnlens'."""
    model, x, maps, y = _batch(name, b=4, seed=1)
    step = maps[0].numel() // 16  # Quantus wants a divisor of H*W
    got = sensitivity_n(model, x, maps, y, features_in_step=step, max_fraction=0.25)
    steps = 3 * maps[0].numel() // (4 * step)
    assert got.per_n.shape == (steps,) and got.per_image.shape == (4,)
    # a pixel's channels tie in the ranking; Quantus' np.argsort breaks ties at random,
    # cnnlens in index order: make Quantus' sort stable
    module = importlib.import_module("quantus.metrics.faithfulness.sensitivity_n")
    monkeypatch.setattr(module, "np", _StableSort())

    class Cumulative(quantus.SensitivityN):
        def evaluate_batch(self, *args, **kwargs):
            out = super().evaluate_batch(*args, **kwargs)
            out[0]["att_sums"] = np.cumsum(out[0]["att_sums"], axis=1)
            return out

    metric = Cumulative(
        features_in_step=step, n_max_percentage=0.75, return_aggregate=False, disable_warnings=True
    )
    want = _quantus(metric, model, x, y, maps)
    np.testing.assert_allclose(got.per_n.numpy(), want, rtol=1e-4, atol=1e-4)


def test_sensitivity_n_is_one_for_a_linear_model_and_its_exact_map():
    """f(x) = sum(w * x), the map w * (x - b) (b the image's minimum, channels equal): the
    top-n mass is exactly the drop, so every correlation is 1; Quantus' per-step mass is not."""
    torch.manual_seed(3)
    w = torch.randn(1, 1, 8, 8).expand(-1, 2, -1, -1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(128, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.cat([w.flatten(), -w.flatten()]).view(2, 128))
    x = torch.rand(4, 1, 8, 8).expand(-1, 2, -1, -1).contiguous()
    maps = w[:, 0] * (x[:, 0] - x.flatten(1).min(1).values.view(-1, 1, 1))
    y = torch.zeros(4, dtype=torch.long)
    got = sensitivity_n(model, x, maps, y, features_in_step=2, max_fraction=0.5, activation=None)
    torch.testing.assert_close(got.per_image, torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.per_n, torch.ones(32), atol=1e-5, rtol=0)
    metric = quantus.SensitivityN(
        features_in_step=2, n_max_percentage=1.0, return_aggregate=False, disable_warnings=True
    )
    want = _quantus(metric, model, x, y, maps, softmax=False)
    assert np.nanmin(want) < 0.99


@pytest.mark.parametrize("name", list(MODELS))
def test_infidelity_equals_quantus_on_its_patches(name):
    model, x, maps, y = _batch(name, seed=2)
    got = infidelity(model, x, maps, y, patch_size=4, batch_size=16)
    metric = quantus.Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1, disable_warnings=True)
    want = _quantus(metric, model, x, y, maps)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4)


def test_infidelity_with_given_perturbations_by_hand_and_rescaled():
    model, x, maps, y = _batch("simplecnn", b=2, seed=4)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(5, 2, 1, 32, 32, generator=g) * 0.1
    got = infidelity(model, x, maps, y, perturbations=noise)
    with torch.no_grad():
        ref = model(x).gather(1, y.view(-1, 1)).squeeze(1).double()
        errs = []
        for k in range(5):
            drop = ref - model(x - noise[k]).gather(1, y.view(-1, 1)).squeeze(1).double()
            pred = 3 * (noise[k, :, 0].double() * maps.double()).flatten(1).sum(1)
            errs.append((pred - drop) ** 2)
    torch.testing.assert_close(got, torch.stack(errs).mean(0).float(), rtol=1e-4, atol=1e-7)
    # rescaled: the map's scale does not matter, and the fit is never worse than unscaled
    scaled = infidelity(model, x, maps, y, perturbations=noise, rescale=True)
    torch.testing.assert_close(
        scaled, infidelity(model, x, 7 * maps, y, perturbations=noise, rescale=True)
    )
    assert bool((scaled <= got + 1e-7).all())
    with pytest.raises(InputError, match="perturbations must have shape"):
        infidelity(model, x, maps, y, perturbations=noise[:, :1])


@pytest.mark.parametrize("name", list(MODELS))
def test_sufficiency_equals_quantus(name):
    model, x, maps, y = _batch(name, b=8, seed=6)
    base = torch.rand(2, *maps.shape[1:], generator=torch.Generator().manual_seed(7))
    maps = base[torch.arange(8) % 2] + 0.3 * maps  # two families of similar maps
    for t in (0.3, 0.6, 0.9):
        got = sufficiency(model, x, maps, threshold=t)
        metric = quantus.Sufficiency(threshold=t, normalise=False, disable_warnings=True)
        want = _quantus(metric, model, x, y, maps)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_sufficiency_leaves_out_pixels_that_never_change_where_quantus_gives_nan():
    model, x, maps, y = _batch("simplecnn", b=6, seed=8)
    base = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(7))
    maps = base[torch.arange(6) % 2] + 0.3 * maps  # two families of similar maps
    maps[:, :4, :4] = 0.0  # a corner every map leaves at zero
    metric = quantus.Sufficiency(threshold=0.8, normalise=False, disable_warnings=True)
    with np.errstate(all="ignore"):
        stuck = _quantus(metric, model, x, y, maps)
    assert np.all(stuck == 0)  # every distance NaN in Quantus: no image is close to another
    got = sufficiency(model, x, maps, threshold=0.8)
    # by hand (Quantus' steps with scipy) on the pixels outside the corner
    keep = torch.ones(32, 32, dtype=torch.bool)
    keep[:4, :4] = False
    a = maps[:, keep].double().numpy()
    dist = cdist(a, a, "seuclidean")
    close = (dist / dist.max() <= 0.8) & ~np.eye(6, dtype=bool)
    same = y.numpy()[None] == y.numpy()[:, None]
    want = (close & same).sum(1) / np.maximum(close.sum(1), 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert got.sum() > 0


def test_registry_scorers_give_one_finite_score_per_image():
    model, x, maps, y = _batch("simplecnn", b=3, seed=9)
    inputs = MetricInputs(model, x, maps, target=y)
    for name in ("irof", "sensitivity_n", "infidelity", "sufficiency"):
        info = get_metric(name)
        assert info.family == "faithfulness"
        got = info.scorer(inputs)
        assert got.shape == (3,) and bool(torch.isfinite(got).all()), name
    with pytest.raises(InputError, match=">= 2"):
        sufficiency(model, x[:1], maps[:1])
    with pytest.raises(InputError, match="features_in_step"):
        sensitivity_n(model, x, maps, features_in_step=0)
