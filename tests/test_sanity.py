"""cnnlens.metrics sanity checks (Adebayo et al. 2018) and the similarity measures they use.

An explain_fn whose map does not depend on the weights (an edge detector on the input) must
fail the cascading randomization; the input gradient must pass; the user's model must be
left exactly as it was.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens import metrics as M
from cnnlens.errors import InputError, LayerNotFoundError

# --------------------------------------------------------------------------- fixtures


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def images(seed: int = 1, n: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g)


def gradient(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """Saliency: the gradient of the target's logit with respect to the input."""
    x = x.clone().requires_grad_(True)
    score = model(x).gather(1, targets.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad


def edges(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """A Sobel edge detector on the input: a 'map' that ignores the model."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    gx = F.conv2d(x, k.view(1, 1, 3, 3), padding=1)
    gy = F.conv2d(x, k.t().reshape(1, 1, 3, 3), padding=1)
    return (gx.square() + gy.square()).sqrt()[:, 0]


def snapshot(model: nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.grad for p in model.parameters()],
    )


def assert_unchanged(model: nn.Module, before: tuple) -> None:
    after = snapshot(model)
    assert after[0] == before[0] and after[1] == before[1]
    assert all(torch.equal(after[2][k], v) for k, v in before[2].items())
    assert all(g is None for g in after[3])


# --------------------------------------------------------------------------- similarity


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 6, 6), generator=g).float()  # many ties
    b = a + torch.randn(4, 6, 6, generator=g)
    ours = M.spearman(a, b)
    for i in range(4):
        ref = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)
    assert M.spearman(a, a).tolist() == pytest.approx([1.0] * 4)
    assert M.spearman(a, -a).tolist() == pytest.approx([-1.0] * 4)
    assert M.spearman(torch.ones(1, 3, 3), a[:1, :3, :3]).item() == 0.0  # constant: 0


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 16, 20, generator=g)
    b = (a + 0.2 * torch.randn(3, 16, 20, generator=g)).clamp(0, 1)
    ours = M.ssim(a, b)
    for i in range(3):
        ref = skm.structural_similarity(
            a[i].double().numpy(),
            b[i].double().numpy(),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)
    assert M.ssim(a, a).tolist() == pytest.approx([1.0] * 3)


# --------------------------------------------------------------------------- model randomization


def test_edge_detector_fails_gradient_passes_and_model_is_unchanged():
    model = tiny_net()
    model.train()  # a flag the check must restore
    x = images()
    before = snapshot(model)
    rng_before = torch.random.get_rng_state()

    bad = M.cascading_randomization(model, x, edges)
    assert bad.steps == ["original", "head", "conv2", "conv1"]
    for sim in (bad.spearman, bad.spearman_abs, bad.ssim):
        assert torch.allclose(sim, torch.ones_like(sim), atol=1e-6)
    assert bad.final == pytest.approx(1.0) and bad.passed is False

    good = M.cascading_randomization(model, x, gradient)
    assert good.method == "gradient" and good.mode == "cascading"
    assert good.spearman[0].tolist() == pytest.approx([1.0] * 3)  # deterministic method
    assert good.final < 0.5 and good.passed is True
    assert good.spearman_abs.shape == (4, 3) and good.ssim.shape == (4, 3)

    assert_unchanged(model, before)
    assert torch.equal(torch.random.get_rng_state(), rng_before)


def test_cascading_keeps_earlier_layers_random_and_independent_restores_them():
    model = tiny_net()
    x = images(n=2)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: list[set[str]] = []

    def recorder(m: nn.Module, xb: Tensor, targets: Tensor) -> Tensor:
        changed = {
            n.split(".")[0] for n, p in m.named_parameters() if not torch.equal(p, original[n])
        }
        seen.append(changed)
        return gradient(m, xb, targets)

    M.cascading_randomization(model, x, recorder)
    # reference, original, then head, head+conv2, head+conv2+conv1
    assert seen == [set(), set(), {"head"}, {"head", "conv2"}, {"head", "conv2", "conv1"}]
    seen.clear()
    res = M.independent_randomization(model, x, recorder)
    assert seen == [set(), set(), {"head"}, {"conv2"}, {"conv1"}]
    assert res.passed is None and res.mode == "independent"


def test_randomization_is_seeded_and_layers_can_be_chosen():
    model = tiny_net()
    x = images()
    a = M.cascading_randomization(model, x, gradient, seed=3, layers=["head", model.conv1])
    b = M.cascading_randomization(model, x, gradient, seed=3, layers=["head", "conv1"])
    assert a.steps == ["original", "head", "conv1"]
    assert torch.equal(a.spearman, b.spearman)
    c = M.cascading_randomization(model, x, gradient, seed=4, layers=["head", "conv1"])
    assert not torch.equal(a.spearman, c.spearman)
    with pytest.raises(LayerNotFoundError):
        M.cascading_randomization(model, x, gradient, layers=["conv9"])
    with pytest.raises(InputError, match="criterion"):
        M.cascading_randomization(model, x, gradient, criterion="pearson")


def test_randomize_uses_reset_parameters_and_normal_fallback():
    class Scale(nn.Module):  # a parameter without reset_parameters
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.full((50,), 2.0))

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.fill_(3.0)
        bn.running_mean.fill_(5.0)
    M.randomize_(bn)
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.running_mean, torch.zeros(4))
    s = Scale()
    M.randomize_(s)
    assert abs(s.gamma.mean().item()) < 0.1  # zero-mean normal draw (std 0.02: constant)


def test_registered_method_by_name():
    from cnnlens import list_methods

    if "gradcam" not in list_methods():
        pytest.skip("gradcam is not registered")
    model = tiny_net()
    x = images(n=2)
    before = snapshot(model)
    res = M.cascading_randomization(model, x, "gradcam", output="maps", layer="conv2")
    assert res.method == "gradcam" and res.steps[0] == "original"
    assert res.spearman[0].tolist() == pytest.approx([1.0, 1.0])
    assert isinstance(res.passed, bool)
    assert_unchanged(model, before)
    with pytest.raises(InputError, match="explain_fn takes none"):
        M.cascading_randomization(model, x, gradient, layer="conv2")


def test_plot_returns_a_figure_without_pyplot_state():
    plt = pytest.importorskip("matplotlib.pyplot")
    from matplotlib.figure import Figure

    res = M.cascading_randomization(tiny_net(), images(n=2), gradient)
    open_before = plt.get_fignums()
    fig = res.plot()
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == open_before
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # three similarities and the threshold
    np.testing.assert_allclose(ax.lines[0].get_ydata(), res.spearman.mean(1).numpy(), atol=1e-6)
    d = res.to_dict()
    assert d["steps"] == res.steps and d["passed"] is True


def test_bad_method_output_raises():
    model = tiny_net()
    with pytest.raises(InputError, match="NaN"):
        M.cascading_randomization(
            model, images(), lambda m, x, t: torch.full((3, 8, 8), float("nan"))
        )
    with pytest.raises(InputError, match="maps"):
        M.cascading_randomization(model, images(), lambda m, x, t: torch.zeros(5))
    with pytest.raises(InputError, match="method"):
        M.cascading_randomization(model, images(), 42)


# --------------------------------------------------------------------------- data randomization


def test_data_randomization_with_hand_made_models():
    trained, other = tiny_net(0), tiny_net(5)
    x = images()
    same = M.data_randomization(trained, trained, x, gradient)
    assert same.steps == ["original", "permuted labels"]
    assert same.final == pytest.approx(1.0) and same.passed is False
    diff = M.data_randomization(trained, other, x, gradient)
    assert diff.passed is True and diff.final < 0.5
    edge = M.data_randomization(trained, other, x, edges)
    assert edge.passed is False


def test_permuted_labels_keep_images_and_label_counts():
    data = [(torch.full((1, 2, 2), float(i)), i % 3) for i in range(30)]
    perm = M.PermutedLabels(data, seed=0)
    assert len(perm) == 30
    labels = [perm[i][1] for i in range(30)]
    assert sorted(labels) == sorted(lbl for _, lbl in data)
    assert labels != [lbl for _, lbl in data]
    assert all(torch.equal(perm[i][0], data[i][0]) for i in range(30))
    assert [perm[i][1] for i in range(30)] == [
        M.PermutedLabels(data, seed=0)[i][1] for i in range(30)
    ]


def test_train_on_permuted_labels_trains_a_copy():
    pytest.importorskip("cnnlens.training")
    data = [(torch.randn(1, 8, 8), i % 3) for i in range(24)]
    model = tiny_net()
    before = snapshot(model)
    trained = M.train_on_permuted_labels(model, data, epochs=1, lr=0.05, batch_size=8)
    assert_unchanged(model, before)
    assert trained is not model
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), trained.parameters()))
    res = M.data_randomization(model, trained, images(), gradient)
    assert res.mode == "data" and isinstance(res.passed, bool)


# --------------------------------------------------------------------------- the verdict


@pytest.mark.parametrize(
    ("values", "outcome"),
    [
        ([0.2, 0.3, 0.25], "passes"),
        ([0.6, 0.7, 0.65], "fails"),
        ([0.3, 0.7], "inconclusive"),  # the interval spans the threshold
        ([0.3], "inconclusive"),  # one image gives no interval
    ],
)
def test_cascade_verdict_rule(values: list[float], outcome: str) -> None:
    from cnnlens.metrics.sanity import verdict_from_upper

    v = verdict_from_upper("m", values, final=0.1, threshold=0.5, layers=4)
    assert v.outcome == outcome and v.n == len(values)
    assert v.passed is {"passes": True, "fails": False}.get(outcome)
    assert v.upper == pytest.approx(sum(values) / len(values))
    assert f"n = {len(values)} images" in v.detail and "upper 2 of 4 layers" in v.detail
    if len(values) > 1:  # a percentile interval stays within the values, so within [0, 1]
        assert min(values) <= v.low <= v.upper <= v.high <= max(values)
        assert f"[{v.low:.3f}, {v.high:.3f}]" in v.detail


def test_cascade_verdict_reads_the_signed_upper_half() -> None:
    from cnnlens.metrics.sanity import VERDICT_CRITERION, cascade_verdict, upper_similarity

    res = M.cascading_randomization(tiny_net(), images(), gradient, criterion=VERDICT_CRITERION)
    v = cascade_verdict(res)
    u = res.spearman[1:].abs()[:2].mean(0)  # 3 layers: the upper 2 count
    assert torch.allclose(upper_similarity(res), u.double())
    assert v.upper == pytest.approx(float(u.mean()), abs=1e-6) and v.layers == 3 and v.n == 3
    assert v.final == pytest.approx(res.final)
    with pytest.raises(InputError, match="cascading"):
        cascade_verdict(M.independent_randomization(tiny_net(), images(), gradient))
