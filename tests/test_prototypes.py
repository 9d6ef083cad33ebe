"""Class prototypes and activation maximization (cnnlens.prototypes, `cnnlens prototype`)."""

from __future__ import annotations

import json
import warnings

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.errors import InputError, LayerNotFoundError, TargetError
from cnnlens.prototypes import (
    L1,
    L2,
    Channel,
    ClassLogit,
    ClassProbability,
    Direction,
    Diversity,
    FourierImage,
    Jitter,
    Neuron,
    Pad,
    PixelImage,
    RandomRotate,
    TotalVariation,
    class_means,
    class_prototypes,
    color_correlation_sqrt,
    evaluate,
    gaussian_blur,
    parse_classes,
    visualize,
    visualize_channels,
    visualize_classes,
)
from cnnlens.prototypes.figures import diff_pil, save_prototypes, to_pil
from cnnlens.prototypes.objectives import capture_layers

# ---------------------------------------------------------------- helpers and fixtures


def _state(model: nn.Module) -> tuple[list[bool], list[bool], list[object], int]:
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        hooks,
    )


class Tiny(nn.Module):
    """conv 1x1 (1 -> 2 channels: x and -x) -> ReLU -> GAP -> linear (2 -> 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def mnist():
    """mnist-dnn trained briefly on mnist-embedded (Adam, 3 epochs: about 90 % test)."""
    from cnnlens.data import get_dataset
    from cnnlens.models import create

    train_set = get_dataset("mnist-embedded", split="train")
    x, y = train_set.tensors()
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create("mnist-dnn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model, train_set, class_means(train_set)


# ---------------------------------------------------------------- class prototypes


@pytest.fixture(scope="module")
def demo(mnist):
    """The report's demo: ten prototypes from zeros and an 8 turned into a 3 and a 1."""
    from cnnlens.prototypes.figures import demo_prototypes

    model, train_set, _ = mnist
    model.train()
    before = _state(model)
    result = demo_prototypes(model, train_set, source_class=8, targets=(3, 1))
    after = _state(model)
    model.eval()
    return result, before, after


def test_mnist_prototypes_reach_099_and_leave_model_alone(mnist, demo):
    model, train_set, _ = mnist
    result, before, after = demo
    assert before[:2] == after[:2] and after[3] == 0  # train flags, requires_grad, no hooks
    assert all(g is None for g in after[2])  # no parameter .grad written
    res = result.all_classes
    assert res.classes == list(range(10)) and res.class_names == train_set.classes
    assert res.probs.min() >= 0.99, res.probs
    assert res.predicted == list(range(10))
    assert 0 < res.steps < res.max_steps and bool(res.reached.all())
    # the probabilities reported are those of the returned (display-space) images
    with torch.no_grad():
        p = torch.softmax(model((res.images - 0.1307) / 0.3081), 1)
    assert torch.allclose(p[torch.arange(10), torch.arange(10)], res.probs, atol=1e-4)
    assert res.images.min() >= 0 and res.images.max() <= 1
    # early stop: the state before the last step had not reached the target yet
    assert res.history[-1] < 0.99 and len(res.history) == res.steps


def test_from_an_eight_to_three_and_one_stays_close_to_the_eight(mnist, demo):
    _, train_set, _ = mnist
    result = demo[0]
    labels = train_set.tensors()[1]
    assert result.source_index == int((labels == 8).nonzero()[0])
    eight = train_set[result.source_index][0] * 0.3081 + 0.1307  # display space
    turned, zero = result.from_image, result.all_classes
    assert turned.init == "image" and turned.classes == [3, 1]
    assert turned.probs.min() >= 0.99
    assert torch.allclose(turned.start, eight.expand(2, -1, -1, -1), atol=1e-6)
    assert torch.allclose(turned.diff, turned.images - turned.start)
    d_turned = (turned.images - eight).flatten(1).norm(dim=1)
    d_zero = (zero.images[[3, 1]] - eight).flatten(1).norm(dim=1)
    assert (d_turned < d_zero).all(), (d_turned, d_zero)
    assert torch.allclose(turned.distance_to_start(), d_turned, atol=1e-5)


def test_demo_pictures_and_files(demo, tmp_path):
    from cnnlens.report.content import Prototype

    result = demo[0]
    pics = result.pictures()
    assert len(pics) == 11 and all(isinstance(p, Prototype) for p in pics)
    assert pics[3].class_name == "3" and pics[3].index == 3 and "p = 0.99" in pics[3].caption
    assert pics[3].image.size == (112, 112)
    assert "what makes it 3 or 1" in pics[10].caption
    written = result.save(tmp_path)
    assert "all/grid.png" in written and "from_image/start.png" in written
    assert (tmp_path / "all" / "class_09_9.png").is_file()
    assert (tmp_path / "from_image" / "change_03_3.png").is_file()


def test_one_step_matches_hand_computed_adam_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    start = torch.full((1, 2, 2), 0.5)
    prior = torch.rand(2, 1, 2, 2)
    lam, lr = 0.3, 0.01
    with pytest.warns(UserWarning, match="did not reach"):
        res = class_prototypes(
            model, [1], prior=prior, lam=lam, lr=lr, init=start, steps=1, target_prob=1.0
        )
    w, b = model[1].weight.detach(), model[1].bias.detach()
    x = start.flatten()
    p = torch.softmax(w @ x + b, 0)
    grad = w.T @ (p - torch.tensor([0.0, 1.0])) + lam * 2 * (x - prior[1].flatten()) / 4
    # Adam's first step is lr * g / (|g| + eps) after bias correction
    expected = x - lr * grad / (grad.abs() + 1e-8)
    assert res.steps == 1
    assert torch.allclose(res.inputs.flatten(), expected, atol=1e-6)
    assert torch.allclose(res.images, res.inputs)  # preset None: display == model space
    # the start is kept as given (not the optimized tensor) and the diff is measured from it
    assert torch.equal(res.start[0], start) and not res.start.requires_grad
    torch.testing.assert_close(res.diff, res.images - start)


@pytest.mark.filterwarnings("ignore:classes 0 did not reach")
def test_noise_init_is_seeded_and_leaves_global_rng_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    state = torch.get_rng_state()
    a = class_prototypes(model, [0], init="noise", shape=(1, 4, 4), steps=3, seed=5)
    b = class_prototypes(model, [0], init="noise", shape=(1, 4, 4), steps=3, seed=5)
    c = class_prototypes(model, [0], init="noise", shape=(1, 4, 4), steps=3, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.start, b.start) and torch.equal(a.images, b.images)
    assert not torch.equal(a.start, c.start)
    assert 0.1 < float(a.start.std()) < 0.2 and abs(float(a.start.mean()) - 0.5) < 0.1


def test_works_inside_inference_mode():
    model = Tiny()
    with torch.inference_mode():
        res = class_prototypes(model, [0], shape=(1, 3, 3), init="noise", lr=0.1, target_prob=0.5)
        vis = visualize(model, Channel("relu", 1), (1, 3, 3), steps=3, transforms=None)
    assert res.probs.item() >= 0.5 and not res.images.is_inference()
    assert vis.images.shape == (1, 1, 3, 3) and _state(model)[3] == 0


def test_class_means_by_hand():
    data = torch.utils.data.TensorDataset(
        torch.tensor([[[[1.0]]], [[[3.0]]], [[[10.0]]]]), torch.tensor([0, 0, 2])
    )
    with pytest.warns(UserWarning, match=r"classes \[1\]"):
        means = class_means(data, 3)
    assert means[0].item() == 2.0 and means[2].item() == 10.0 and means[1].isnan().all()


def test_parse_classes():
    names = ["zero", "one", "two", "three"]
    assert parse_classes("0-2", None, 4) == [0, 1, 2]
    assert parse_classes("three,1", names, 4) == [3, 1]
    assert parse_classes([2, "zero"], names, 4) == [2, 0]
    assert parse_classes(None, None, 3) == [0, 1, 2]
    with pytest.raises(TargetError, match=r"'seven' is not known.*zero, one"):
        parse_classes("seven", names, 4)
    with pytest.raises(TargetError, match="out of range"):
        parse_classes("2-5", None, 4)


@pytest.mark.filterwarnings("ignore:classes 0 did not reach")
def test_prototype_bad_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(InputError, match="steps must be a positive integer, got 0"):
        class_prototypes(model, shape=(1, 4, 4), steps=0)
    with pytest.raises(TargetError, match="class index 3 is out of range"):
        class_prototypes(model, [3], shape=(1, 4, 4))
    with pytest.raises(InputError, match="init must be"):
        class_prototypes(model, [0], shape=(1, 4, 4), init="ones")
    with pytest.raises(InputError, match="display space"):
        class_prototypes(model, [0], init=torch.full((1, 4, 4), -2.0))
    with pytest.warns(UserWarning, match="8x8 but the model takes 4x4; resizing"):
        res = class_prototypes(model, [0], shape=(1, 4, 4), init=torch.rand(1, 8, 8), steps=2)
    assert res.start.shape == (1, 1, 4, 4)


# ---------------------------------------------------------------- objectives


def test_objective_values_by_hand():
    model = Tiny()
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]], [[[-1.0, -1.0], [2.0, 2.0]]]])
    # conv -> (x, -x); relu; means over the 2x2 map
    a0 = torch.tensor([(1 + 3) / 4, (2 + 2) / 4])  # mean relu(x)
    a1 = torch.tensor([2 / 4, 2 / 4])  # mean relu(-x)
    logits = torch.stack([a0, a1, a0 + a1 - 1], 1)
    assert torch.allclose(evaluate(model, Channel("conv", 0), x), torch.tensor([0.5, 0.5]))
    assert torch.allclose(evaluate(model, Channel("relu", [0, 1]), x), torch.tensor([1.0, 0.5]))
    assert torch.allclose(evaluate(model, Neuron("relu", 1, y=0, x=1), x), torch.tensor([2.0, 1]))
    assert torch.allclose(evaluate(model, Neuron("conv", 0), x), torch.tensor([0.0, 2.0]))
    d = evaluate(model, Direction("relu", [3.0, 4.0]), x)
    assert torch.allclose(d, 0.6 * a0 + 0.8 * a1)
    assert torch.allclose(evaluate(model, ClassLogit(2), x), logits[:, 2])
    p = evaluate(model, ClassProbability([0, 1]), x)
    assert torch.allclose(p, torch.softmax(logits, 1)[[0, 1], [0, 1]])
    lp = evaluate(model, ClassProbability(1, log=True), x)
    assert torch.allclose(lp, torch.log_softmax(logits, 1)[:, 1])
    combo = 2 * Channel("relu", 0) + ClassLogit(1) - 0.5 * Channel("relu", 1)
    assert torch.allclose(evaluate(model, combo, x), 2 * a0 + logits[:, 1] - 0.5 * a1)
    assert torch.allclose(evaluate(model, -ClassLogit(0), x), -logits[:, 0])
    assert sum([ClassLogit(0), ClassLogit(1)]).describe() == "logit[0] + logit[1]"
    assert (ClassLogit(0) - 0.5 * TotalVariation()).describe() == "logit[0] - 0.5*TotalVariation"


def test_image_penalties_and_diversity_by_hand():
    model = Tiny()
    img = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    # TV: vertical |1-0| + |0-1| = 2, horizontal 2, over 4 pixels
    assert evaluate(model, TotalVariation(), img).item() == pytest.approx(1.0)
    assert evaluate(model, L1(), img).item() == pytest.approx(0.5)
    assert evaluate(model, L2(center=0.0), img).item() == pytest.approx(0.5**0.5)
    same = torch.ones(2, 1, 2, 2)
    assert torch.allclose(evaluate(model, Diversity("relu"), same), torch.tensor([-1.0, -1.0]))
    # relu output of +1 / -1 images lives in different channels: orthogonal Gram matrices
    opposite = torch.stack([torch.ones(1, 2, 2), -torch.ones(1, 2, 2)])
    assert torch.allclose(evaluate(model, Diversity("relu"), opposite), torch.zeros(2))


def test_objective_errors_name_what_exists():
    model = Tiny()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(LayerNotFoundError, match=r"'cnv'.*conv"):
        evaluate(model, Channel("cnv", 0), x)
    with pytest.raises(InputError, match=r"index 5 is out of range; expected 0\.\.1"):
        evaluate(model, Channel("conv", 5), x)
    with pytest.raises(TargetError, match="target class 3 is out of range"):
        evaluate(model, ClassLogit(3), x)
    with pytest.raises(InputError, match="outside layer 'conv'"):
        evaluate(model, Neuron("conv", 0, y=4), x)
    with pytest.raises(InputError, match="has 3 entries but layer 'relu' has 2"):
        evaluate(model, Direction("relu", [1.0, 0, 0]), x)
    assert _state(model)[3] == 0


# ---------------------------------------------------------------- parameterizations


def test_fourier_parameterization_inverts_exactly():
    gen = torch.Generator().manual_seed(0)
    p = FourierImage((2, 1, 6, 8), generator=gen)
    target = torch.randn(2, 1, 6, 8)
    with torch.no_grad():
        spec = torch.fft.rfft2(target, norm="ortho") / p.scale
        p.spectrum.copy_(torch.view_as_real(spec))
    assert torch.allclose(p.linear(), target, atol=1e-5)
    assert torch.allclose(p.image(), torch.sigmoid(target), atol=1e-6)
    # the scale falls as 1/f: the lowest non-zero frequency weighs more than the highest
    assert p.scale[0, 1] > p.scale[3, 4]


def test_fourier_blur_matches_gaussian_blur_in_the_interior():
    gen = torch.Generator().manual_seed(0)
    p = FourierImage((1, 1, 32, 32), generator=gen, std=1.0)
    before = p.linear().detach()
    p.blur_(1.0)
    spatial = gaussian_blur(before, 1.0)
    # circular (Fourier) and reflect-padded (spatial) blurs agree away from the borders
    assert torch.allclose(p.linear()[..., 6:-6, 6:-6], spatial[..., 6:-6, 6:-6], atol=2e-2)
    assert p.linear().std() < before.std()


def test_colour_decorrelation():
    gen = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.3, 0.2]])
    rgb = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 3, 8, 8, generator=gen))
    m = color_correlation_sqrt(rgb)
    cov = torch.cov(rgb.permute(1, 0, 2, 3).reshape(3, -1))
    assert torch.allclose(m @ m.T, cov, atol=1e-4)
    p = PixelImage((1, 3, 4, 4), generator=gen, decorrelate=m)
    lin = p.linear()
    assert torch.allclose(p.image(), torch.sigmoid(torch.einsum("ij,bjhw->bihw", p.color, lin)))
    start = torch.rand(1, 3, 4, 4, generator=gen) * 0.9 + 0.05
    q = PixelImage((1, 3, 4, 4), generator=gen, decorrelate=True, init=start)
    assert torch.allclose(q.image(), start, atol=1e-5)


def test_transforms_are_seeded():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(Jitter(3)(x, g1), Jitter(3)(x, g2))
    assert Jitter(3)(x, g1).shape == (1, 1, 5, 5)
    padded = Pad(2)(x, g1)
    assert padded.shape == (1, 1, 12, 12) and padded[0, 0, 0, 0] == 0.5
    assert torch.allclose(RandomRotate(0)(x, g1), x)
    assert torch.allclose(RandomRotate(1e-6)(x, g1), x, atol=1e-3)


# ---------------------------------------------------------------- activation maximization


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


@pytest.mark.parametrize("param", ["fft", "pixel"])
def test_visualize_is_deterministic_raises_the_objective_and_restores(param):
    model = _small_cnn()
    model.train()
    before = _state(model)
    rng = torch.get_rng_state()
    opts = dict(param=param, steps=30, lr=0.05, tv=0.05, blur_every=10, seed=3)
    a = visualize_channels(model, "2", [0, 5], (3, 24, 24), **opts)
    b = visualize_channels(model, "2", [0, 5], (3, 24, 24), **opts)
    c = visualize_channels(model, "2", [0, 5], (3, 24, 24), **{**opts, "seed": 4})
    assert torch.equal(torch.get_rng_state(), rng)
    assert _state(model)[:2] == before[:2] and _state(model)[3] == 0
    assert all(g is None for g in _state(model)[2])
    assert torch.equal(a.images, b.images) and a.history == b.history
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (2, 3, 24, 24) and a.images.min() >= 0 and a.images.max() <= 1
    assert a.labels == ["2:0", "2:5"]
    # the optimized images excite their channel more than a grey image does
    grey = evaluate(model, Channel("2", [0, 5]), torch.full((2, 3, 24, 24), 0.5))
    assert (a.values > grey).all()
    assert a.history[-1] > a.history[0]


def test_visualize_classes_and_diversity_run_under_no_grad():
    # class c = the mean of colour channel c minus the others': reachable by a pure colour
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        model[2].weight.copy_(4 * (3 * torch.eye(3) - 1))
        model[2].bias.zero_()
    with torch.no_grad():
        res = visualize_classes(model, [0, 1, 2], (3, 16, 16), steps=150, lr=0.1, tv=0.05)
    assert res.probs is not None
    assert res.probs.argmax(1).tolist() == [0, 1, 2]
    assert (res.probs.diagonal() > 0.9).all()
    # each class image is dominated by its own colour channel
    assert res.images.mean((2, 3)).argmax(1).tolist() == [0, 1, 2]
    assert torch.allclose(res.values, res.probs.diagonal().log(), atol=1e-5)
    cnn = _small_cnn()
    div = visualize(
        cnn, Channel("2", 1), (3, 16, 16), batch=3, steps=5, diversity=0.5, transforms=None
    )
    assert div.images.shape == (3, 3, 16, 16)
    assert "diversity(2)" in div.objective


def test_redirected_relu_gradient_and_a_dead_channel_starts():
    from cnnlens.prototypes.maximize import _RedirectedReLU

    x = torch.tensor([-1.0, 2.0, -3.0, 0.5], requires_grad=True)
    y = _RedirectedReLU.apply(x)
    assert torch.equal(y, torch.relu(x))
    (g,) = torch.autograd.grad(y, x, torch.tensor([-1.0, -1.0, 1.0, 2.0]))
    # passed where the unit is on (x > 0) or where the loss asks for a larger input (g < 0)
    assert torch.equal(g, torch.tensor([-1.0, -1.0, 0.0, 2.0]))
    # a unit that is off on the whole start image: x - 0.9 < 0 for grey images
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(-0.9)
    opts = dict(param="pixel", steps=40, lr=0.1, transforms=None)
    dead = visualize_channels(model, "1", [0], (1, 4, 4), redirect_relu=0, **opts)
    alive = visualize_channels(model, "1", [0], (1, 4, 4), **opts)
    assert dead.values.item() == 0.0
    assert alive.values.item() > 0.01
    assert _state(model)[3] == 0


def test_visualize_bad_input_leaves_no_hooks():
    model = _small_cnn()
    with pytest.raises(InputError, match="channel of layer '2': index 8 is out of range"):
        visualize_channels(model, "2", [8], (3, 8, 8), steps=2)
    with pytest.raises(LayerNotFoundError, match="'9' not found"):
        visualize_channels(model, "9", [0], (3, 8, 8), steps=2)
    with pytest.raises(InputError, match="steps must be a positive integer"):
        visualize(model, Channel("2", 0), (3, 8, 8), steps=0)
    with pytest.raises(InputError, match="param must be one of"):
        visualize(model, Channel("2", 0), (3, 8, 8), param="dct")
    assert _state(model)[3] == 0 and all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- pictures and files


@pytest.mark.filterwarnings("ignore:classes 0 did not reach")
def test_pictures_and_files(tmp_path):
    img = torch.zeros(1, 28, 28)
    img[0, 0, 0] = 1.0
    pil = to_pil(img)
    assert pil.size == (112, 112) and pil.getpixel((0, 0)) == 255 and pil.getpixel((4, 0)) == 0
    d = torch.zeros(1, 2, 2)
    d[0, 0, 0] = -0.5
    dp = diff_pil(d, min_side=2)
    bwr = matplotlib.colormaps["bwr"]
    centre = tuple(round(255 * v) for v in bwr(0.5)[:3])
    assert dp.getpixel((1, 1)) == centre  # no change: the (white) centre of bwr
    assert dp.getpixel((0, 0)) == (0, 0, 255)  # the largest darkening: the blue end
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    res = class_prototypes(model, [0, 2], init=torch.rand(1, 4, 4), steps=2, target_prob=0.34)
    written = save_prototypes(res, tmp_path / "out")
    assert set(written) == {
        "grid.png",
        "class_00_0.png",
        "class_02_2.png",
        "change_00_0.png",
        "change_02_2.png",
        "start.png",
        "prototypes.json",
    }
    data = json.loads((tmp_path / "out" / "prototypes.json").read_text())
    assert [c["index"] for c in data["classes"]] == [0, 2]
    assert data["classes"][1]["prob"] == pytest.approx(float(res.probs[1]))
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_no_warnings_from_a_clean_run():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_prototypes(model, [0], shape=(1, 4, 4), steps=200, target_prob=0.5, lr=0.1)


# ---------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def checkpoint(mnist, tmp_path_factory):
    from cnnlens.models import save_checkpoint

    model, train_set, _ = mnist
    folder = tmp_path_factory.mktemp("ckpt")
    path = save_checkpoint(
        model,
        folder / "model.safetensors",
        arch="mnist-dnn",
        class_names=train_set.classes,
        input_size=(28, 28),
        preset="mnist",
        dataset="mnist-embedded",
    )
    eight = train_set.tensors()[1].eq(8).nonzero()[0].item()
    train_set.image(eight).resize((56, 56)).save(folder / "eight56.png")
    return path, folder / "eight56.png"


def _cli(args, capsys):
    from cnnlens.cli.main import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_prototype_from_a_resized_image(checkpoint, tmp_path, capsys):
    from PIL import Image

    ckpt, eight = checkpoint
    out = tmp_path / "protos"
    args = ["prototype", "--model", ckpt, "--classes", "3,1", "--init", eight, "--out", out]
    rc, stdout, stderr = _cli([*args, "--no-progress"], capsys)
    assert rc == 0, stderr
    assert "warning: init image is 56x56 but the model takes 28x28; resizing it" in stderr
    data = json.loads((out / "prototypes.json").read_text())
    assert data["init"] == "image" and data["lambda"] == 0.1 and data["all_reached"]
    assert [c["index"] for c in data["classes"]] == [3, 1]
    assert min(c["prob"] for c in data["classes"]) >= 0.99
    assert 0 < data["steps"] < 1000
    for name in ("grid.png", "start.png", "class_03_3.png", "change_01_1.png"):
        assert (out / name).is_file()
    assert Image.open(out / "class_03_3.png").size == (112, 112)
    assert "3  p = 0.99" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prototype", "--steps", "0"], "--steps must be a positive integer, got 0"),
        (["prototype", "--classes", "seven"], "class 'seven' is not known to the model"),
        (["prototype", "--classes", "12"], "class index 12 is out of range"),
        (["prototype", "--init", "missing.png"], "'missing.png' does not exist"),
        (["visualize", "--layer", "fc9"], "layer 'fc9' not found in MnistDNN; nearest"),
        (["visualize", "--layer", "fc2", "--channels", "100"], "layer 'fc2' has 100 channels"),
        (["visualize", "--class", "3", "--param", "dct"], "--param must be one of 'fft', 'pixel'"),
        (
            ["visualize", "--class", "3", "--transforms", "rot"],
            "--transforms must be one of 'standard'",
        ),
        (["visualize"], "give --layer"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    rc, _, stderr = _cli([*args, "--model", checkpoint[0], "--out", out, "--no-progress"], capsys)
    assert rc == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr
    assert not out.exists()


def test_cli_prototype_needs_a_dataset_for_the_prior(tmp_path, capsys):
    from cnnlens.models import create, save_checkpoint

    ckpt = save_checkpoint(create("mnist-dnn"), tmp_path / "m.safetensors", arch="mnist-dnn")
    rc, _, stderr = _cli(["prototype", "--model", ckpt, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "records no dataset; pass --dataset NAME, or --lambda 0" in stderr


def test_cli_visualize_channels_and_classes(checkpoint, tmp_path, capsys):
    ckpt = checkpoint[0]
    base = ["--model", ckpt, "--steps", "5", "--no-progress"]
    rc, _, err = _cli(["visualize", *base, "--layer", "fc2", "--out", tmp_path / "c"], capsys)
    assert rc == 0, err
    data = json.loads((tmp_path / "c" / "visualizations.json").read_text())
    assert [i["label"] for i in data["images"]] == [f"fc2:{i}" for i in range(16)]
    assert (tmp_path / "c" / "image_015_fc2-15.png").is_file()
    rc, _, err = _cli(
        ["visualize", *base, "--class", "2,7", "--param", "pixel", "--out", tmp_path / "k"],
        capsys,
    )
    assert rc == 0, err
    data = json.loads((tmp_path / "k" / "visualizations.json").read_text())
    assert [i["label"] for i in data["images"]] == ["2", "7"]
    assert all(0 <= i["class_prob"] <= 1 for i in data["images"])


# ---------------------------------------------------------------- gap-cnn on shapes


@pytest.mark.slow
def test_shapes_gap_cnn_channels_and_classes():
    """gap-cnn briefly trained on 32x32 shapes (about 92 % test accuracy): channel and class
    visualizations."""
    from cnnlens.data import get_dataset
    from cnnlens.models import create
    from cnnlens.training import train

    train_set = get_dataset("shapes", split="train", n=2000, size=32)
    test_set = get_dataset("shapes", split="test", n=300, size=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create("gap-cnn")
    train(model, train_set, epochs=6, lr=2e-3, batch_size=32, optimizer="adam", seed=0)
    model.eval()
    x = test_set.tensors()[0]
    layer, channels = "features.block4", list(range(64))
    with torch.no_grad(), capture_layers(model, [layer]) as (captured, _):
        model(x)
    acts = captured[layer].mean((2, 3)).T[channels]  # (channels, N images)
    opts = dict(steps=512, lr=0.05, seed=0, transforms="none")
    res = visualize_channels(model, layer, channels, (3, 32, 32), **opts)
    assert torch.allclose(evaluate(model, Channel(layer, 5), x), acts[5], atol=1e-5)
    mean, top = acts.mean(1), acts.max(1).values
    ratio = res.values / mean
    # every visualization excites its channel more than any test image does ...
    assert (res.values > top).all()
    # ... and by 10x its test-set mean wherever that is possible: a channel whose mean over
    # the test set is already above half its maximum fires on every image, and the pixel
    # range caps it near 10x (docs/prototypes.md, recorded run)
    selective = mean < 0.5 * top
    assert selective.float().mean() >= 0.9
    assert (ratio[selective] >= 10).all(), ratio
    few = {"steps": 20, "transforms": "standard"}  # random transforms: same seed, same images
    a = visualize_channels(model, layer, [3, 9], (3, 32, 32), **{**opts, **few})
    b = visualize_channels(model, layer, [3, 9], (3, 32, 32), **{**opts, **few})
    assert torch.equal(a.images, b.images)  # the same seed, the same images
    classes = visualize_classes(model, range(5), (3, 32, 32), tv=0.1, steps=256, lr=0.1)
    assert min(classes.class_probs()) >= 0.9, classes.class_probs()
