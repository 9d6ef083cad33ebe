"""LRP: zennit as the oracle on torchvision VGG-bn and ResNet, conservation, hand-computed
rules, and the model left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import cnnlens
from cnnlens.errors import InputError
from cnnlens.methods import LRP
from conftest import assert_unchanged, close, hook_count, inputs, snapshot, torchvision_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMPOSITES = {
    "epsilon_plus_flat": ("EpsilonPlusFlat", {}),
    "epsilon_plus": ("EpsilonPlus", {}),
    "epsilon_gamma_box": ("EpsilonGammaBox", {"low": -3.0, "high": 3.0}),
    "epsilon_alpha2_beta1": ("EpsilonAlpha2Beta1", {}),
}


def zennit_relevance(model: nn.Module, x: torch.Tensor, target: int, composite: str, kw: dict):
    """zennit's relevance with the explained logit as the output relevance."""
    zc = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canon = ResNetCanonizer() if hasattr(model, "layer1") else VGGCanonizer()
    comp = getattr(zc, COMPOSITES[composite][0])(canonizers=[canon], **kw)
    with Gradient(model=model, composite=comp) as attributor:
        out, rel = attributor(x, lambda o: o * F.one_hot(torch.tensor(target), o.shape[1]))
    return out, rel


FAST = ["epsilon_plus_flat", "epsilon_gamma_box"]
CASES = [("resnet18", c) for c in COMPOSITES] + [("vgg16_bn", c) for c in FAST]


@pytest.mark.parametrize(("arch", "composite"), CASES)
def test_matches_zennit(arch: str, composite: str) -> None:
    model = torchvision_net(arch)
    x = inputs(1 if arch.startswith("vgg") else 2, 64)
    kw = COMPOSITES[composite][1]
    before = snapshot(model)
    exp = cnnlens.explain(model, x, "lrp", target=3, composite=composite, **kw)
    assert_unchanged(model, before)
    _, ref = zennit_relevance(model, x, 3, composite, kw)
    # zennit's canonized BatchNorm keeps its eps (a factor 1/sqrt(1 + 1e-5) per layer)
    close(exp.raw, ref, rtol=2e-4)
    # CamelCase names as zennit spells them
    again = LRP(model, composite=COMPOSITES[composite][0], **kw)(x, target=3)
    torch.testing.assert_close(again.raw, exp.raw)


@pytest.mark.slow
def test_matches_zennit_resnet50() -> None:
    model = torchvision_net("resnet50")
    x = inputs(1, 64)
    exp = cnnlens.explain(model, x, "lrp", target=5)
    _, ref = zennit_relevance(model, x, 5, "epsilon_plus_flat", {})
    close(exp.raw, ref, rtol=2e-4)


class SkipCatNet(nn.Module):
    """Bias-free: functional F.relu, a skip connection with ``+=``, ``torch.add``, a
    ``torch.cat`` of two branches, max and average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b = nn.Conv2d(8, 4, 1, bias=False)
        self.c = nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        out = self.a(h)
        out += h
        h = F.max_pool2d(F.relu(out), 2)
        h = torch.add(h, F.relu(self.a(h)))
        h = torch.cat([F.relu(self.b(h)), F.relu(self.c(h))], dim=1)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus", "epsilon_plus_flat"])
def test_conservation_through_functional_relu_skip_and_cat(composite: str) -> None:
    torch.manual_seed(0)
    model = SkipCatNet().eval()
    x = inputs(3, 16).abs()  # non-negative input: z-plus conserves at the first layer too
    exp = cnnlens.explain(model, x, "lrp", target=2, composite=composite, epsilon=0.0)
    logit = model(x)[:, 2]
    torch.testing.assert_close(exp.raw.sum((1, 2, 3)), logit, rtol=1e-4, atol=1e-6)
    assert exp.extras["delta"].abs().max() <= 1e-4 * logit.abs().max() + 1e-6


def test_skip_connection_splits_relevance_in_proportion() -> None:
    """Hand-computed: z = a + b with a = 2x, b = x (1x1 convs); LRP-0 gives R_x = R both
    ways, but each summand gets its share (2/3 and 1/3), seen at the convolutions' input."""

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Conv2d(1, 1, 1, bias=False)
            self.q = nn.Conv2d(1, 1, 1, bias=False)
            self.p.weight.data.fill_(2.0)
            self.q.weight.data.fill_(1.0)
            self.fc = nn.Linear(4, 1, bias=False)
            self.fc.weight.data.fill_(1.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc((self.p(x) + self.q(x)).flatten(1))

    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    exp = cnnlens.explain(Two(), x, "lrp", target=0, composite="epsilon", epsilon=0.0)
    # the output 3 * sum(x) = 30 reaches the pixels in proportion to x; passing the sum's
    # gradient instead (R to both summands) would double it
    close(exp.raw, 3 * x, rtol=1e-6)


def test_epsilon_and_zplus_by_hand() -> None:
    """A 2-3-1 network: the relevance of each rule written out."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.tensor([[0.7, -1.2]])

    def wrapped(v: torch.Tensor) -> torch.Tensor:
        return net(v.flatten(1))

    class Img(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return wrapped(v)

    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    eps = 0.1
    h = (x @ w1.T + b1).clamp(min=0)
    f = h @ w2.T + b2
    stab = lambda z, e: z + e * torch.where(z >= 0, 1.0, -1.0)  # noqa: E731
    r_h = h * (w2 * (f / stab(f, eps)))  # epsilon at the top
    z1 = x @ w1.T + b1
    r_x_eps = x * ((r_h / stab(z1, eps)) @ w1)
    exp = LRP(Img(), composite="epsilon", epsilon=eps)(x.view(1, 1, 1, 2), target=0)
    close(exp.raw.flatten(), r_x_eps.flatten(), rtol=1e-5)
    # z-plus at the first layer: z = W+ x+ + b+ + W- x-
    wp, wn = w1.clamp(min=0), w1.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    z = xp @ wp.T + b1.clamp(min=0) + xn @ wn.T
    s = r_h / stab(z, 1e-6)
    r_x = xp * (s @ wp) + xn * (s @ wn)
    exp = LRP(Img(), rules={"first": "zplus", "linear": "epsilon"}, epsilon=eps)(
        x.view(1, 1, 1, 2), target=0
    )
    close(exp.raw.flatten(), r_x.flatten(), rtol=1e-5)


def test_densenet_runs_conserving_and_leaves_the_model() -> None:
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=10).eval()
    x = inputs(1, 32)
    before = snapshot(model)
    exp = cnnlens.explain(model, x, "lrp")
    assert_unchanged(model, before)
    assert torch.isfinite(exp.raw).all() and exp.raw.abs().sum() > 0
    logit = exp.scores[0, exp.targets[0]]
    # the biases of merged BatchNorms and of the classifier absorb some relevance
    assert abs(float(exp.extras["delta"][0])) < 0.5 * abs(float(logit))


def test_topk_and_callable_target_and_bounds() -> None:
    model = torchvision_net("resnet18")
    x = inputs(2, 32)
    both = cnnlens.explain(model, x, "lrp", topk=2)
    assert both.raw.shape == (2, 2, 3, 32, 32) and both.maps.shape == (2, 2, 32, 32)
    for k in range(2):
        one = cnnlens.explain(model, x, "lrp", target=both.targets[:, k])
        close(both.raw[:, k], one.raw, rtol=1e-5)
    fn = cnnlens.explain(model, x, "lrp", target=lambda out: out[:, 1] - out[:, 2])
    assert torch.isfinite(fn.raw).all()
    box = cnnlens.explain(model, x, "lrp", composite="EpsilonGammaBox")  # bounds from x
    assert torch.isfinite(box.raw).all()


def test_bad_options_name_the_argument() -> None:
    model = torchvision_net("resnet18")
    with pytest.raises(InputError, match="composite"):
        LRP(model, composite="epsilon_magic")
    with pytest.raises(InputError, match="rules"):
        LRP(model, rules={"first": "nope"})
    with pytest.raises(InputError, match="rules key"):
        LRP(model, rules={"middle": "flat"})
    with pytest.raises(InputError, match="epsilon"):
        LRP(model, epsilon=-1.0)
    with pytest.raises(InputError, match="low"):
        LRP(model, composite="epsilon_gamma_box", low=1.0, high=-1.0)(inputs(1, 32))
    assert hook_count(model) == 0
    # no torch-function mode is left active after an error in the forward
    with pytest.raises(RuntimeError):
        LRP(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(7, 2)))(inputs(1, 8))
    assert torch.overrides._get_current_function_mode_stack() == []
