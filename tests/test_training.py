"""cnnlens.training and the `cnnlens train` / `cnnlens evaluate` commands."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn

from cnnlens import models
from cnnlens.cli.main import main
from cnnlens.data import get_dataset
from cnnlens.data.base import ImageTensorDataset
from cnnlens.errors import DataError, InputError
from cnnlens.training import (
    EvalResult,
    evaluate,
    get_recipe,
    plot_confusion,
    state_path,
    train,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine OpenMP workers spin on busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    tr, te = get_dataset("digits"), get_dataset("digits", split="test")
    g = torch.Generator().manual_seed(0)
    return tr.subset(torch.randperm(len(tr), generator=g)[:300]), te


class TinyNet(nn.Module):
    """Conv + dropout + linear for 1x8x8 digits: dropout makes the seed matter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.conv(x))).flatten(1))


def _tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- training


def test_same_seed_same_weights_and_caller_state_untouched(digits):
    tr, _ = digits
    a, b, c = _tiny(), _tiny(), _tiny()
    a.eval()
    rng_before = torch.get_rng_state()
    kw = {"epochs": 2, "lr": 0.05, "batch_size": 32, "optimizer": "sgd"}
    ra = train(a, tr, seed=7, **kw)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert not a.training and not a.drop.training  # modes restored
    train(b, tr, seed=7, **kw)
    train(c, tr, seed=8, **kw)
    assert _same(a, b)
    assert not _same(a, c)
    assert len(ra.history) == 2 and ra.epochs == 2
    assert ra.history[1]["loss"] < ra.history[0]["loss"]


def test_resume_equals_uninterrupted_run(digits, tmp_path):
    tr, te = digits
    kw = {
        "lr": 3e-3,
        "batch_size": 32,
        "optimizer": "adam",
        "seed": 1,
        "arch": "gap-cnn",
        "arch_kwargs": {"num_classes": 10, "in_channels": 1},
    }

    def net() -> nn.Module:
        torch.manual_seed(0)
        return models.create("gap-cnn", num_classes=10, in_channels=1)

    straight = net()
    train(straight, tr, epochs=3, **kw)
    first = net()
    ckpt = tmp_path / "run" / "model.safetensors"
    train(first, tr, epochs=2, checkpoint=ckpt, **kw)
    assert ckpt.is_file() and state_path(ckpt).is_file()
    resumed = net()  # fresh random weights: everything comes from the state file
    res = train(resumed, tr, epochs=3, checkpoint=ckpt, resume=True, test_set=te, **kw)
    assert res.resumed_from == 2 and res.epochs == 3 and len(res.history) == 3
    assert _same(straight, resumed)
    # the state file is safetensors (no pickle) with JSON metadata
    with safe_open(str(state_path(ckpt)), framework="pt") as f:
        meta = json.loads(f.metadata()["cnnlens_training_state"])
        keys = list(f.keys())
    assert meta["epoch"] == 3 and meta["optimizer"] == "adam"
    assert any(k.startswith("optim/") for k in keys) and "model/fc.weight" in keys
    # the checkpoint is self-describing and holds the final weights
    loaded, info = models.load(ckpt)
    assert _same(loaded, resumed)
    assert info.class_names == [str(d) for d in range(10)]
    assert tuple(info.input_size) == (8, 8) and info.preset == "mnist"
    assert info.dataset == "digits" and info.accuracy == pytest.approx(res.test.accuracy)


def test_learns_above_chance_quickly():
    tr = get_dataset("mnist-embedded")
    te = get_dataset("mnist-embedded", split="test")
    g = torch.Generator().manual_seed(0)
    tr = tr.subset(torch.randperm(len(tr), generator=g)[:500])
    te = te.subset(torch.arange(0, 1000, 2))
    torch.manual_seed(0)
    net = models.create("gap-cnn", num_classes=10, in_channels=1)
    res = train(net, tr, epochs=3, lr=3e-3, batch_size=32, optimizer="adam", test_set=te)
    assert res.test.accuracy > 0.5  # chance is 0.1; about 0.8 in practice
    assert res.history[-1]["train_accuracy"] > 0.5


def test_multilabel_training_uses_bce(tmp_path):
    tr = get_dataset("shapes-pair", n=64, size=32)
    torch.manual_seed(0)
    net = models.create("gap-cnn", num_classes=5)
    res = train(net, tr, epochs=1, lr=1e-3, batch_size=32, optimizer="adam", test_set=tr)
    assert res.test.multilabel and res.test.confusion.shape == (5, 2, 2)
    with torch.no_grad():
        net.eval()
        x, y = tr.tensors()
        bce = nn.functional.binary_cross_entropy_with_logits(net(x), y)
    assert res.test.loss == pytest.approx(float(bce), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"lr": -1.0}, "lr must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "rmsprop"}, "'sgd', 'adam'"),
        ({"schedule": "step"}, "'constant', 'cosine'"),
    ],
)
def test_bad_hyperparameters(digits, kwargs, match):
    tr, _ = digits
    args = {"epochs": 1, "lr": 0.1, "batch_size": 8, **kwargs}
    with pytest.raises(InputError, match=match):
        train(_tiny(), tr, **args)


def test_model_that_does_not_fit_the_data(digits, tmp_path):
    tr, _ = digits
    rgb = models.create("gap-cnn", num_classes=10)  # 3 channels
    ckpt = tmp_path / "out" / "model.safetensors"
    with pytest.raises(InputError, match=r"1 channel.*expects 3"):
        train(rgb, tr, epochs=1, lr=0.1, batch_size=8, checkpoint=ckpt, arch="gap-cnn")
    five = models.create("gap-cnn", num_classes=5, in_channels=1)
    with pytest.raises(InputError, match="5 outputs but the dataset has 10 classes"):
        train(five, tr, epochs=1, lr=0.1, batch_size=8)
    with pytest.raises(DataError, match="no training state"):
        train(_tiny(), tr, epochs=1, lr=0.1, batch_size=8, checkpoint=ckpt, arch="x", resume=True)
    with pytest.raises(InputError, match="arch"):
        train(_tiny(), tr, epochs=1, lr=0.1, batch_size=8, checkpoint=ckpt)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_recipes():
    r = get_recipe("mnist-cnn", "mnist-embedded")
    assert r["optimizer"] == "adam" and r["epochs"] >= 1
    assert get_recipe("resnet18", "folder")["optimizer"] == "sgd"


# --------------------------------------------------------------------------- evaluation


class Passthrough(nn.Module):
    """The 'image' is the logit vector: (B, 1, 1, K) -> (B, K)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_evaluate_single_label_by_hand():
    true = [0, 0, 1, 2, 2, 2]
    pred = [0, 1, 1, 2, 0, 2]
    logits = torch.zeros(6, 1, 1, 3)
    for i, p in enumerate(pred):
        logits[i, 0, 0, p] = 2.0
    ds = ImageTensorDataset(
        logits, torch.tensor(true), ["a", "b", "c"], "none", name="t", split="x"
    )
    res = evaluate(Passthrough(), ds, batch_size=4)
    assert res.accuracy == pytest.approx(4 / 6)
    assert res.confusion.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert res.per_class == pytest.approx({"a": 1 / 2, "b": 1.0, "c": 2 / 3})
    z = math.exp(2) + 2
    expected = (4 * -math.log(math.exp(2) / z) + 2 * -math.log(1 / z)) / 6
    assert res.loss == pytest.approx(expected, rel=1e-6)
    assert res.n == 6 and not res.multilabel


def test_evaluate_multilabel_by_hand():
    true = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=torch.float32)
    pred = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1], [1, 1, 1]])
    logits = (pred.float() * 6 - 3).view(4, 1, 1, 3)
    ds = ImageTensorDataset(
        logits, true, ["a", "b", "c"], "none", name="t", split="x", multilabel=True
    )
    res = evaluate(Passthrough(), ds)
    assert res.multilabel and res.accuracy == pytest.approx(0.5)  # exact match 2 of 4
    assert res.per_class == pytest.approx({"a": 1.0, "b": 1.0, "c": 0.5})
    assert res.confusion[2].tolist() == [[1, 1], [1, 1]]  # [[TN, FP], [FN, TP]]
    assert res.confusion[0].tolist() == [[1, 0], [0, 3]]
    expected = (10 * math.log1p(math.exp(-3)) + 2 * math.log1p(math.exp(3))) / 12
    assert res.loss == pytest.approx(expected, rel=1e-6)


def test_confusion_png_and_json(tmp_path):
    res = EvalResult(
        accuracy=0.5,
        per_class={"a": 0.5, "b": float("nan")},
        confusion=np.array([[1, 1], [0, 0]]),
        classes=["a", "b"],
        n=2,
        loss=0.7,
    )
    path = plot_confusion(res, tmp_path / "c.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["per_class"] == {"a": 0.5, "b": None} and d["confusion"] == [[1, 1], [0, 0]]


# --------------------------------------------------------------------------- CLI


def _write_cifar(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = 20 if name == "test_batch" else 4
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"c{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_cli_train_and_evaluate_simplecnn_on_cifar_files(tmp_path, capsys):
    _write_cifar(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--model", "simplecnn", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data")]
    assert main(["train", *args, "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    for name in ("model.safetensors", "model.state.safetensors", "metrics.json", "confusion.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["config"]["batch_size"] == 4  # the recipe's
    assert metrics["test"]["n"] == 20 and len(metrics["history"]) == 2
    ev = tmp_path / "eval"
    model = str(out / "model.safetensors")
    assert main(["evaluate", "--model", model, *args[2:], "--out", str(ev)]) == 0
    again = json.loads((ev / "metrics.json").read_text())
    assert again["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert again["confusion"] == metrics["test"]["confusion"]
    _, info = models.load(model)
    assert info.class_names == [f"c{i}" for i in range(10)] and info.dataset == "cifar10"
    # resume adds one epoch
    assert (
        main(["train", *args, "--epochs", "3", "--out", str(out), "--resume", "--no-progress"]) == 0
    )
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == 2
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "gap-cnn", "--dataset", "shapes", "--epochs", "0"], "epochs"),
        (["--model", "gap-cnn", "--dataset", "shapez"], "did you mean shapes"),
        (["--model", "gap-cnn", "--dataset", "cifar10", "--data-dir", "/nonexistent/x"], "exist"),
        (["--model", "gap-cnn", "--dataset", "shapes", "--resume"], "no training state"),
        (["--model", "mnist-dnn", "--dataset", "shapes", "-D", "n=10"], "cannot take"),
    ],
)
def test_cli_train_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", *argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_cli_evaluate_wrong_channels(tmp_path, capsys):
    torch.manual_seed(0)
    net = models.create("gap-cnn", num_classes=10)
    ckpt = models.save_checkpoint(
        net, tmp_path / "m.safetensors", arch="gap-cnn", arch_kwargs={"num_classes": 10}
    )
    assert main(["evaluate", "--model", str(ckpt), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert "1 channel" in err and "expects 3" in err


@pytest.mark.slow
def test_mnist_cnn_recipe_reaches_95_percent():
    """The documented target (docs/training.md): mnist-cnn >= 95% on mnist-embedded with its
    recipe (about 30 s of one CPU core)."""
    recipe = get_recipe("mnist-cnn", "mnist-embedded")
    tr = get_dataset("mnist-embedded")
    te = get_dataset("mnist-embedded", split="test")
    torch.manual_seed(0)
    net = models.create("mnist-cnn")
    res = train(net, tr, **recipe, test_set=te)
    assert res.test.accuracy >= 0.95
