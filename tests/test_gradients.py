"""Gradient attributions: captum oracles, hand-computed values, the guided ReLU rule on every
ReLU that runs, completeness of integrated gradients, SmoothGrad seeding and batching."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import cnnlens
from cnnlens.errors import InputError, TargetError
from cnnlens.methods import (
    Deconvnet,
    GuidedBackprop,
    GuidedGradCAM,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)
from cnnlens.methods.gradients import ReLURule, gauss_legendre, path_rule, reduce_channels
from conftest import (
    assert_unchanged,
    check_batched_equals_per_image,
    close,
    inputs,
    make_model,
    simplecnn,
    snapshot,
    torchvision_net,
)

captum_attr = pytest.importorskip("captum.attr")

GRADIENT_METHODS = [
    ("saliency", {}),
    ("inputxgradient", {}),
    ("integrated_gradients", {"n_steps": 6, "internal_batch_size": 4}),
    ("guided_backprop", {}),
    ("deconvnet", {}),
    ("guided_gradcam", {}),
    ("smoothgrad", {"n_samples": 4, "batch_size": 3}),
]


# ---------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size", "layer_name"),
    [("resnet18", 64, "layer4"), ("vgg11", 32, "features.15")],
)
def test_captum_oracles_torchvision(name: str, size: int, layer_name: str) -> None:
    model = torchvision_net(name)
    x = inputs(2, size)
    tgt = torch.tensor([3, 7])
    before = snapshot(model)

    def ours(method: str, **opts: object) -> torch.Tensor:
        return cnnlens.explain(model, x, method, target=tgt, **opts).raw

    close(ours("saliency"), captum_attr.Saliency(model).attribute(x, target=tgt, abs=False))
    close(ours("inputxgradient"), captum_attr.InputXGradient(model).attribute(x, target=tgt))
    for rule in ("gausslegendre", "riemann_left"):
        exp = cnnlens.explain(
            model,
            x,
            "integrated_gradients",
            target=tgt,
            n_steps=8,
            rule=rule,
            internal_batch_size=4,  # the same batches of path points as captum's
            optimize=False,
        )
        ref, delta = captum_attr.IntegratedGradients(model).attribute(
            x,
            target=tgt,
            n_steps=8,
            method=rule,
            internal_batch_size=4,
            return_convergence_delta=True,
        )
        close(exp.raw, ref)
        torch.testing.assert_close(exp.extras["delta"], delta.float(), atol=1e-4, rtol=1e-3)
    # captum's guided backprop / deconvolution hook nn.ReLU modules, which is every ReLU here
    close(ours("guided_backprop"), captum_attr.GuidedBackprop(model).attribute(x, target=tgt))
    close(ours("deconvnet"), captum_attr.Deconvolution(model).attribute(x, target=tgt))
    layer = model.get_submodule(layer_name)
    for mode in ("nearest", "bilinear"):
        ref = captum_attr.GuidedGradCam(model, layer).attribute(
            x, target=tgt, interpolate_mode=mode
        )
        exp = cnnlens.explain(
            model, x, "guided_gradcam", target=tgt, layer=layer_name, interpolate=mode
        )
        close(exp.raw, ref)
        assert exp.layer == layer_name
    assert_unchanged(model, before)


def test_captum_oracles_simplecnn() -> None:
    model = simplecnn()
    x = inputs(3, 32)
    tgt = torch.tensor([1, 4, 9]) % model(x).shape[1]

    def ours(method: str, **opts: object) -> torch.Tensor:
        return cnnlens.explain(model, x, method, target=tgt, **opts).raw

    close(ours("saliency"), captum_attr.Saliency(model).attribute(x, target=tgt, abs=False))
    close(ours("inputxgradient"), captum_attr.InputXGradient(model).attribute(x, target=tgt))
    base = 0.1 * inputs(3, 32, seed=5)
    exp = cnnlens.explain(
        model,
        x,
        "integrated_gradients",
        target=tgt,
        baseline=base,
        n_steps=16,
        rule="riemann_right",
    )
    ref = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=base, target=tgt, n_steps=16, method="riemann_right"
    )
    close(exp.raw, ref, rtol=1e-3)  # channels-last path: float32 rounding only
    # captum's hooks miss functional F.relu, ours do not: the results must differ here
    gbp = ours("guided_backprop")
    assert not torch.allclose(gbp, captum_attr.GuidedBackprop(model).attribute(x, target=tgt))


# ---------------------------------------------------------------------------------------------
# Guided backprop / deconvnet on functional ReLUs: hand-written references
# ---------------------------------------------------------------------------------------------


class _GuidedRef(torch.autograd.Function):
    """The guided rule, written independently of cnnlens."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (g > 0) * (x > 0)


class _DeconvRef(_GuidedRef):
    @staticmethod
    def backward(ctx, g):
        return g * (g > 0)


class GuidedSimpleCNN(nn.Module):
    """A copy of the tutorial net whose forward routes every ReLU through ``fn``."""

    def __init__(self, net: nn.Module, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.net, self.fn = net, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, relu = self.net, self.fn.apply
        x = n.pool(relu(n.conv1(x)))
        x = n.pool(relu(n.conv2(x)))
        x = torch.flatten(x, 1)
        x = relu(n.fc1(x))
        if hasattr(n, "fc3"):
            return n.fc3(relu(n.fc2(x)))
        return n.fc2(x)


def reference_grads(model: nn.Module, x: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (g,) = torch.autograd.grad(out.gather(1, tgt[:, None]).sum(), xg)
    return g


@pytest.mark.parametrize(
    ("method", "fn"), [("guided_backprop", _GuidedRef), ("deconvnet", _DeconvRef)]
)
def test_guided_rule_on_functional_relu_matches_hand_reference(method: str, fn: type) -> None:
    model = simplecnn()
    x = inputs(2, 32)
    tgt = torch.tensor([2, 5])
    ref = reference_grads(GuidedSimpleCNN(copy.deepcopy(model), fn).eval(), x, tgt)
    before = snapshot(model)
    exp = cnnlens.explain(model, x, method, target=tgt)
    close(exp.raw, ref, rtol=1e-5)
    assert_unchanged(model, before)
    assert torch._C._len_torch_function_stack() == 0


class _GuidedReLUModule(nn.Module):
    def __init__(self, fn: type) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.apply(x)


def test_guided_backprop_densenet_covers_modules_and_functional_relu(monkeypatch) -> None:
    """DenseNet runs nn.ReLU(inplace=True) modules and a functional F.relu in forward."""
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(
        growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=5
    ).eval()
    x = inputs(2, 32)
    tgt = torch.tensor([0, 3])
    ours = cnnlens.explain(model, x, "guided_backprop", target=tgt).raw

    ref_model = copy.deepcopy(model)
    for module in list(ref_model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, _GuidedReLUModule(_GuidedRef))
    shim = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    calls = []

    def guided_relu(t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        calls.append(inplace)
        return _GuidedRef.apply(t)

    shim.relu = guided_relu
    monkeypatch.setattr(torchvision.models.densenet, "F", shim)
    ref = reference_grads(ref_model, x, tgt)
    assert calls, "the reference must route DenseNet's functional relu"
    close(ours, ref, rtol=1e-5)
    # plain gradients differ, so the rule really was applied
    assert not torch.allclose(ours, cnnlens.explain(model, x, "saliency", target=tgt).raw)


def test_relu_rule_keeps_inplace_semantics_and_leaves_no_mode() -> None:
    funcs = GuidedBackprop.relu_rule
    t = torch.tensor([-1.0, 2.0, -3.0, 4.0])
    with ReLURule(funcs):
        a = t.clone()
        out_a = torch.relu_(a)
        b = t.clone()
        b.relu_()
        c = t.clone()
        out_c = F.relu(c, inplace=True)
        d = t.clone()
        out_d = nn.ReLU(inplace=True)(d)
        e = t.clone()
        out_e = F.relu(e)
        f = torch.relu(t.clone())
        g = t.clone().relu()
    want = torch.tensor([0.0, 2.0, 0.0, 4.0])
    for value in (a, out_a, b, c, out_c, d, out_d, out_e, f, g):
        assert torch.equal(value, want)
    assert out_a is a and out_c is c and out_d is d
    assert torch.equal(e, t)  # out of place leaves its input alone
    assert torch._C._len_torch_function_stack() == 0


class Boom(nn.Module):
    """A ReLU net whose forward fails after its first ReLU ran."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(x))
        if h.shape[0] > 1:
            raise RuntimeError("boom")
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("method", [m for m, _ in GRADIENT_METHODS])
def test_model_state_restored_after_error(method: str) -> None:
    model = Boom().train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        cnnlens.explain(model, inputs(2, 8), method, **dict(GRADIENT_METHODS)[method])
    assert_unchanged(model, before)
    assert torch._C._len_torch_function_stack() == 0
    with pytest.raises(TargetError):
        cnnlens.explain(model, inputs(1, 8), method, target=7, **dict(GRADIENT_METHODS)[method])
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------------------------
# Hand-computed values on a linear model
# ---------------------------------------------------------------------------------------------


class Linear(nn.Module):
    """f_c(x) = sum(W_c * x) + b_c: every gradient is W_c, exactly."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = nn.Parameter(torch.randn(2, 3, 4, 4, generator=g))
        self.b = nn.Parameter(torch.tensor([0.5, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.w) + self.b


def test_linear_model_by_hand() -> None:
    model = Linear()
    x = inputs(2, 4)
    w = model.w.detach()
    sal = cnnlens.explain(model, x, "saliency", target=1)
    torch.testing.assert_close(sal.raw, w[1].expand(2, -1, -1, -1))
    absmax = w[1].abs().amax(0)
    torch.testing.assert_close(sal.maps[0], (absmax - absmax.min()) / (absmax.max() - absmax.min()))
    for how, want in {
        "square": w[1].pow(2).sum(0),
        "abs": w[1].abs().sum(0),
        "sum": w[1].sum(0),
        "absmax": absmax,
    }.items():
        torch.testing.assert_close(reduce_channels(w[1], how), want)
        m = cnnlens.explain(model, x, "saliency", target=1, reduce=how).maps[1]
        torch.testing.assert_close(m, (want - want.min()) / (want.max() - want.min()))
    ixg = cnnlens.explain(model, x, "inputxgradient", target=0)
    torch.testing.assert_close(ixg.raw, x * w[0])
    # IG of a linear model is exact for any rule: (x - x') * W, and delta is 0
    base = torch.full((3, 1, 1), 0.25)
    for rule in ("gausslegendre", "riemann_left", "riemann_trapezoid"):
        ig = cnnlens.explain(
            model, x, "integrated_gradients", target=0, baseline=base, n_steps=3, rule=rule
        )
        torch.testing.assert_close(ig.raw, (x - 0.25) * w[0])
        torch.testing.assert_close(ig.extras["delta"], torch.zeros(2), atol=1e-5, rtol=0)


def test_quadrature_rules() -> None:
    nodes, weights = gauss_legendre(7)
    ref_x, ref_w = np.polynomial.legendre.leggauss(7)
    np.testing.assert_allclose(nodes.numpy(), (ref_x + 1) / 2, atol=1e-14)
    np.testing.assert_allclose(weights.numpy(), ref_w / 2, atol=1e-14)
    # 7 Gauss points integrate t^12 exactly: 1/13
    assert abs(float((weights * nodes**12).sum()) - 1 / 13) < 1e-14
    a, w = path_rule("riemann_trapezoid", 5)  # h = 1/4
    torch.testing.assert_close(
        w, torch.tensor([1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8], dtype=torch.float64)
    )
    torch.testing.assert_close(a, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    a, w = path_rule("riemann_middle", 4)
    torch.testing.assert_close(a, torch.tensor([1, 3, 5, 7], dtype=torch.float64) / 8)
    assert abs(float(w.sum()) - 1) < 1e-15


def test_integrated_gradients_completeness_300_steps() -> None:
    model = simplecnn()
    with torch.no_grad():  # weights at the scale of a trained net, so f(x) - f(x') is large
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.bias.normal_(0, 0.1)
    x = inputs(2, 32)
    for baseline in ("zero", "blur", "uniform"):
        exp = cnnlens.explain(
            model,
            x,
            "integrated_gradients",
            baseline=baseline,
            n_steps=300,
            internal_batch_size=150,
            topk=2,
        )
        ig = IntegratedGradients(model, baseline=baseline)
        with torch.no_grad():
            gap = model(x) - model(ig.baselines(x))
        gap = gap.gather(1, exp.targets)
        assert exp.extras["delta"].shape == (2, 2)
        assert bool((exp.extras["delta"].abs() < 0.01 * gap.abs()).all()), baseline
        # the delta reported is sum(attr) - (f(x) - f(x'))
        torch.testing.assert_close(
            exp.extras["delta"], exp.raw.flatten(2).sum(2) - gap, atol=1e-4, rtol=1e-4
        )


# ---------------------------------------------------------------------------------------------
# Batching, seeding, memory bound, targets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "opts"), GRADIENT_METHODS)
def test_batched_equals_per_image(method: str, opts: dict) -> None:
    batched = check_batched_equals_per_image(method, opts)
    assert batched.raw.shape == (3, 3, 32, 32)
    assert batched.maps.dtype == torch.float32 and batched.layer in (None, "features")


@pytest.mark.parametrize(("method", "opts"), GRADIENT_METHODS)
def test_topk_equals_one_class_at_a_time(method: str, opts: dict) -> None:
    model = make_model("functional")
    x = inputs(2, 32)
    exp = cnnlens.explain(model, x, method, topk=2, **opts)
    assert exp.maps.shape == (2, 2, 32, 32) and exp.targets.shape == (2, 2)
    for k in range(2):
        one = cnnlens.explain(model, x, method, target=exp.targets[:, k], **opts)
        torch.testing.assert_close(exp.raw[:, k], one.raw, atol=1e-5, rtol=1e-4)


def test_smoothgrad_seeded_wrapper_and_kinds() -> None:
    model = make_model("relu")
    x = inputs(2, 32)
    rng = torch.get_rng_state()
    a = SmoothGrad(Saliency(model), n_samples=5, seed=3)(x, target=1)
    b = SmoothGrad(Saliency(model), n_samples=5, seed=3, batch_size=1)(x, target=1)
    c = SmoothGrad(Saliency(model), n_samples=5, seed=4)(x, target=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    torch.testing.assert_close(a.raw, b.raw)
    assert not torch.allclose(a.raw, c.raw)
    # by hand: the same noise, drawn from a generator seeded the same way
    gen = torch.Generator().manual_seed(3)
    eps = [torch.randn(3, 32, 32, generator=gen) for _ in range(5)]
    sigma = 0.15 * (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(2, 1, 1, 1)
    sal = Saliency(model)
    grads = torch.stack([sal(x + sigma * e, target=1).raw for e in eps])
    torch.testing.assert_close(a.raw, grads.mean(0), atol=1e-6, rtol=1e-5)
    sq = SmoothGrad(Saliency(model), n_samples=5, seed=3, kind="smoothgrad_sq")(x, target=1)
    torch.testing.assert_close(sq.raw, grads.pow(2).mean(0), atol=1e-6, rtol=1e-5)
    var = SmoothGrad(Saliency(model), n_samples=5, seed=3, kind="vargrad")(x, target=1)
    torch.testing.assert_close(var.raw, grads.var(0, unbiased=False), atol=1e-6, rtol=1e-4)
    # noise 0 gives the plain method; the registry form with another base works
    zero = cnnlens.explain(model, x, "smoothgrad", target=1, n_samples=2, noise=0.0)
    torch.testing.assert_close(zero.raw, sal(x, target=1).raw)
    ig = cnnlens.explain(
        model, x, "smoothgrad", base="integrated_gradients", n_steps=4, n_samples=2, noise=0.0
    )
    plain = cnnlens.explain(model, x, "integrated_gradients", n_steps=4)
    torch.testing.assert_close(ig.raw, plain.raw, atol=1e-6, rtol=1e-5)
    assert ig.extras["base"] == "integrated_gradients"
    ggc = GuidedGradCAM(model, layer="features.4")
    wrapped = SmoothGrad(ggc, n_samples=2, noise=0.0)(x, topk=2)
    torch.testing.assert_close(wrapped.raw, ggc(x, topk=2).raw, atol=1e-6, rtol=1e-5)


class MaxBatch:
    """Counts the largest batch the model is called with (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.largest = 0
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, _m: nn.Module, args: tuple) -> None:
        self.largest = max(self.largest, int(args[0].shape[0]))
        self.calls += 1


def test_memory_bounded_by_batch_options() -> None:
    model = make_model("relu")
    x = inputs(3, 32)
    count = MaxBatch(model)
    exp = cnnlens.explain(
        model, x, "integrated_gradients", n_steps=200, internal_batch_size=7, optimize=False
    )
    assert count.largest <= 7
    assert count.calls >= 3 * 200 // 7
    count.largest = 0
    cnnlens.explain(model, x, "smoothgrad", n_samples=40, batch_size=5)
    assert count.largest <= 5
    count.handle.remove()
    assert torch.isfinite(exp.maps).all()


def test_callable_target() -> None:
    model = make_model("gap")
    x = inputs(2, 32)

    def score(out: torch.Tensor) -> torch.Tensor:
        return out[:, 1] - out[:, 2]

    for method, opts in GRADIENT_METHODS:
        if method == "guided_gradcam":
            continue
        exp = cnnlens.explain(model, x, method, target=score, **opts)
        a = cnnlens.explain(model, x, method, target=1, **opts).raw
        b = cnnlens.explain(model, x, method, target=2, **opts).raw
        if method in ("saliency", "inputxgradient", "integrated_gradients"):  # linear in f
            torch.testing.assert_close(exp.raw, a - b, atol=1e-5, rtol=1e-4)
        assert exp.targets.tolist() == [-1, -1] and exp.maps.shape == (2, 32, 32)


def test_works_under_no_grad_and_inference_mode() -> None:
    model = make_model("inplace")
    x = inputs(1, 32)
    ref = cnnlens.explain(model, x, "guided_backprop").raw
    with torch.no_grad():
        torch.testing.assert_close(cnnlens.explain(model, x, "guided_backprop").raw, ref)
    with torch.inference_mode():
        xi = x.clone()
    torch.testing.assert_close(cnnlens.explain(model, xi, "guided_backprop").raw, ref)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "opts", "word"),
    [
        ("integrated_gradients", {"n_steps": 0}, "n_steps"),
        ("integrated_gradients", {"n_steps": 1, "rule": "riemann_trapezoid"}, "n_steps"),
        ("integrated_gradients", {"rule": "simpson"}, "rule"),
        ("integrated_gradients", {"baseline": torch.zeros(3, 5, 5)}, "baseline"),
        ("integrated_gradients", {"baseline": torch.zeros(4, 3, 8, 8)}, "baseline"),
        ("integrated_gradients", {"baseline": "mean"}, "baseline"),
        ("integrated_gradients", {"internal_batch_size": 0}, "internal_batch_size"),
        ("smoothgrad", {"noise": -0.1}, "noise"),
        ("smoothgrad", {"n_samples": 0}, "n_samples"),
        ("smoothgrad", {"kind": "median"}, "kind"),
        ("smoothgrad", {"base": "occlusion"}, "base"),
        ("saliency", {"reduce": "max"}, "reduce"),
    ],
)
def test_bad_options_raise_one_line_input_error(method: str, opts: dict, word: str) -> None:
    model = make_model("gap")
    with pytest.raises(InputError, match=word) as info:
        cnnlens.explain(model, inputs(2, 8), method, **opts)
    assert "\n" not in str(info.value)


def test_wrapper_refuses_base_options_with_an_instance() -> None:
    with pytest.raises(InputError, match="base"):
        SmoothGrad(Deconvnet(make_model("gap")), base="saliency")
    with pytest.raises(InputError, match="method"):
        SmoothGrad("saliency")


def test_smoothgrad_of_guided_gradcam_takes_and_reports_the_layer() -> None:
    model = make_model("gap")
    x = inputs(2, 32)
    exp = cnnlens.explain(
        model, x, "smoothgrad", base="guided_gradcam", layer="features.0", n_samples=3
    )
    assert exp.layer == "features.0" and exp.maps.shape == (2, 32, 32)
    same = cnnlens.methods.SmoothGrad(
        cnnlens.methods.GuidedGradCAM(model, layer="features.0"), n_samples=3
    )(x)
    torch.testing.assert_close(exp.raw, same.raw)
    with pytest.raises(InputError, match="takes no layer"):
        cnnlens.explain(model, x, "smoothgrad", layer="features.0")


@pytest.mark.parametrize("method", ["saliency", "guided_backprop"])
def test_optimize_true_runs_channels_last_with_the_same_gradients(method: str) -> None:
    model = torchvision_net("resnet18")
    x = inputs(2, 64)
    seen: list[bool] = []
    handle = model.conv1.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last))
    )
    try:
        fast = cnnlens.explain(model, x, method, target=[1, 2], optimize=True)
        assert seen == [True]
        seen.clear()
        plain = cnnlens.explain(model, x, method, target=[1, 2])  # default: input as given
        assert seen == [False]
    finally:
        handle.remove()
    close(fast.raw, plain.raw, rtol=1e-3)
    assert fast.raw.is_contiguous()
    with pytest.raises(InputError, match="optimize must be"):
        cnnlens.explain(model, x, method, optimize="fast")
