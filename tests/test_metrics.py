"""cnnlens.metrics: faithfulness, localization, complexity, baselines and aggregation.

Hand-computed values on tiny inputs, and peers as oracles: quantus 0.6 for the pointing game,
relevance mass and rank accuracy, sparseness and complexity; pytorch-grad-cam for ROAD and
its noisy linear imputer.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens import metrics as M
from cnnlens.errors import InputError, TargetError

# --------------------------------------------------------------------------- helpers


def linear_model(w: list[float], other: float = 0.0) -> nn.Module:
    """Two classes on a 1 x 2 x 2 image: logit0 = w . x, logit1 = ``other``."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(len(w), 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([w, [0.0] * len(w)]))
        model[1].bias.copy_(torch.tensor([0.0, other]))
    return model


def tiny_cnn(seed: int = 0, in_ch: int = 3, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_ch, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, classes),
    )


def state_of(model: nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.grad for p in model.parameters()],
    )


def assert_same_state(model: nn.Module, before: tuple) -> None:
    after = state_of(model)
    assert after[0] == before[0]
    assert after[1] == before[1]
    for k, v in before[2].items():
        assert torch.equal(after[2][k], v), k
    assert all(g is None for g in after[3])


# A 4 x 4 map and a 3-pixel mask used by several hand-computed checks.
MAP = torch.tensor(
    [
        [0.0, 0.1, 0.2, 0.0],
        [0.0, 0.9, 0.5, 0.0],
        [0.0, 0.3, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
)
MASK = torch.zeros(4, 4, dtype=torch.bool)
MASK[1, 1] = MASK[2, 1] = MASK[3, 3] = True


# --------------------------------------------------------------------------- localization


def test_map_equal_to_mask_scores_one_and_reverse_scores_zero():
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[0, 1:3, 2:5] = True
    mask[1, 4:, :2] = True
    on, off = mask.float(), (~mask).float()
    for fn in (M.pointing_game, M.energy_pointing_game, M.relevance_rank_accuracy, M.iou):
        assert fn(on, mask).tolist() == [1.0, 1.0], fn.__name__
        assert fn(off, mask).tolist() == [0.0, 0.0], fn.__name__


def test_localization_hand_computed():
    # Maximum 1.0 at (2, 2), outside the mask: a miss.
    assert M.pointing_game(MAP, MASK).item() == 0.0
    # Mass inside: 0.9 + 0.3 + 0 = 1.2 of 3.0 in all.
    assert M.energy_pointing_game(MAP, MASK).item() == pytest.approx(1.2 / 3.0)
    # K = 3: the top three are 1.0, 0.9, 0.5 -> one of them (0.9) in the mask.
    assert M.relevance_rank_accuracy(MAP, MASK).item() == pytest.approx(1 / 3)
    # Threshold 0.5 * 1.0: {1.0, 0.9, 0.5}; intersection {0.9}; union 3 + 3 - 1 = 5.
    assert M.iou(MAP, MASK).item() == pytest.approx(1 / 5)
    # Threshold 0.25: {1.0, 0.9, 0.5, 0.3}; intersection 2; union 4 + 3 - 2 = 5.
    assert M.iou(MAP, MASK, threshold=0.25).item() == pytest.approx(2 / 5)


def test_pointing_game_tolerance_is_euclidean_distance():
    m = torch.zeros(9, 9)
    m[4, 4] = 1.0
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[4, 6] = True  # two pixels to the right of the maximum
    diag = torch.zeros(9, 9, dtype=torch.bool)
    diag[5, 5] = True  # distance sqrt(2)
    assert M.pointing_game(m, mask, tolerance=1).item() == 0.0
    assert M.pointing_game(m, mask, tolerance=2).item() == 1.0
    assert M.pointing_game(m, diag, tolerance=1).item() == 0.0
    assert M.pointing_game(m, diag, tolerance=1.5).item() == 1.0


def test_constant_map_scores_chance_everywhere():
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[:2, :3] = True  # 6 of 25 pixels
    for value in (0.0, 0.7):
        m = torch.full((5, 5), value)
        for fn in (M.pointing_game, M.energy_pointing_game, M.relevance_rank_accuracy, M.iou):
            assert fn(m, mask).item() == pytest.approx(6 / 25), (fn.__name__, value)


def test_ties_are_scored_as_expected_value():
    m = torch.tensor([[1.0, 1.0, 0.5, 0.5]])
    mask = torch.tensor([[True, False, True, False]])
    # Two tied maxima, one inside: half a hit.
    assert M.pointing_game(m, mask).item() == 0.5
    # K = 2, both top pixels tied at 1.0: one inside.
    assert M.relevance_rank_accuracy(m, mask).item() == 0.5
    m2 = torch.tensor([[1.0, 0.5, 0.5, 0.5]])
    mask2 = torch.tensor([[False, True, True, False]])
    # K = 2: 1.0 (outside) then one of three tied 0.5's, two of which are inside: 2/3 hit.
    assert M.relevance_rank_accuracy(m2, mask2).item() == pytest.approx((2 / 3) / 2)


def test_empty_mask_warns_and_gives_nan():
    maps = torch.rand(2, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    with pytest.warns(UserWarning, match="empty ground-truth mask"):
        out = M.pointing_game(maps, masks)
    assert not math.isnan(out[0].item()) and math.isnan(out[1].item())


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        (torch.ones(4, 5, dtype=torch.bool), "size"),
        (torch.full((4, 4), 0.5), "binary"),
        (torch.ones(3, 4, 4), "3 masks"),
    ],
)
def test_bad_masks_raise(masks, match):
    with pytest.raises(InputError, match=match):
        M.pointing_game(torch.rand(2, 4, 4), masks)


def test_bad_maps_raise():
    bad = torch.rand(2, 4, 4)
    bad[1, 2, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        M.iou(bad, torch.ones(4, 4))
    with pytest.raises(InputError, match="one map per image"):
        M.iou(torch.rand(2, 3, 4, 4), torch.ones(4, 4))
    with pytest.raises(InputError, match="non-negative"):
        M.energy_pointing_game(torch.rand(4, 4) - 0.5, torch.ones(4, 4))
    with pytest.raises(InputError, match="threshold"):
        M.iou(torch.rand(4, 4), torch.ones(4, 4), threshold=1.5)


def test_masks_accept_01_numbers_and_channel_axis():
    a = M.relevance_rank_accuracy(MAP.unsqueeze(0), MASK.float().view(1, 1, 4, 4))
    assert a.item() == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- complexity


def test_sparseness_hand_computed():
    n = 16
    one_hot = torch.zeros(4, 4)
    one_hot[1, 2] = 5.0
    assert M.sparseness(one_hot).item() == pytest.approx(1 - 1 / n)
    assert M.sparseness(torch.full((4, 4), 0.3)).item() == pytest.approx(0.0, abs=1e-7)
    assert M.sparseness(torch.zeros(4, 4)).item() == 0.0
    # sorted (0, 0, 1, 3): (1 * 1 + 3 * 3) / (4 * 4)
    assert M.sparseness(torch.tensor([[3.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(10 / 16)
    # absolute values: the same map with signs scores the same
    assert M.sparseness(torch.tensor([[-3.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(10 / 16)


def test_entropy_hand_computed():
    one_hot = torch.zeros(3, 3)
    one_hot[0, 0] = 2.0
    assert M.entropy(one_hot).item() == pytest.approx(0.0, abs=1e-7)
    assert M.entropy(torch.ones(3, 3)).item() == pytest.approx(math.log(9))
    assert M.entropy(torch.ones(3, 3), normalized=True).item() == pytest.approx(1.0)
    # p = (1/4, 1/4, 1/2, 0): H = 1.5 ln 2
    m = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    assert M.entropy(m).item() == pytest.approx(1.5 * math.log(2))
    assert M.entropy(torch.zeros(2, 2)).item() == pytest.approx(math.log(4))


# --------------------------------------------------------------------------- quantus oracle


def test_localization_and_complexity_agree_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(0)
    b, h, w = 8, 10, 10
    x = rng.normal(size=(b, 1, h, w)).astype(np.float32)
    y = np.zeros(b, dtype=int)
    a = rng.random((b, 1, h, w)).astype(np.float32)
    s = (rng.random((b, 1, h, w)) > 0.6).astype(np.float32)
    a[0, 0, 2, 3] = 2.0  # a clear maximum on a known pixel
    s[0, 0, 2, 3] = 1.0
    maps, masks = torch.from_numpy(a[:, 0]), torch.from_numpy(s[:, 0]).bool()
    kw = {"abs": False, "normalise": False, "disable_warnings": True}
    pairs = [
        (quantus.PointingGame, M.pointing_game),
        (quantus.RelevanceMassAccuracy, M.energy_pointing_game),
        (quantus.RelevanceRankAccuracy, M.relevance_rank_accuracy),
        (quantus.Sparseness, lambda m, _s: M.sparseness(m)),
        (quantus.Complexity, lambda m, _s: M.entropy(m)),
    ]
    for cls, ours in pairs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = cls(**kw)(model=None, x_batch=x, y_batch=y, a_batch=a.copy(), s_batch=s)
        ref = np.asarray(ref, dtype=np.float64)
        got = ours(maps, masks).double().numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=cls.__name__)
    assert M.pointing_game(maps, masks)[0].item() == 1.0


# --------------------------------------------------------------------------- deletion / insertion

X4 = torch.ones(1, 1, 2, 2)
W4 = [1.0, 2.0, 3.0, 4.0]
ORDER_MAP = torch.tensor([[[0.1, 0.4], [0.3, 0.2]]])  # deletes pixels 1, 2, 3, 0


def test_deletion_on_linear_model_hand_computed():
    model = linear_model(W4)
    res = M.deletion(model, X4, ORDER_MAP, target=0, step=1, activation=None)
    assert res.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # logit0 = sum of w over the pixels still present: 10, 10-2, 8-3, 5-4, 1-1
    assert res.scores[0].tolist() == pytest.approx([10, 8, 5, 1, 0])
    assert res.original.tolist() == pytest.approx([10.0])
    assert res.auc.item() == pytest.approx(0.25 * (9 + 6.5 + 3 + 0.5))
    # three pixels per step: 0, 3 then all 4 pixels removed
    res3 = M.deletion(model, X4, ORDER_MAP, target=0, step=3, activation=None)
    assert res3.fractions.tolist() == [0.0, 0.75, 1.0]
    assert res3.scores[0].tolist() == pytest.approx([10, 1, 0])
    assert res3.auc.item() == pytest.approx(0.75 * 5.5 + 0.25 * 0.5)


def test_insertion_on_linear_model_hand_computed():
    model = linear_model(W4)
    res = M.insertion(model, X4, ORDER_MAP, target=0, step=1, substrate="zero", activation=None)
    assert res.scores[0].tolist() == pytest.approx([0, 2, 5, 9, 10])
    assert res.auc.item() == pytest.approx(0.25 * (1 + 3.5 + 7 + 9.5))


def test_deletion_softmax_probability_and_mean_substrate():
    model = linear_model(W4, other=1.0)
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # logit0 = 1 + 4 + 9 + 16 = 30
    res = M.deletion(model, x, ORDER_MAP, target=0, step=2, substrate="mean")
    mean = 2.5  # the image's mean replaces removed pixels
    logits0 = [30.0, 1 * 1 + mean * 2 + mean * 3 + 4 * 4, mean * 10]
    expected = [1 / (1 + math.exp(1.0 - z)) for z in logits0]  # softmax of (z, 1)
    assert res.scores[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_substrates():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    assert torch.equal(M.make_substrate(x, "zero"), torch.zeros_like(x))
    assert torch.allclose(M.make_substrate(x, "mean")[:, :, 0, 0], x.mean(dim=(2, 3)))
    assert torch.equal(M.make_substrate(x, 0.5), torch.full_like(x, 0.5))
    const = torch.full((1, 2, 7, 7), 0.3)
    assert torch.allclose(M.blur(const), const)  # replicate padding keeps a constant
    # a blurred impulse sums to 1 away from the borders and is symmetric
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[0, 0, 15, 15] = 1.0
    b = M.blur(impulse)
    assert b.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(b, b.flip(-1)) and torch.allclose(b, b.transpose(-1, -2))
    with pytest.raises(InputError, match="substrate"):
        M.make_substrate(x, "noise")


def test_curves_do_not_depend_on_batch_size_and_leave_model_unchanged():
    model = tiny_cnn()
    model.train()
    x = torch.randn(3, 3, 8, 8)
    maps = torch.rand(3, 8, 8)
    before = state_of(model)
    a = M.deletion(model, x, maps, step=5, batch_size=64)
    b = M.deletion(model, x, maps, step=5, batch_size=4)
    assert torch.allclose(a.scores, b.scores, atol=1e-6)
    c = M.insertion(model, x, maps, step=7, batch_size=5)
    assert c.scores.shape == (3, 1 + math.ceil(64 / 7))
    # the last insertion point is the intact image, the first deletion point too
    assert torch.allclose(c.scores[:, -1], c.original, atol=1e-6)
    assert torch.allclose(a.scores[:, 0], a.original, atol=1e-6)
    assert_same_state(model, before)


def test_maps_are_resized_to_the_image():
    model = linear_model(W4)
    small = torch.tensor([[[0.0, 1.0]]])  # 1 x 2, upsampled to 2 x 2: right column first
    res = M.deletion(model, X4, small, target=0, step=2, activation=None)
    assert res.scores[0].tolist() == pytest.approx([10, 10 - 2 - 4, 0])


def test_sigmoid_activation_for_multilabel():
    model = linear_model([0.1, 0.1, 0.1, 0.1], other=3.0)
    res = M.deletion(model, X4, ORDER_MAP, target=1, step=4, activation="sigmoid")
    assert res.scores[0].tolist() == pytest.approx([1 / (1 + math.exp(-3.0))] * 2)


def test_faithfulness_errors():
    model = linear_model(W4)
    with pytest.raises(TargetError):
        M.deletion(model, X4, ORDER_MAP, target=5)
    with pytest.raises(InputError, match="activation"):
        M.deletion(model, X4, ORDER_MAP, activation="relu")
    with pytest.raises(InputError, match="3 maps"):
        M.deletion(model, X4.expand(2, -1, -1, -1), torch.rand(3, 2, 2))
    with pytest.raises(InputError, match="step"):
        M.deletion(model, X4, ORDER_MAP, step=0)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        M.average_drop(model, X4, ORDER_MAP * 3)


# --------------------------------------------------------------------------- average drop


def test_average_drop_and_increase_hand_computed():
    x = torch.ones(2, 1, 2, 2)
    maps = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    model = linear_model(W4)  # logits (w . x, 0): p = sigmoid(w . x)

    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    res = M.confidence_change(model, x, maps, target=0)
    y, o = sig(10.0), sig(1.0 + 0.5 * 2.0)  # explanation map keeps 1 * 1 and 0.5 * 2
    assert res.original.tolist() == pytest.approx([y, y])
    assert res.masked.tolist() == pytest.approx([o, y])
    drop = M.average_drop(model, x, maps, target=0)
    assert drop.tolist() == pytest.approx([(y - o) / y, 0.0])
    assert M.increase_in_confidence(model, x, maps, target=0).tolist() == [0.0, 0.0]
    # weights that punish the unmasked pixels: confidence rises on the explanation map
    model2 = linear_model([1.0, -2.0, -3.0, -4.0])
    up = M.increase_in_confidence(model2, x, maps, target=0)
    assert up.tolist() == [1.0, 0.0]
    assert M.average_drop(model2, x, maps, target=0).tolist() == [0.0, 0.0]
    # a baseline b: E = b + M (x - b); with b = 1 and x = 1 nothing changes
    same = M.confidence_change(model, x, maps, target=0, baseline=1.0)
    assert torch.allclose(same.masked, same.original)


# --------------------------------------------------------------------------- ROAD


def test_imputation_of_one_pixel_is_the_weighted_neighbour_mean():
    x = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5) ** 1.5
    missing = torch.zeros(5, 5, dtype=torch.bool)
    missing[2, 2] = True
    out = M.noisy_linear_impute(x, missing, noise=0.0)
    n = x[0, 0]
    direct = n[1, 2] + n[3, 2] + n[2, 1] + n[2, 3]
    diag = n[1, 1] + n[1, 3] + n[3, 1] + n[3, 3]
    expected = (direct / 6 + diag / 12) / (4 / 6 + 4 / 12)
    assert out[0, 0, 2, 2].item() == pytest.approx(expected.item(), rel=1e-6)
    keep = ~missing
    assert torch.equal(out[0, 0][keep], x[0, 0][keep])
    # a corner pixel only has three in-image neighbours
    corner = torch.zeros(5, 5, dtype=torch.bool)
    corner[0, 0] = True
    out = M.noisy_linear_impute(x, corner, noise=0.0)
    expected = (n[0, 1] / 6 + n[1, 0] / 6 + n[1, 1] / 12) / (2 / 6 + 1 / 12)
    assert out[0, 0, 0, 0].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(("h", "w", "share"), [(11, 11, 0.3), (16, 21, 0.6), (32, 32, 0.9)])
def test_imputer_agrees_with_pytorch_grad_cam(h, w, share):
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    g = torch.Generator().manual_seed(h * w)
    x = torch.randn(3, h, w, generator=g)
    keep = (torch.rand(h, w, generator=g) > share).float()
    ref = road.NoisyLinearImputer(noise=0.0)(x, keep)
    ours = M.noisy_linear_impute(x, keep == 0, noise=0.0)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


def test_imputer_noise_is_seeded_and_only_on_missing_pixels():
    x = torch.randn(2, 3, 12, 12)
    missing = torch.rand(2, 12, 12) > 0.5
    clean = M.noisy_linear_impute(x, missing, noise=0.0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = M.noisy_linear_impute(x, missing, noise=0.5, generator=g1)
    b = M.noisy_linear_impute(x, missing, noise=0.5, generator=g2)
    assert torch.equal(a, b)
    diff = (a - clean).permute(1, 0, 2, 3)  # (C, B, H, W)
    assert torch.equal(diff[:, ~missing], torch.zeros_like(diff[:, ~missing]))
    assert diff[:, missing].std().item() == pytest.approx(0.5, rel=0.15)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_agrees_with_pytorch_grad_cam(order):
    pcm = pytest.importorskip("pytorch_grad_cam.metrics.perturbation_confidence")
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    targets_mod = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model = tiny_cnn(1).eval()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 11, 11, generator=g)
    cams = torch.rand(2, 11, 11, generator=g).numpy()  # no ties
    classes = [0, 2]
    targets = [targets_mod.ClassifierOutputSoftmaxTarget(c) for c in classes]
    remove = road.RemoveMostRelevantFirst if order == "morf" else road.RemoveLeastRelevantFirst
    n = 11 * 11
    ref, fractions = {}, {}
    for p in (10, 20, 30, 40, 50, 60, 70, 80, 90):
        metric = pcm.PerturbationConfidenceMetric(remove(p, road.NoisyLinearImputer(noise=0.0)))
        ref[p] = metric(x, cams, targets, model)  # probability after minus before
        # pytorch-grad-cam keeps the pixels below the p-th percentile (of 1 - map for LeRF)
        c = cams[0] if order == "morf" else 1 - cams[0]
        fractions[p] = float((c >= np.percentile(c, p)).sum()) / n
    ps = sorted(ref, key=lambda p: fractions[p])
    res = M.road(
        model,
        x,
        torch.from_numpy(cams),
        target=classes,
        order=order,
        fractions=[fractions[p] for p in ps],
        noise=0.0,
    )
    ours = (res.scores - res.original.unsqueeze(1)).numpy()
    theirs = np.stack([ref[p] for p in ps], axis=1)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_road_noise_is_reproducible_across_batch_sizes_and_combined_score():
    model = tiny_cnn(2)
    x = torch.randn(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    a = M.road(model, x, maps, fractions=(0.2, 0.5), seed=1, batch_size=64)
    b = M.road(model, x, maps, fractions=(0.2, 0.5), seed=1, batch_size=1)
    assert torch.allclose(a.scores, b.scores, atol=1e-6)
    lerf = M.road(model, x, maps, order="lerf", fractions=(0.2, 0.5), seed=1)
    combined = M.road_combined(a, lerf)
    expected = (lerf.scores.mean(1) - a.scores.mean(1)) / 2
    assert torch.allclose(combined, expected)
    assert a.name == "road-morf" and lerf.name == "road-lerf"
    # the curve's normalised trapezoid area over two points is their mean
    assert torch.allclose(a.auc, a.scores.mean(1))
    with pytest.raises(InputError, match="order"):
        M.road(model, x, maps, order="both")
    with pytest.raises(InputError, match="fractions"):
        M.road(model, x, maps, fractions=(0.5, 0.2))


# --------------------------------------------------------------------------- baselines, aggregate


def test_baselines():
    like = torch.zeros(2, 5, 7)
    r1, r2 = M.random_maps(like, seed=3), M.random_maps(like, seed=3)
    assert torch.equal(r1, r2) and r1.shape == like.shape
    assert float(r1.min()) >= 0 and float(r1.max()) < 1
    assert not torch.equal(r1, M.random_maps(like, seed=4))
    c = M.centre_maps(like)
    assert c.shape == like.shape and c[0, 2, 3].item() == 1.0
    s = 0.25 * 5
    assert c[1, 0, 0].item() == pytest.approx(math.exp(-(2**2 + 3**2) / (2 * s * s)), rel=1e-6)
    assert torch.equal(c, c.flip(-1)) and torch.equal(c, c.flip(-2))
    # on a centred object the centre baseline points right; a corner object it misses
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[1:4, 2:5] = True
    assert M.pointing_game(c[:1], mask).item() == 1.0


def test_aggregate_t_interval_matches_formula():
    values = torch.tensor([0.2, 0.4, 0.6, 0.9, float("nan")])
    s = M.aggregate(values)
    finite = np.array([0.2, 0.4, 0.6, 0.9])
    mean, sd = finite.mean(), finite.std(ddof=1)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3} * s / sqrt(4)
    assert (s.n, s.n_missing, s.method) == (4, 1, "t")
    assert s.mean == pytest.approx(mean)
    assert s.low == pytest.approx(mean - half) and s.high == pytest.approx(mean + half)
    assert s.std == pytest.approx(sd)


def test_aggregate_bootstrap():
    values = torch.linspace(0, 1, 50)
    a = M.aggregate(values, method="bootstrap", n_boot=2000, seed=0)
    b = M.aggregate(values, method="bootstrap", n_boot=2000, seed=0)
    assert a == b
    t = M.aggregate(values)
    assert a.low < a.mean < a.high
    assert a.low == pytest.approx(t.low, abs=0.02) and a.high == pytest.approx(t.high, abs=0.02)
    one = M.aggregate([0.5])
    assert one.mean == 0.5 and math.isnan(one.low)
    assert math.isnan(M.aggregate([float("nan")]).mean)
    with pytest.raises(InputError, match="method"):
        M.aggregate(values, method="normal")


# --------------------------------------------------------------------------- evaluate helpers


def test_evaluate_maps_equals_the_individual_metrics():
    model = tiny_cnn(3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, 8, generator=g)
    maps = torch.rand(2, 8, 8, generator=g)
    masks = torch.rand(2, 8, 8, generator=g) > 0.5
    opts = {"deletion": {"step": 8}, "insertion": {"step": 8}, "road": {"fractions": (0.3, 0.6)}}
    out = M.evaluate_maps(model, x, maps, target=[1, 2], masks=masks, options=opts)
    # every registered metric that applies to fixed maps (no explain callable given)
    assert list(out) == [n for n in M.list_metrics() if not M.get_metric(n).needs_explain]
    kw = {"target": [1, 2]}
    expect = {
        "deletion": M.deletion(model, x, maps, step=8, **kw).auc,
        "insertion": M.insertion(model, x, maps, step=8, **kw).auc,
        "average_drop": M.average_drop(model, x, maps, **kw),
        "road_morf": M.road(model, x, maps, fractions=(0.3, 0.6), **kw).mean,
        "pointing_game": M.pointing_game(maps, masks),
        "iou": M.iou(maps, masks),
        "entropy": M.entropy(maps),
    }
    for name, value in expect.items():
        assert torch.allclose(out[name], value, atol=1e-6), name
    no_masks = M.evaluate_maps(model, x, maps, metrics=None, options=opts)
    assert "pointing_game" not in no_masks and "deletion" in no_masks
    with pytest.raises(InputError, match="need ground-truth masks"):
        M.evaluate_maps(model, x, maps, metrics=["iou"])
    with pytest.raises(InputError, match="unknown metric"):
        M.evaluate_maps(model, x, maps, metrics=["accuracy"])


def test_score_methods_with_baselines_and_summary():
    from cnnlens import list_methods

    if "gradcam" not in list_methods():
        pytest.skip("gradcam is not registered")
    model = tiny_cnn(4)
    x = torch.randn(3, 3, 8, 8)
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    scores = M.score_methods(
        model,
        x,
        ["gradcam"],
        masks=masks,
        metrics=["pointing_game", "sparseness"],
        method_options={"gradcam": {"layer": "2"}},
    )
    assert list(scores) == ["gradcam", "random", "centre"]
    # the centre baseline's maximum lies in the central 4 x 4 square: always a hit
    assert scores["centre"]["pointing_game"].tolist() == [1.0, 1.0, 1.0]
    rnd = M.random_maps(torch.zeros(3, 8, 8), seed=0)
    assert torch.allclose(scores["random"]["sparseness"], M.sparseness(rnd))
    rows = M.summarize(scores)
    assert len(rows) == 6
    row = next(r for r in rows if r["method"] == "centre" and r["metric"] == "pointing_game")
    assert row["mean"] == 1.0 and row["higher_is_better"] is True and row["n"] == 3


# --------------------------------------------------------------------------- the registry


def test_every_builtin_metric_declares_its_facts_at_its_definition():
    infos = M.metric_infos()
    assert list(infos) == M.list_metrics()
    for name, info in infos.items():
        # the scorer sits beside the metric's definition, not in a table elsewhere
        module = info.scorer.__module__
        assert module.startswith("cnnlens.metrics."), name
        assert module.rsplit(".", 1)[1] not in ("evaluate", "registry", "_common"), name
        assert info.label and info.summary
        assert not info.needs_masks or info.family == "localization", name
    assert {n for n, i in infos.items() if i.binary} >= {"pointing_game", "increase_in_confidence"}
    assert infos["road_morf"].option_group == "road"
    assert "step" in infos["deletion"].option_names()
    with pytest.raises(InputError, match="takes no option 'steps'"):
        M.evaluate_maps(tiny_cnn(3), torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8),
                        options={"deletion": {"steps": 2}})  # fmt: skip
    with pytest.raises(ValueError, match="already registered"):
        M.register_metric("iou", family="localization", higher_is_better=True, label="x",
                          summary="x")(lambda inputs: inputs.maps)  # fmt: skip


@pytest.fixture
def explain_agreement():
    """A metric registered in the test, as a new module would: it re-explains the images
    (``needs_explain``) and scores how far the maps move (0 for a deterministic method)."""
    from cnnlens.metrics import registry

    @M.register_metric(
        "explain_agreement", family="robustness", higher_is_better=False, label="agree",
        summary="mean |maps - maps again|", needs_explain=True,
    )  # fmt: skip
    def _agreement(inputs: M.MetricInputs, *, scale: float = 1.0) -> torch.Tensor:
        again = inputs.explain(inputs.x, inputs.target)
        return scale * (inputs.maps - again).abs().flatten(1).mean(1)

    yield "explain_agreement"
    registry._METRICS.pop("explain_agreement")


def test_a_registered_metric_reaches_evaluate_score_methods_and_assess(explain_agreement, tmp_path):
    import cnnlens.assess as A
    from cnnlens.models import create

    torch.manual_seed(0)
    model = create("gap-cnn").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert explain_agreement in M.list_metrics("robustness")
    fn = M.explainer(model, "gradcam")
    maps = fn(x, torch.tensor([0, 1]))
    out = M.evaluate_maps(model, x, maps, target=[0, 1], explain=fn, options={
        explain_agreement: {"scale": 2.0}})  # fmt: skip
    assert torch.allclose(out[explain_agreement], torch.zeros(2), atol=1e-6)
    assert explain_agreement not in M.evaluate_maps(model, x, maps, target=[0, 1])
    scores = M.score_methods(model, x, ["gradcam"], metrics=[explain_agreement, "sparseness"])
    assert set(scores["gradcam"]) == {explain_agreement, "sparseness"}
    assert set(scores["random"]) == {"sparseness"}  # baselines cannot re-explain
    data = A.load_data("shapes", options={"size": 32}, n=3)
    res = A.assess(model, data, tmp_path / "o", methods=["gradcam"], n=3, sanity_images=0,
                   examples=0, metrics=["all"])  # fmt: skip
    assert explain_agreement in res.metrics and A.metric_label(explain_agreement) == "agree"
    assert res.mean("gradcam", explain_agreement) == pytest.approx(0.0, abs=1e-6)
    assert res.value("random", explain_agreement)["n"] == 0
    html = (tmp_path / "o" / "report.html").read_text()
    assert explain_agreement in html
