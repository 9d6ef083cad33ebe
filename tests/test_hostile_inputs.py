"""Hostile input to the library outside ``cnnlens.explain`` (issue 17): every case raises a
:class:`~cnnlens.errors.CnnlensError` subclass whose one-line message names the argument.

Images, sizes, prototype settings, generated-data sizes, broken checkpoint metadata, and the
output folders of ``run_explain`` (one run per folder, stale PNGs removed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cnnlens import models
from cnnlens.data import load_image, to_tensor
from cnnlens.data.shapes import make_shapes
from cnnlens.errors import CnnlensError, WeightsError
from cnnlens.pipelines.outdir import MARKER, RunFolder, check_writable_dir
from cnnlens.prototypes import class_prototypes
from cnnlens.prototypes.maximize import visualize
from cnnlens.prototypes.objectives import Channel


def _raises(call: Any, *names: str) -> str:
    """Run ``call``; it must raise a CnnlensError whose one-line message names ``names``."""
    with pytest.raises(CnnlensError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for name in names:
        assert name in msg, (name, msg)
    return msg


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("gap-cnn", num_classes=3, in_channels=1).eval()


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory: pytest.TempPathFactory, net: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return models.save_checkpoint(
        net,
        path,
        arch="gap-cnn",
        arch_kwargs={"num_classes": 3, "in_channels": 1},
        class_names=["a", "b", "c"],
        input_size=(16, 16),
        preset="mnist",
        extra={"training": {"epochs": 1, "lr": 0.1}},
    )


def broken_checkpoint(good: Path, dest: Path, change: Any) -> Path:
    """A copy of ``good`` whose cnnlens metadata is changed by ``change`` (a dict update,
    or a whole replacement value)."""
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as fh:
        meta = json.loads(fh.metadata()["cnnlens"])
    meta = {**meta, **change} if isinstance(change, dict) else change
    save_file(
        load_file(str(good)), str(dest), metadata={"format": "pt", "cnnlens": json.dumps(meta)}
    )
    return dest


# (metadata change, the field the message must name)
BROKEN_META = [
    ({"arch_kwargs": "num_classes=3"}, "arch_kwargs"),
    ([1, 2, 3], "metadata"),
    ({"in_channels": "three"}, "in_channels"),
    ({"arch_kwargs": {"num_classes": 3, "in_channels": "three"}}, "arch_kwargs.in_channels"),
    ({"arch_kwargs": {"num_classes": 0, "in_channels": 1}}, "arch_kwargs.num_classes"),
    ({"input_size": [-16, 16]}, "input_size"),
    ({"input_size": "16x16"}, "input_size"),
    ({"input_size": [100000, 100000]}, "input_size"),
    ({"num_classes": "3"}, "num_classes"),
    ({"class_names": 3}, "class_names"),
    ({"class_names": ["a", "b"]}, "class_names"),
    ({"extra": [1, 2]}, "extra"),
    ({"extra": "lr=0.1"}, "extra"),
    ({"extra": {"training": {"weight_decay": "lots"}}}, "extra.training.weight_decay"),
    ({"extra": {"training": [1]}}, "extra.training"),
    ({"accuracy": 97}, "accuracy"),
    ({"arch": 5}, "arch"),
]


@pytest.mark.parametrize(("change", "field"), BROKEN_META, ids=[f for _, f in BROKEN_META])
def test_broken_checkpoint_metadata_names_the_field(
    good_ckpt: Path, tmp_path: Path, change: Any, field: str
) -> None:
    bad = broken_checkpoint(good_ckpt, tmp_path / "bad.safetensors", change)
    msg = _raises(lambda: models.load(bad), field, "malformed metadata")
    assert str(bad) in msg
    with pytest.raises(WeightsError):
        models.read_checkpoint_info(bad)


def test_good_checkpoint_still_loads(good_ckpt: Path) -> None:
    model, info = models.load(good_ckpt)
    assert info.input_size == (16, 16) and info.in_channels == 1
    assert info.class_names == ["a", "b", "c"] and info.extra["training"]["lr"] == 0.1
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 3)


@pytest.mark.parametrize("path", [None, 5, "", 2.5, b"x.png"])
def test_load_image_refuses_a_non_path(path: Any) -> None:
    _raises(lambda: load_image(path), "path")


@pytest.mark.parametrize("size", ["ab", 2.5, True, (1.9, 2), (0, 4), (4,), 100_000])
def test_to_tensor_refuses_a_bad_size(size: Any) -> None:
    img = Image.new("RGB", (8, 8))
    _raises(lambda: to_tensor(img, size=size), "size", repr(size))


def test_a_tiny_strip_cannot_exhaust_memory(tmp_path: Path) -> None:
    """A 1 x 40,000 PNG of a few hundred bytes is refused before the ImageNet crop path
    would resize it to 256 x 10,240,000."""
    path = tmp_path / "strip.png"
    Image.new("L", (1, 40_000)).save(path, optimize=True)
    assert path.stat().st_size < 1000
    _raises(lambda: to_tensor(path, size=224, crop=True), "aspect ratio", "1x40000")
    _raises(lambda: to_tensor(path, size=(64, 64)), "aspect ratio")
    # within the bounds a strip still works
    x = to_tensor(Image.new("L", (4, 200)), size=32, crop=True)
    assert x.shape == (1, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": math.nan}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"lam": math.nan}, "lam"),
        ({"lam": -1.0}, "lam"),
    ],
)
def test_class_prototypes_settings(net: torch.nn.Module, kwargs: dict, name: str) -> None:
    _raises(lambda: class_prototypes(net, 0, shape=(1, 16, 16), steps=1, **kwargs), name)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"blur_every": -1}, "blur_every"),
        ({"tv": -1.0}, "tv"),
        ({"tv": math.inf}, "tv"),
        ({"lr": math.nan}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"l2": math.nan}, "l2"),
        ({"blur_sigma": 0.0}, "blur_sigma"),
    ],
)
def test_visualize_settings(net: torch.nn.Module, kwargs: dict, name: str) -> None:
    names = [n for n, _ in net.named_modules() if n]
    objective = Channel(names[0], 0)
    _raises(lambda: visualize(net, objective, (1, 16, 16), steps=1, **kwargs), name)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"n": "abc"}, "n"), ({"n": 10, "size": 100_000}, "size"), ({"n": 10**7, "size": 64}, "GiB")],
)
def test_generated_data_is_bounded_before_allocating(kwargs: dict, name: str) -> None:
    n = kwargs.pop("n")
    _raises(lambda: make_shapes(n, **kwargs), name)


# --- output folders ----------------------------------------------------------------------


def test_out_dir_that_cannot_be_written(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _raises(lambda: check_writable_dir(a_file / "out"), "--out", "is a file")
    _raises(lambda: check_writable_dir("/proc/cnnlens-test/out"), "--out", "cannot be written")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "maps").write_text("x")
    _raises(lambda: check_writable_dir(tmp_path / "o", subdirs=("maps",)), "'maps'")
    assert not (tmp_path / "proc").exists()


def test_a_folder_belongs_to_one_run(tmp_path: Path) -> None:
    out = tmp_path / "o"
    first = RunFolder(out, {"command": "explain", "model": "a"}, subdirs=("maps",))
    first.begin()
    (out / "maps").mkdir()
    for name in ("keep.png", "stale.png", ".keep.png.x1.tmp"):
        (out / "maps" / name).write_bytes(b"png")
    assert sorted(first.finish(["maps/keep.png"])) == ["maps/.keep.png.x1.tmp", "maps/stale.png"]
    assert [p.name for p in (out / "maps").iterdir()] == ["keep.png"]
    # the same run again is welcome; another model is refused unless asked
    RunFolder(out, {"command": "explain", "model": "a"}, subdirs=("maps",))
    _raises(lambda: RunFolder(out, {"command": "explain", "model": "b"}), "another run", "'b'")
    RunFolder(out, {"command": "explain", "model": "b"}, overwrite=True).begin()
    assert json.loads((out / MARKER).read_text())["model"] == "b"
    # a results.json without a marker (an older run) is another run too
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text("{}")
    _raises(lambda: RunFolder(old, {"model": "a"}), "names no model", "--overwrite")


def test_a_failed_run_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "new" / "o"
    folder = RunFolder(out, {"model": "a"}, subdirs=("maps",))
    folder.begin()
    (out / "maps").mkdir()
    (out / "maps" / "half.png").write_bytes(b"png")
    folder.abandon()
    assert not (tmp_path / "new").exists()


def test_explain_refuses_non_finite_model_outputs(good_ckpt: Path, tmp_path: Path) -> None:
    from cnnlens.pipelines.explain import run_explain

    state = load_file(str(good_ckpt))
    state = {
        k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in state.items()
    }
    nan_ckpt = tmp_path / "nan.safetensors"
    broken_checkpoint(good_ckpt, nan_ckpt, {})
    from safetensors import safe_open

    with safe_open(str(nan_ckpt), framework="pt") as fh:
        header = fh.metadata()
    save_file(state, str(nan_ckpt), metadata=header)
    img = tmp_path / "a.png"
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(img)
    out = tmp_path / "out"
    _raises(lambda: run_explain([img], model=str(nan_ckpt), out=out), "--model", "non-finite")
    assert not out.exists()
