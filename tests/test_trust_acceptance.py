"""Acceptance: how far to trust explanations of a gap-cnn trained on ``shapes``.

A gap-cnn is trained on a subset of ``shapes`` (40x40 images; marked slow) and assessed
with :func:`cnnlens.assess.assess` on 100 test images:

- Grad-CAM points at the shape (pointing game >= 0.9, with the protocol's tolerance) far
  above the random baseline;
- its deletion area is below the random baseline's and its insertion area above it;
- the cascading model-randomization check reproduces Adebayo et al. (2018): Grad-CAM and
  saliency pass, guided backprop fails (its maps survive the randomization of the upper
  layers);
- fine-tuned on ``shapes-pair``, the Grad-CAM map of each of the two classes in an image
  points inside that class's own shape in >= 85% of the images.

docs/evaluation.md holds the full recorded run (every method, 64x64 images).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import cnnlens
import cnnlens.assess as A
from cnnlens import metrics, models
from cnnlens.data import get_dataset
from cnnlens.training import train

SIZE = 40
RECIPE = {
    "lr": 3e-3,
    "batch_size": 64,
    "optimizer": "adam",
    "schedule": "cosine",
    "weight_decay": 2e-3,
    "seed": 0,
}


# One torch thread: the trained weights (and so the numbers) do not depend on the machine's
# thread count, and a busy machine is not slowed down by waiting threads.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    """gap-cnn trained on 5,000 shapes for 8 epochs (40x40)."""
    torch.manual_seed(0)
    model = models.create("gap-cnn")
    train(model, get_dataset("shapes", n=5000, size=SIZE), epochs=8, **RECIPE)
    return model.eval()


@pytest.fixture(scope="module")
def result(net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> A.AssessResult:
    data = A.load_data("shapes", options={"size": SIZE}, n=100)
    return A.assess(
        net,
        data,
        tmp_path_factory.mktemp("assess"),
        n=100,
        methods=["gradcam", "saliency", "guided_backprop"],
        metrics=["pointing_game", "deletion", "insertion", A.SANITY_METRIC],
        metric_options={"deletion": {"step": 40}, "insertion": {"step": 40}},
        sanity_images=8,
        examples=0,
    )


def test_gradcam_points_at_the_shape(result: A.AssessResult) -> None:
    gc = result.value("gradcam", "pointing_game")
    rnd = result.value("random", "pointing_game")
    assert gc["n"] == 100
    assert gc["mean"] >= 0.9
    assert gc["mean"] - rnd["mean"] >= 0.4
    assert gc["low"] > rnd["high"]  # the 95% intervals do not overlap


def test_gradcam_is_faithful(result: A.AssessResult) -> None:
    assert result.mean("gradcam", "deletion") < result.mean("random", "deletion")
    assert result.mean("gradcam", "insertion") > result.mean("random", "insertion")
    assert result.value("gradcam", "insertion")["low"] > result.value("random", "insertion")["high"]


def test_sanity_check_reproduces_adebayo_et_al(result: A.AssessResult) -> None:
    verdicts = {v.method: v for v in result.sanity}
    # the one verdict rule: the whole 95% interval on the right side of the threshold
    assert verdicts["gradcam"].passed is True, verdicts["gradcam"].detail
    assert verdicts["saliency"].passed is True, verdicts["saliency"].detail
    assert verdicts["guided_backprop"].passed is False, verdicts["guided_backprop"].detail
    assert all("n = 8 images" in v.detail for v in verdicts.values())
    sanity = {m: result.mean(m, A.SANITY_METRIC) for m in verdicts}
    assert sanity["guided_backprop"] > max(sanity["gradcam"], sanity["saliency"]) + 0.15


def test_each_class_points_at_its_own_shape_in_pairs(net: torch.nn.Module) -> None:
    pair_net = copy.deepcopy(net).train()
    pair_train = get_dataset("shapes-pair", n=4000, size=SIZE)
    train(pair_net, pair_train, epochs=6, **{**RECIPE, "lr": 2e-3, "weight_decay": 5e-4})
    pair_net.eval()
    test = A.load_data("shapes-pair", options={"size": SIZE}, n=100)
    exp = cnnlens.explain(pair_net, test.images, "gradcam", target=test.labels)
    assert exp.maps.shape == (100, 2, SIZE, SIZE)
    tol = A.POINTING_TOLERANCE * SIZE
    own = torch.stack(
        [metrics.pointing_game(exp.maps[:, k], test.masks[:, k], tolerance=tol) for k in range(2)]
    )
    other = torch.stack(
        [
            metrics.pointing_game(exp.maps[:, k], test.masks[:, 1 - k], tolerance=tol)
            for k in range(2)
        ]
    )
    assert (own.mean(dim=1) >= 0.85).all(), own.mean(dim=1)
    assert (other.mean(dim=1) <= 0.1).all(), other.mean(dim=1)


def test_assess_outputs_exist(result: A.AssessResult) -> None:
    for name in ("table_md", "table_csv", "table_json", "report", "curves", "sanity"):
        assert Path(result.files[name]).is_file(), name
