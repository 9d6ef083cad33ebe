"""Perturbation methods: occlusion against captum, Score-CAM and Ablation-CAM against
pytorch-grad-cam and hand-written references, RISE against its own masks; batching, seeding,
memory bounds, non-finite scores and bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.core.maps import normalize_maps, upsample
from cnnlens.errors import InputError
from cnnlens.methods import RISE, AblationCAM, ScoreCAM
from cnnlens.methods.engine import BatchedForward
from conftest import (
    assert_unchanged,
    check_batched_equals_per_image,
    close,
    inputs,
    make_model,
    pearson,
    simplecnn,
    snapshot,
    torchvision_net,
)

captum_attr = pytest.importorskip("captum.attr")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

FORWARD_METHODS = [
    ("occlusion", {"window": 8, "stride": 6, "batch_size": 7}),
    ("rise", {"n_masks": 40, "batch_size": 7}),
    ("scorecam", {"batch_size": 7}),
    ("ablationcam", {"batch_size": 7}),
]


class MaxBatch:
    """Counts the largest batch the model is called with (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.largest = 0
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, _m: nn.Module, args: tuple) -> None:
        self.largest = max(self.largest, int(args[0].shape[0]))
        self.calls += 1


# ---------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size", "window", "stride"),
    [("resnet18", 32, 12, 7), ("vgg11", 32, 16, 8), ("simplecnn", 32, 5, 3)],
)
def test_occlusion_matches_captum(name: str, size: int, window: int, stride: int) -> None:
    model = simplecnn() if name == "simplecnn" else torchvision_net(name)
    x = inputs(2, size)
    tgt = torch.tensor([3, 7])
    baseline = torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1)
    before = snapshot(model)
    exp = cnnlens.explain(
        model, x, "occlusion", target=tgt, window=window, stride=stride, baseline=baseline
    )
    ref = captum_attr.Occlusion(model).attribute(
        x,
        target=tgt,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=baseline.expand(3, size, size).unsqueeze(0),
        perturbations_per_eval=8,
    )
    close(exp.raw, ref, rtol=2e-4)  # channels-last forwards: float32 rounding only
    assert_unchanged(model, before)


def scorecam_reference(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, cls: int
) -> torch.Tensor:
    """Score-CAM of one image written from the paper with a loop over channels."""
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach()))
    with torch.no_grad():
        model(x)
        handle.remove()
        a = acts["a"][0]
        zero = model(torch.zeros_like(x))[0, cls]
        scores = []
        for k in range(a.shape[0]):
            up = torch.nn.functional.interpolate(
                a[k][None, None], size=x.shape[-2:], mode="bilinear", align_corners=False
            )[0, 0]
            span = up.max() - up.min()
            mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
            scores.append(model(x * mask)[0, cls] - zero)
        w = torch.softmax(torch.stack(scores), 0)
    return (w[:, None, None] * a).sum(0)


class DeadChannelNet(nn.Module):
    """conv -> ReLU with one channel constant (zero weights, bias 0.3) and one dead (bias < 0)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        with torch.no_grad():
            self.conv.weight[4].zero_()
            self.conv.bias[4] = 0.3
            self.conv.weight[5].zero_()
            self.conv.bias[5] = -1.0
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


def test_scorecam_matches_paper_reference_with_constant_channels() -> None:
    model = DeadChannelNet().eval()
    x = inputs(2, 8)
    exp = ScoreCAM(model, layer="relu", batch_size=4)(x, target=[1, 2])
    for i, cls in enumerate([1, 2]):
        ref = scorecam_reference(model, x[i : i + 1], model.relu, cls)
        torch.testing.assert_close(exp.raw[i], ref, atol=1e-5, rtol=1e-4)
    # the constant channel (4) and the dead one (5) cost no forward: 2 x 4 masked + 1 zero image
    count = MaxBatch(model)
    ScoreCAM(model, layer="relu", batch_size=100)(x, target=[1, 2])
    count.handle.remove()
    assert count.calls == 3 and count.largest == 8  # first pass, masked batch, zero image


def test_ablationcam_by_hand() -> None:
    model = DeadChannelNet().eval()
    x = inputs(2, 8)
    exp = AblationCAM(model, layer="relu", batch_size=5)(x, target=[1, 2])
    with torch.no_grad():
        a = model.relu(model.conv(x))
        for i, cls in enumerate([1, 2]):
            y = model.fc(a[i : i + 1].flatten(1))[0, cls]
            w = []
            for k in range(6):
                ablated = a[i : i + 1].clone()
                ablated[0, k] = 0
                w.append((y - model.fc(ablated.flatten(1))[0, cls]) / y.abs())
            ref = (torch.stack(w)[:, None, None] * a[i]).sum(0)
            torch.testing.assert_close(exp.raw[i], ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "size", "layer_name"),
    [("resnet18", 32, "layer3"), ("vgg11", 32, "features.2"), ("simplecnn", 32, "conv2")],
)
def test_scorecam_and_ablationcam_match_pytorch_grad_cam(
    name: str, size: int, layer_name: str
) -> None:
    model = simplecnn() if name == "simplecnn" else torchvision_net(name)
    x = inputs(1, size)
    with torch.no_grad():
        cls = int(model(x).argmax())  # Ablation-CAM: a positive score, where the papers agree
    layer = model.get_submodule(layer_name)
    before = snapshot(model)
    for ours_cls, ref_cls in ((ScoreCAM, pgc.ScoreCAM), (AblationCAM, pgc.AblationCAM)):
        exp = ours_cls(model, layer=layer_name, batch_size=64)(x, target=cls)
        assert_unchanged(model, before)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with ref_cls(model, [layer]) as cam:
                ref = cam(x, targets=[ClassifierOutputTarget(cls)])
        assert pearson(exp.maps[0], torch.from_numpy(ref[0])) >= 0.99, ours_cls.__name__
        model.eval()  # pytorch-grad-cam sets eval itself; keep the snapshot comparable


def test_rise_equals_weighted_sum_of_its_masks() -> None:
    model = make_model("gap")
    x = inputs(2, 32)
    rise = RISE(model, n_masks=70, cell_size=8, p=0.4, seed=5, batch_size=16)
    exp = rise(x, target=[1, 3])
    masks = torch.cat(list(rise.masks((32, 32))))
    assert masks.shape == (70, 32, 32) and masks.min() >= 0 and masks.max() <= 1
    with torch.no_grad():
        for i, cls in enumerate([1, 3]):
            probs = model(x[i] * masks[:, None]).softmax(1)[:, cls]
            ref = (probs[:, None, None] * masks).sum(0) / (70 * 0.4)
            torch.testing.assert_close(exp.raw[i, 0], ref, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(exp.maps[i], normalize_maps(ref))
    # masks: grid cells kept with probability p, a shift of less than one cell
    big = torch.cat(list(RISE(model, n_masks=512, p=0.4, cell_size=8).masks((32, 32))))
    assert abs(float(big.mean()) - 0.4) < 0.03


def test_rise_seeded_and_independent_of_batch_size() -> None:
    model = make_model("relu")
    x = inputs(2, 32)
    rng = torch.get_rng_state()
    a = cnnlens.explain(model, x, "rise", n_masks=100, seed=1, batch_size=64)
    b = cnnlens.explain(model, x, "rise", n_masks=100, seed=1, batch_size=9)
    c = cnnlens.explain(model, x, "rise", n_masks=100, seed=2, batch_size=9)
    assert torch.equal(torch.get_rng_state(), rng)
    torch.testing.assert_close(a.raw, b.raw, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(a.raw, c.raw)


def test_occlusion_by_hand_on_a_linear_model() -> None:
    """f(x) = sum(W * x): the drop of a window is the window's sum of W * (x - baseline)."""

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(
                torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * self.w).sum((1, 2, 3))[:, None]

    model = Linear()
    x = inputs(1, 6)
    exp = cnnlens.explain(model, x, "occlusion", target=0, window=4, stride=3, baseline=0.5)
    contrib = ((x - 0.5) * model.w.detach())[0].sum(0)  # (6, 6)
    total = torch.zeros(6, 6)
    count = torch.zeros(6, 6)
    for y0 in (0, 3):  # ceil((6 - 4) / 3) + 1 = 2 positions, the second cropped to 3 pixels
        for x0 in (0, 3):
            cover = torch.zeros(6, 6)
            cover[y0 : y0 + 4, x0 : x0 + 4] = 1
            total += cover * float((contrib * cover).sum())
            count += cover
    torch.testing.assert_close(exp.raw[0, 0], total / count, atol=1e-5, rtol=1e-5)
    assert torch.equal(exp.raw[0, 0], exp.raw[0, 2])


# ---------------------------------------------------------------------------------------------
# Batching, memory, K targets, state
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "opts"), FORWARD_METHODS)
def test_batched_equals_per_image(method: str, opts: dict) -> None:
    check_batched_equals_per_image(method, opts)


@pytest.mark.parametrize(("method", "opts"), FORWARD_METHODS)
def test_topk_shares_the_forwards_and_equals_one_class_at_a_time(method: str, opts: dict) -> None:
    model = make_model("gap")
    x = inputs(2, 32)
    count = MaxBatch(model)
    exp = cnnlens.explain(model, x, method, topk=3, **opts)
    calls_k3 = count.calls
    count.calls = 0
    one = cnnlens.explain(model, x, method, target=exp.targets[:, 1], **opts)
    count.handle.remove()
    assert calls_k3 <= count.calls + 1  # K classes from the same masked forwards
    assert exp.maps.shape == (2, 3, 32, 32)
    torch.testing.assert_close(exp.raw[:, 1], one.raw, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("optimize", [False, None])
@pytest.mark.parametrize(
    ("method", "opts", "rows"),
    [
        ("occlusion", {"window": 4, "stride": 2}, 3 * 15 * 15),
        ("rise", {"n_masks": 300}, 3 * 300),
        ("scorecam", {}, 3 * 16),
        ("ablationcam", {}, 3 * 16),
    ],
)
def test_memory_bounded_by_batch_size(
    method: str, opts: dict, rows: int, optimize: bool | None, monkeypatch
) -> None:
    model = make_model("relu")  # has BatchNorm: the optimized path runs a folded copy
    x = inputs(3, 32)
    sizes: list[int] = []
    if optimize is None:  # count what the batched forward feeds, whichever network runs it
        forward = BatchedForward.forward

        def record(self: BatchedForward, batch: torch.Tensor, **kw: object) -> object:
            sizes.append(int(batch.shape[0]))
            return forward(self, batch, **kw)

        monkeypatch.setattr(BatchedForward, "forward", record)
        count = None
    else:
        count = MaxBatch(model)
    cnnlens.explain(model, x, method, batch_size=5, optimize=optimize, **opts)
    if count is not None:
        count.handle.remove()
        sizes = [count.largest] * count.calls
    assert max(sizes) <= 5
    assert len(sizes) >= rows // 5 * 0.5


def test_scorecam_top_channels_and_multi_layer() -> None:
    model = make_model("relu")
    x = inputs(2, 32)
    count = MaxBatch(model)
    fast = ScoreCAM(model, layer="features.7", top_channels=4, batch_size=100, optimize=False)(x)
    count.handle.remove()
    assert count.largest == 2 * 4
    acts = {}
    h = model.features[7].register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        model(x)
    h.remove()
    var = acts["a"].flatten(2).var(2, unbiased=False)
    kept = var.topk(4, dim=1).indices
    # the map is a combination of the kept channels only
    for i in range(2):
        a = acts["a"][i]
        basis = a[kept[i]].flatten(1).T  # (hw, 4)
        sol = torch.linalg.lstsq(basis, fast.raw[i].flatten()[:, None]).solution
        torch.testing.assert_close(
            basis @ sol, fast.raw[i].flatten()[:, None], atol=1e-4, rtol=1e-3
        )
    multi = ScoreCAM(model, layer=["features.4", "features.7"], batch_size=64)(x)
    assert set(multi.per_layer) == {"features.4", "features.7"}
    assert multi.layer == "features.4+features.7"


class NaNWhenTopLeftMasked(nn.Module):
    """Returns NaN scores when the top-left pixel is at the baseline (zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_model("gap")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        hit = x[:, :, :2, :2].abs().amax(dim=(1, 2, 3)) < 1e-6
        return torch.where(hit[:, None], torch.full_like(out, float("nan")), out)


@pytest.mark.parametrize(
    ("method", "opts"),
    [
        ("occlusion", {"window": 8, "stride": 4}),
        ("rise", {"n_masks": 200, "cell_size": 4}),
        ("scorecam", {"layer": "net.features.1"}),
    ],
)
def test_non_finite_scores_warn_and_use_the_finite_ones(method: str, opts: dict) -> None:
    model = NaNWhenTopLeftMasked().eval()
    x = inputs(2, 32)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        exp = cnnlens.explain(model, x, method, target=1, **opts)
    assert torch.isfinite(exp.maps).all() and torch.isfinite(exp.raw).all()
    assert float(exp.maps.amax()) == 1.0
    if method == "occlusion":  # equals the mean over the windows that did not hit NaN
        ref = cnnlens.explain(model.net, x, method, target=1, **opts).raw
        far = (slice(None), slice(None), slice(12, None), slice(12, None))
        torch.testing.assert_close(exp.raw[far], ref[far])


class Boom(nn.Module):
    """Fails on its fourth forward pass (the middle of the batched forwards)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_model("relu")
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("boom")
        return self.net(x)


@pytest.mark.parametrize(("method", "opts"), FORWARD_METHODS)
def test_model_state_restored_after_error(method: str, opts: dict) -> None:
    model = Boom().train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        # optimize=False: a folded copy would have traced the Python counter away
        opts = {**opts, "batch_size": 2, "optimize": False}
        if method in ("scorecam", "ablationcam"):
            opts["layer"] = "net.features.7"
        cnnlens.explain(model, inputs(2, 32), method, **opts)
    assert_unchanged(model, before)


class ViewNet(nn.Module):
    """Flattens with .view, which refuses channels-last activations."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_channels_last_falls_back_for_models_that_refuse_it() -> None:
    model = ViewNet().eval()
    x = inputs(2, 16)
    with pytest.raises(RuntimeError):
        model(x.contiguous(memory_format=torch.channels_last))
    for method, opts in FORWARD_METHODS:
        if method in ("scorecam", "ablationcam"):
            opts = {**opts, "layer": "conv"}
        auto = cnnlens.explain(model, x, method, target=1, **opts)
        plain = cnnlens.explain(model, x, method, target=1, optimize=False, **opts)
        torch.testing.assert_close(auto.raw, plain.raw, atol=1e-5, rtol=1e-4)
    exp = cnnlens.explain(model, x, "integrated_gradients", n_steps=4, target=1)
    assert torch.isfinite(exp.raw).all()


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx could not trace it; the pairs found by hooks
    during a real forward fold it all the same."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_model("relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out if bool(x.mean() > -10) else -out


class ReadsConvTwice(nn.Module):
    """A convolution's output read by its BatchNorm and again after it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc((self.bn(y) + y).mean((2, 3)))


def test_batchnorm_folding_is_checked_and_optional(monkeypatch) -> None:
    import cnnlens.methods.engine as engine

    model = make_model("relu")
    x = inputs(2, 32)
    forward = BatchedForward(model, x, None)
    assert forward.fast is not None and forward.channels_last
    assert not any(isinstance(m, nn.BatchNorm2d) for m in forward.fast.modules())
    with torch.no_grad():
        forward.check(x, model(x))
        assert forward.fast is not None
        torch.testing.assert_close(forward(x), model(x), atol=1e-5, rtol=1e-4)
    branchy = Branchy().eval()
    folded = BatchedForward(branchy, x, None)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.fast.modules())
    with torch.no_grad():
        folded.check(x, branchy(x))
        torch.testing.assert_close(folded(x), branchy(x), atol=1e-5, rtol=1e-4)
    reread = ReadsConvTwice().eval()  # folding changes the convolution's other reader
    wrong = BatchedForward(reread, x, None)
    assert wrong.fast is not None
    with torch.no_grad():
        wrong.check(x, reread(x))
    assert wrong.fast is None
    plain = cnnlens.explain(model, x, "occlusion", window=8, optimize=False)
    fast = cnnlens.explain(model, x, "occlusion", window=8)
    torch.testing.assert_close(fast.raw, plain.raw, atol=1e-5, rtol=1e-4)

    def wrong_copy(net: nn.Module, x: torch.Tensor | None = None) -> nn.Module:
        twin = make_model("gap")  # another network: the check must refuse it
        return twin

    monkeypatch.setattr(engine, "folded_copy", wrong_copy)
    refused = BatchedForward(model, x, None)
    with torch.no_grad():
        refused.check(x, model(x))
    assert refused.fast is None
    torch.testing.assert_close(
        cnnlens.explain(model, x, "occlusion", window=8).raw, plain.raw, atol=1e-5, rtol=1e-4
    )


def test_progress_bar_runs(capsys) -> None:
    model = make_model("gap")
    exp = cnnlens.explain(model, inputs(1, 16), "occlusion", window=8, progress=True)
    assert exp.maps.shape == (1, 16, 16)
    assert capsys.readouterr().out == ""  # the bar goes to stderr, never stdout


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "opts", "word"),
    [
        ("occlusion", {"window": 40}, "window"),
        ("occlusion", {"window": (4, 40)}, "window"),
        ("occlusion", {"window": 0}, "window"),
        ("occlusion", {"window": 4, "stride": 6}, "stride"),
        ("occlusion", {"baseline": torch.zeros(2, 32, 32)}, "baseline"),
        ("occlusion", {"batch_size": 0}, "batch_size"),
        ("rise", {"n_masks": 0}, "n_masks"),
        ("rise", {"p": 1.5}, "p"),
        ("rise", {"cell_size": -2}, "cell_size"),
        ("scorecam", {"top_channels": 0}, "top_channels"),
        ("ablationcam", {"batch_size": 1.5}, "batch_size"),
        ("rise", {"optimize": "yes"}, "optimize"),
    ],
)
def test_bad_options_raise_one_line_input_error(method: str, opts: dict, word: str) -> None:
    model = make_model("gap")
    with pytest.raises(InputError, match=word) as info:
        cnnlens.explain(model, inputs(2, 32), method, **opts)
    assert "\n" not in str(info.value)


def test_maps_follow_the_contract() -> None:
    model = make_model("reused")
    x = inputs(2, 24)
    for method, opts in FORWARD_METHODS:
        exp = cnnlens.explain(model, x, method, **opts)
        assert exp.maps.shape == (2, 24, 24) and exp.maps.dtype == torch.float32
        assert float(exp.maps.min()) >= 0 and float(exp.maps.max()) <= 1
        assert exp.method == method
        if method in ("scorecam", "ablationcam"):
            assert exp.layer is not None and exp.raw.dim() == 3
            torch.testing.assert_close(
                exp.maps, normalize_maps(upsample(exp.raw.clamp(min=0), (24, 24)))
            )
        else:
            assert exp.layer is None and exp.raw.shape == (2, 3, 24, 24)
