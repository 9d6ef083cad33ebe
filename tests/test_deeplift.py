"""DeepLIFT, DeepLIFT-SHAP and GradientSHAP: captum as the oracle (the same references and
the same random draws), summation to delta, and the model left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlens
from cnnlens.core.targets import resolve_targets
from cnnlens.errors import InputError
from cnnlens.methods import DeepLift, DeepLiftShap, GradientShap
from conftest import (
    assert_unchanged,
    close,
    inputs,
    make_model,
    pearson,
    snapshot,
    torchvision_net,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # captum's hook warnings
]
captum_attr = pytest.importorskip("captum.attr")


def net(kind: str) -> nn.Module:
    """Networks of modules captum's DeepLift handles (no max pooling: captum's max-pool
    multiplier does not keep its own summation to delta, see the max-pool test)."""
    torch.manual_seed(0)
    if kind == "bn-relu-gap":
        layers = [
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 5),
        ]
    else:  # smooth nonlinearities
        layers = [
            nn.Conv2d(3, 6, 3),
            nn.Tanh(),
            nn.Conv2d(6, 8, 3, stride=2),
            nn.ELU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.LazyLinear(12),
            nn.Sigmoid(),
            nn.Linear(12, 5),
        ]
    model = nn.Sequential(*layers)
    model(torch.zeros(1, 3, 32, 32))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def refs(n: int, seed: int = 5) -> torch.Tensor:
    return 0.5 * torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["bn-relu-gap", "smooth"])
def test_deeplift_matches_captum(kind: str) -> None:
    model = net(kind)
    x, base = inputs(3, 32), refs(3)
    before = snapshot(model)
    exp = cnnlens.explain(model, x, "deeplift", target=2, baselines=base)
    assert_unchanged(model, before)
    ref = captum_attr.DeepLift(model).attribute(x, base, target=2)
    close(exp.raw, ref, rtol=1e-4)
    assert exp.extras["delta"].abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["bn-relu-gap", "smooth"])
def test_deeplift_shap_matches_captum(kind: str) -> None:
    model = net(kind)
    x, dist = inputs(2, 32), refs(4, seed=6)
    exp = cnnlens.explain(model, x, "deeplift_shap", target=1, baselines=dist)
    ref = captum_attr.DeepLiftShap(model).attribute(x, dist, target=1)
    close(exp.raw, ref, rtol=1e-4)
    assert exp.extras["delta"].abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["relu", "gap", "resnet18"])
def test_gradient_shap_matches_captum_with_the_same_draws(kind: str) -> None:
    """captum draws noise with torch.normal, references with np.random.choice and path
    points with np.random.uniform: the same draws passed to ``attribute_draws``."""
    model = torchvision_net(kind) if kind == "resnet18" else make_model(kind)
    x, dist, n, sd = inputs(2, 32), refs(5, seed=6), 4, 0.2
    torch.manual_seed(7)
    np.random.seed(7)
    ref = captum_attr.GradientShap(model).attribute(x, dist, n_samples=n, stdevs=sd, target=2)
    torch.manual_seed(7)
    np.random.seed(7)
    noise = torch.normal(0, torch.tensor(sd).repeat(2 * n, 3, 32, 32))
    idx = torch.as_tensor(np.random.choice(5, 2 * n))
    alphas = torch.as_tensor(np.random.uniform(0.0, 1.0, 2 * n), dtype=torch.float32)
    method = GradientShap(model, baselines=dist, n_samples=n, stdevs=sd)
    targets = resolve_targets(2, model(x), None, batch=2)
    ours = method.attribute_draws(x, targets, dist, idx, alphas, noise)[:, 0]
    close(ours, ref, rtol=1e-4)


def test_deeplift_sums_to_delta_through_max_pool_functional_relu_and_resnets() -> None:
    for model in (make_model("functional"), make_model("relu"), torchvision_net("resnet18")):
        x = inputs(2, 32)
        exp = cnnlens.explain(model, x, "deeplift", baselines=refs(1)[0])
        fx = model(x).gather(1, exp.targets[:, None])[:, 0]
        fr = model(refs(1).expand_as(x)).gather(1, exp.targets[:, None])[:, 0]
        close(exp.raw.sum((1, 2, 3)), fx - fr, rtol=1e-4)
        assert exp.extras["delta"].abs().max() <= 1e-4 * float((fx - fr).abs().max()) + 1e-5


def test_deeplift_max_pool_by_hand() -> None:
    """One 2x2 window, f = maxpool then identity: a = (x - x') * (max(x) - max(x')) / sum,
    split as captum's rule: the input row's chosen position gets max(y, y') - y', the
    reference row's chosen position gets y - max(y, y')."""

    class Pool(nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(v, 2).flatten(1)

    x = torch.tensor([[[[1.0, 4.0], [2.0, 0.0]]]])
    base = torch.tensor([[[[3.0, 0.0], [5.0, 1.0]]]])  # y = 4 < y' = 5
    exp = cnnlens.explain(Pool(), x, "deeplift", target=0, baselines=base)
    # m = 5: the input row's choice (x=4 at (0,1)) gets m - y' = 0; the reference row's
    # choice (5 at (1,0)) gets y - m = -1; each divided by its dx and multiplied back
    expected = torch.tensor([[[0.0, 0.0], [-1.0, 0.0]]])
    close(exp.raw[0], expected, rtol=1e-6)


def test_gradient_shap_in_expectation_and_expected_gradients_alias() -> None:
    model = make_model("gap")
    x, dist = inputs(1, 32), refs(4, seed=8)
    exp = cnnlens.explain(model, x, "expected_gradients", baselines=dist, n_samples=256)
    assert exp.method == "gradient_shap"
    c = int(exp.targets[0])
    gap = model(x)[0, c] - model(dist)[:, c].mean()
    # sum of a 256-draw estimate vs f(x) - E f(x'): within 10% of the gap
    assert abs(float(exp.raw.sum()) - float(gap)) < 0.1 * abs(float(gap)) + 1e-3
    again = cnnlens.explain(model, x, "gradient_shap", baselines=dist, n_samples=256)
    torch.testing.assert_close(again.raw, exp.raw)  # seeded: the same draws


def test_default_references_and_bad_options() -> None:
    model = make_model("relu")
    x = inputs(2, 32)
    for name in ("deeplift_shap", "gradient_shap"):
        exp = cnnlens.explain(model, x, name, n_baselines=3)
        assert torch.isfinite(exp.raw).all() and exp.raw.abs().sum() > 0
    with pytest.raises(InputError, match="baselines"):
        DeepLift(model, baselines="gaussian")
    with pytest.raises(InputError, match="baselines"):
        DeepLift(model, baselines=torch.zeros(3, 3, 5, 5))(x)
    with pytest.raises(InputError, match="baselines holds 3"):
        DeepLift(model, baselines=torch.zeros(3, 3, 32, 32))(x)
    with pytest.raises(InputError, match="n_samples"):
        GradientShap(model, n_samples=0)
    with pytest.raises(InputError, match="stdevs"):
        GradientShap(model, stdevs=-1.0)
    with pytest.raises(InputError, match="n_baselines"):
        DeepLiftShap(model, n_baselines=0)
    assert torch.overrides._get_current_function_mode_stack() == []


def test_deeplift_in_chunks_equals_one_paired_forward() -> None:
    model = make_model("inplace")
    x, base = inputs(3, 32), refs(3)
    one = cnnlens.explain(model, x, "deeplift", baselines=base, topk=2)
    chunked = cnnlens.explain(model, x, "deeplift", baselines=base, topk=2, internal_batch_size=1)
    torch.testing.assert_close(chunked.raw, one.raw, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked.extras["delta"], one.extras["delta"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["lrp", "deeplift", "deeplift_shap", "gradient_shap"])
def test_inference_mode_no_grad_low_precision_and_zero_warning(method: str) -> None:
    model = make_model("gap")
    x = inputs(2, 32)
    ref = cnnlens.explain(model, x, method, target=1)
    with torch.inference_mode():
        inf = cnnlens.explain(model, x.clone(), method, target=1)
    with torch.no_grad():
        ng = cnnlens.explain(model, x, method, target=1)
    torch.testing.assert_close(inf.raw, ref.raw)
    torch.testing.assert_close(ng.raw, ref.raw)
    low = cnnlens.explain(make_model("gap").to(torch.bfloat16), x, method, target=1)
    assert torch.isfinite(low.maps).all() and pearson(low.maps, ref.maps) > 0.95
    if method != "lrp":  # the input as its own reference: nothing changes, nothing to show
        with pytest.warns(RuntimeWarning, match="zero everywhere"):
            cnnlens.explain(model, x[:1], method, target=1, baselines=x[:1])
