"""KernelSHAP, LIME and XRAI over superpixels: captum as the oracle (the same segments,
baseline, number of model evaluations and coalitions), exact Shapley values by enumeration,
efficiency, and a hand reference for XRAI."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import KernelShap, Lime
from torch import nn

import cnnlens
from cnnlens.errors import InputError
from cnnlens.methods.superpixel import segment_images
from conftest import assert_unchanged, close, snapshot, torchvision_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth(b: int, size: int, seed: int = 1) -> torch.Tensor:
    """Images with structure (bilinearly upsampled 8x8 noise), so SLIC finds superpixels."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(b, 3, 8, 8, generator=g), size=(size, size), mode="bilinear")


def _vgg11() -> nn.Module:
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)).eval()


NETS = {"resnet18": lambda: torchvision_net("resnet18"), "vgg11": _vgg11}


def _shared(first: list[torch.Tensor], rows: torch.Tensor):
    """A captum perturbation generator that hands out ``first`` and then cnnlens' rows."""

    def generate(_inputs, **_kwargs):
        yield from first
        for row in rows:
            yield row[None].long()

    return generate


@pytest.mark.parametrize("name", list(NETS))
def test_kernelshap_equals_captum_on_shared_coalitions(name: str) -> None:
    """captum draws its coalitions from the global RNG; cnnlens from a local generator. The
    coalitions cnnlens drew (``extras['coalitions']``, after its all-zero baseline row) are
    handed to captum's KernelShap after its own first two (all kept, all removed)."""
    model, x, n = NETS[name](), _smooth(2, 32), 40
    exp = cnnlens.explain(model, x, "kernelshap", n_samples=n, n_segments=16, baseline=0.0)
    seg = exp.extras["segments"]
    for i in range(2):
        m = int(seg[i].max()) + 1
        assert 2**m - 2 > n - 2  # the sampled (not the enumerated) branch
        rows = exp.extras["coalitions"][i][1:]
        assert rows.shape == (n - 2, m)
        ks = KernelShap(model)
        ks.perturb_func = _shared([torch.ones(1, m).long(), torch.zeros(1, m).long()], rows)
        ref = ks.attribute(
            x[i : i + 1],
            baselines=0.0,
            target=int(exp.targets[i]),
            feature_mask=seg[i][None, None],
            n_samples=n,
            perturbations_per_eval=16,
        )
        # captum weighs the two end coalitions 1e6 instead of imposing the constraint
        close(exp.raw[i], ref[0], rtol=2e-3)


def test_kernelshap_is_efficient_and_exact_when_enumerable() -> None:
    """Sum of attributions = f(x) - f(b); with all 2^M - 2 coalitions in the budget, the
    exact Shapley values (computed here from their definition)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3)
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    quads = torch.zeros(16, 16, dtype=torch.long)
    quads[:8, 8:], quads[8:, :8], quads[8:, 8:] = 1, 2, 3
    base = torch.full((3, 1, 1), 0.3)
    exp = cnnlens.explain(
        model, x, "kernelshap", target=2, segments=quads, n_samples=16, baseline=base
    )
    phi = exp.extras["coefficients"][0, 0]

    def value(subset: tuple[int, ...]) -> float:
        keep = torch.isin(quads, torch.tensor(subset, dtype=torch.long))
        with torch.no_grad():
            return float(model(torch.where(keep, x, base))[0, 2])

    want = []
    for j in range(4):
        others = [p for p in range(4) if p != j]
        total = 0.0
        for size in range(4):
            for s in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(4 - size - 1) / math.factorial(4)
                total += weight * (value((*s, j)) - value(s))
        want.append(total)
    torch.testing.assert_close(phi, torch.tensor(want), rtol=1e-4, atol=1e-5)
    # efficiency with sampled coalitions, on a bigger grid
    big = cnnlens.explain(
        model,
        x,
        "kernelshap",
        target=2,
        segments="grid",
        n_segments=16,
        n_samples=40,
        baseline=base,
    )
    with torch.no_grad():
        gap = model(x)[0, 2] - model(base.expand_as(x))[0, 2]
    torch.testing.assert_close(big.extras["coefficients"][0, 0].sum(), gap, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(NETS))
def test_lime_equals_captum_lime_with_the_same_choices(name: str) -> None:
    """captum's Lime given cnnlens' choices: ridge (alpha 1), the kernel on the cosine
    distance between coalitions, and the coalitions cnnlens drew."""
    model, x, n = NETS[name](), _smooth(2, 32), 30
    ours = cnnlens.methods.LIME(model, n_samples=n, segments="slic", n_segments=12)
    exp = ours(x)
    seg = exp.extras["segments"]
    for i in range(2):
        rows = exp.extras["coalitions"][i]

        def similarity(_orig, _pert, interp, **_kw):
            return ours.similarity(interp.float())

        lime = Lime(model, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=similarity)
        lime.perturb_func = _shared([], rows)
        ref = lime.attribute(
            x[i : i + 1],
            baselines=0.0,
            target=int(exp.targets[i]),
            feature_mask=seg[i][None, None],
            n_samples=n - 1,
            perturbations_per_eval=16,
        )
        close(exp.raw[i], ref[0], rtol=1e-3)


def test_segments_batched_equals_single_and_model_unchanged() -> None:
    model = torchvision_net("resnet18")
    x = _smooth(3, 32)
    before = snapshot(model)
    both = cnnlens.explain(
        model, x, "kernelshap", target=[1, 2, 3], n_samples=30, segments="grid", n_segments=9
    )
    assert_unchanged(model, before)
    one = cnnlens.explain(
        model, x[2], "kernelshap", target=3, n_samples=30, segments="grid", n_segments=9
    )
    torch.testing.assert_close(both.raw[2], one.raw[0], rtol=1e-4, atol=1e-5)
    seg = segment_images(x, "slic", n_segments=10)
    assert seg.shape == (3, 32, 32) and int(seg.amin()) == 0
    with pytest.raises(InputError, match="single superpixel"):
        segment_images(torch.randn(1, 3, 32, 32), "slic")
    with pytest.raises(InputError, match="segments has shape"):
        segment_images(x, torch.zeros(2, 32, 32, dtype=torch.long))
    with pytest.raises(InputError, match="segments must be one of"):
        cnnlens.explain(model, x, "lime", segments="watershed")


# ------------------------------------------------------------------------------------------
# XRAI
# ------------------------------------------------------------------------------------------


class _Linear(nn.Module):
    """f(x)_c = sum(w_c * x): integrated gradients are exactly w_c * (x - b)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, None] * self.w).flatten(2).sum(2)


def test_xrai_ranks_regions_by_attribution_density() -> None:
    """Hand reference: two overlapping regions and the rest; the second region's gain is
    the mean attribution of the pixels it adds."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 1, 8, 8, generator=g)
    x = torch.rand(1, 1, 8, 8, generator=g)
    model = _Linear(w).eval()
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[:4, :4] = 1
    labels[4:, 4:] = 2
    exp = cnnlens.explain(
        model, x, "xrai", target=1, segments=labels, dilation=1, baselines=(0.0, 1.0), n_steps=4
    )
    ig = w[1, 0] * (x[0, 0] - 0.5)  # the mean of IG from the baselines 0 and 1
    torch.testing.assert_close(exp.extras["ig"][0], ig, rtol=1e-5, atol=1e-6)
    # the candidate regions: each label dilated by one pixel (3x3 max)
    regions = [F.max_pool2d((labels == v).float()[None, None], 3, 1, 1)[0, 0] > 0 for v in range(3)]
    covered = torch.zeros(8, 8, dtype=torch.bool)
    want = torch.zeros(8, 8)
    left = list(range(3))
    while left:
        gains = {
            r: float(ig[regions[r] & ~covered].mean())
            for r in left
            if (regions[r] & ~covered).any()
        }
        if not gains:
            break
        best = max(gains, key=gains.get)
        want[regions[best] & ~covered] = gains[best]
        covered |= regions[best]
        left.remove(best)
    torch.testing.assert_close(exp.raw[0, 0], want, rtol=1e-5, atol=1e-6)


def _xrai_reference(ig, regions, threshold=1.0):
    """The paper's greedy ranking by hand: regions added by the mean attribution of their new
    pixels until a fraction ``threshold`` is covered; the rest is one region."""
    covered = torch.zeros(ig.shape, dtype=torch.bool)
    want = torch.zeros(ig.shape)
    left = list(range(len(regions)))
    while left and float(covered.float().mean()) < threshold:
        gains = {r: float(ig[regions[r] & ~covered].mean()) for r in left}
        best = max(gains, key=gains.get)
        want[regions[best] & ~covered] = gains[best]
        covered |= regions[best]
        left.remove(best)
    if not covered.all():
        want[~covered] = ig[~covered].mean()
    return want


def test_xrai_area_threshold_and_minimum_segment_size() -> None:
    """The paper's two options by hand: ranking stops once the regions cover the area
    threshold (the rest is one region), and segments under the minimum size are no
    candidates."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 1, 8, 8, generator=g)
    x = torch.rand(1, 1, 8, 8, generator=g)
    model = _Linear(w).eval()
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[:4, :4] = 1
    labels[4:, 4:] = 2
    labels[0, 7] = labels[1, 7] = 3  # a two-pixel segment...
    for i in (0, 1):  # ... whose attribution is 5, far above the rest
        w[1, 0, i, 7] = 5.0 / float(x[0, 0, i, 7] - 0.5)
    ig = w[1, 0] * (x[0, 0] - 0.5)
    opts = {"segments": labels, "dilation": 0, "baselines": (0.0, 1.0), "n_steps": 2}
    regions = [labels == v for v in range(4)]
    for threshold in (1.0, 0.3):
        exp = cnnlens.explain(model, x, "xrai", target=1, area_threshold=threshold, **opts)
        torch.testing.assert_close(exp.raw[0, 0], _xrai_reference(ig, regions, threshold))
    # the two-pixel segment ranks first; below the minimum size it is not a candidate
    first = cnnlens.explain(model, x, "xrai", target=1, area_threshold=0.01, **opts)
    assert bool((first.raw[0, 0, :2, 7] == 5.0).all())
    small = cnnlens.explain(
        model, x, "xrai", target=1, area_threshold=0.01, min_segment_size=3, **opts
    )
    torch.testing.assert_close(small.raw[0, 0], _xrai_reference(ig, regions[:3], 0.01))
    assert float(small.raw[0, 0, 0, 7]) < 5.0
    with pytest.raises(InputError, match="area_threshold"):
        cnnlens.explain(model, x, "xrai", area_threshold=0.0, **opts)


def test_xrai_felzenszwalb_on_a_cnn() -> None:
    model = torchvision_net("resnet18")
    x = _smooth(2, 32)
    exp = cnnlens.explain(model, x, "xrai", n_steps=4, scales=(50, 200))
    assert exp.maps.shape == (2, 32, 32) and torch.isfinite(exp.maps).all()
    # every pixel's value is the gain of a region: few distinct values, the best is 1
    assert len(torch.unique(exp.maps[0])) < 32 * 32 / 4 and float(exp.maps.amax()) == 1.0
