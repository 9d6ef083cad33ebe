"""Hostile input to the ``cnnlens`` command line (issue 17): exit status 2, one line, no
traceback, nothing left behind; output folders that belong to one run; a killed run that
re-runs cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens import models
from cnnlens.cli.main import main
from cnnlens.pipelines.outdir import MARKER
from test_hostile_inputs import broken_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = models.create("gap-cnn", num_classes=3, in_channels=1)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return models.save_checkpoint(
        net,
        path,
        arch="gap-cnn",
        arch_kwargs={"num_classes": 3, "in_channels": 1},
        class_names=["a", "b", "c"],
        input_size=(16, 16),
        preset="mnist",
    )


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    net = models.create("gap-cnn", num_classes=3, in_channels=1)
    path = tmp_path_factory.mktemp("ckpt2") / "other.safetensors"
    return models.save_checkpoint(
        net, path, arch="gap-cnn", arch_kwargs={"num_classes": 3, "in_channels": 1},
        input_size=(16, 16), preset="mnist",
    )  # fmt: skip


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _images(tmp_path_factory.mktemp("images"), 2)


def _cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, list[str]]:
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return rc, [line for line in captured.err.splitlines() if line.strip()]


def _one_error_line(rc: int, lines: list[str], *expected: str) -> None:
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])


def _bomb_png(path: Path, side: int = 20_000) -> Path:
    """A tiny PNG whose header declares ``side`` x ``side`` pixels."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# (arguments after the command, with {ckpt}, {img}, {out}, {file}; text the line must hold)
BEFORE_WORK = [
    (["explain", "{img}", "-m", "{ckpt}", "--out", "/proc/cnnlens-test/o"], "cannot be written"),
    (["explain", "{img}", "-m", "{ckpt}", "--out", "{file}/o"], "is a file"),
    (["explain", "{img}", "-m", "{ckpt}", "--out", "{file}"], "not a folder"),
    (["explain", "{img}", "-m", "{ckpt}", "--out", "{mapsfile}"], "'maps'"),
    (["prototype", "-m", "{ckpt}", "--out", "{out}", "--lr", "-1"], "--lr"),
    (["prototype", "-m", "{ckpt}", "--out", "{out}", "--lr", "nan"], "--lr"),
    (["prototype", "-m", "{ckpt}", "--out", "{out}", "--lambda", "nan"], "--lambda"),
    (["prototype", "-m", "{ckpt}", "--out", "/proc/cnnlens-test/o"], "cannot be written"),
    (["visualize", "-m", "{ckpt}", "--out", "{out}", "--class", "0", "--blur-every", "-1"],
     "--blur-every"),
    (["visualize", "-m", "{ckpt}", "--out", "{out}", "--class", "0", "--tv", "-1"], "--tv"),
    (["visualize", "-m", "{ckpt}", "--out", "{out}", "--class", "0", "--lr", "nan"], "--lr"),
    (["train", "-m", "gap-cnn", "-d", "shapes", "--out", "{out}", "-D", "n=abc"], "n must be"),
    (["train", "-m", "gap-cnn", "-d", "shapes", "--out", "{out}", "-D", "size=100000"],
     "size"),
    (["train", "-m", "gap-cnn", "-d", "shapes", "--out", "{file}/o"], "is a file"),
    (["summary", "gap-cnn", "--input-size", "1,100000,100000"], "--input-size"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), BEFORE_WORK, ids=lambda v: str(v)[:60])
def test_refused_before_any_work(
    ckpt: Path,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "m" / "maps").parent.mkdir()
    (tmp_path / "m" / "maps").write_text("x")
    names = {"ckpt": ckpt, "img": images / "0.png", "out": tmp_path / "o"}
    names |= {"file": tmp_path / "file", "mapsfile": tmp_path / "m"}
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc, lines = _cli(capsys, *(a.format(**names) for a in args))
    _one_error_line(rc, lines, expected)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_out(ckpt: Path, images: Path, tmp_path: Path, capsys) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, lines = _cli(capsys, "explain", images / "0.png", "-m", ckpt, "--out", ro / "o")
        _one_error_line(rc, lines, "cannot be written")
    finally:
        ro.chmod(0o755)


BROKEN = [
    ({"arch_kwargs": "num_classes=3"}, "arch_kwargs"),
    ([1, 2], "the metadata"),
    ({"in_channels": "three"}, "in_channels"),
    ({"input_size": [-16, 16]}, "input_size"),
    ({"input_size": [100000, 100000]}, "input_size"),
    ({"num_classes": "3"}, "num_classes"),
    ({"class_names": 3}, "class_names"),
    ({"extra": "lr=0.1"}, "extra"),
    ({"extra": {"training": {"weight_decay": [1]}}}, "weight_decay"),
]


@pytest.mark.parametrize(("change", "field"), BROKEN, ids=[f for _, f in BROKEN])
@pytest.mark.parametrize("command", ["summary", "explain"])
def test_broken_checkpoint_metadata(
    ckpt: Path, images: Path, tmp_path: Path, capsys, change, field: str, command: str
) -> None:
    bad = broken_checkpoint(ckpt, tmp_path / "bad.safetensors", change)
    args = [bad] if command == "summary" else [images / "0.png", "-m", bad, "--out", tmp_path / "o"]
    rc, lines = _cli(capsys, command, *args)
    _one_error_line(rc, lines, field, "malformed metadata")
    assert not (tmp_path / "o").exists()


def test_nan_weights_give_one_line_and_leave_nothing(
    ckpt: Path, images: Path, tmp_path: Path, capsys
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(ckpt), framework="pt") as fh:
        header = fh.metadata()
    state = load_file(str(ckpt))
    state = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    nan = tmp_path / "nan.safetensors"
    save_file(state, str(nan), metadata=header)
    rc, lines = _cli(capsys, "explain", images, "-m", nan, "--out", tmp_path / "o", "--no-progress")
    _one_error_line(rc, lines, "non-finite")
    assert not (tmp_path / "o").exists()


def _listed(out: Path) -> set[str]:
    res = json.loads((out / "results.json").read_text())
    return {im["input_png"] for im in res["images"]} | {
        m["png"] for im in res["images"] for m in im["maps"]
    }


def _pngs(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.parent != out}


def test_a_folder_belongs_to_one_run(
    ckpt: Path, other_ckpt: Path, images: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "o"
    run = ["explain", images, "--out", out, "--no-progress"]
    assert _cli(capsys, *run, "-m", ckpt, "--method", "gradcam,saliency")[0] == 0
    # another method on the same model: results.json and the PNGs agree, nothing stale
    assert _cli(capsys, *run, "-m", ckpt, "--method", "gradcam")[0] == 0
    assert _pngs(out) == _listed(out)
    assert not any("saliency" in p for p in _pngs(out))
    # another model: refused, nothing touched; with --overwrite, replaced
    stamp = {p: (out / p).stat().st_mtime_ns for p in _pngs(out)}
    rc, lines = _cli(capsys, *run, "-m", other_ckpt)
    _one_error_line(rc, lines, "holds another run", "--overwrite")
    assert {p: (out / p).stat().st_mtime_ns for p in _pngs(out)} == stamp
    assert _cli(capsys, *run, "-m", other_ckpt, "--overwrite")[0] == 0
    assert json.loads((out / MARKER).read_text())["model"] == str(other_ckpt)
    assert _pngs(out) == _listed(out)


@pytest.mark.parametrize(("damage", "why"), [("text", "PIL can read"), ("bomb", "bomb")])
def test_report_with_a_damaged_input_png(
    ckpt: Path, images: Path, tmp_path: Path, capsys, caplog, damage: str, why: str
) -> None:
    """A damaged picture is left out of the rebuilt report with a warning that says why (the
    bomb is not embedded undecoded); a folder as ``report --out`` is refused."""
    out = tmp_path / "o"
    rc, _ = _cli(capsys, "explain", images / "0.png", "-m", ckpt, "--out", out, "--no-progress")
    assert rc == 0
    png = out / "inputs" / "0.png"
    if damage == "text":
        png.write_text("not a png at all")
    else:
        _bomb_png(png)
    caplog.clear()
    rc, _ = _cli(capsys, "report", out)
    assert rc == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "inputs/0.png" in warned[0] and why in warned[0], warned
    rc, lines = _cli(capsys, "report", out, "--out", out)
    _one_error_line(rc, lines, "--out", "is a folder")


@pytest.mark.slow
def test_a_killed_run_reruns_cleanly(ckpt: Path, tmp_path: Path) -> None:
    """SIGKILL a run mid-way (and plant the temp file a write cut short leaves); the same
    command again completes: every image once, every listed PNG whole, nothing else."""
    folder = _images(tmp_path / "in", 12)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "cnnlens.cli.main", "explain", str(folder), "-m", str(ckpt),
           "--out", str(out), "--no-progress", "--batch-size", "1",
           "--method", "gradcam,saliency"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "maps").is_dir() and len(list((out / "maps").iterdir())) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_mid_run = not (out / "results.json").exists()
    (out / "maps").mkdir(parents=True, exist_ok=True)
    (out / "maps" / ".0_gradcam_1-b.png.abc123.tmp").write_bytes(b"\x89PNG half")
    (out / "maps" / "0_stale.png").write_bytes(b"\x89PNG half")
    assert main(cmd[3:]) == 0
    res = json.loads((out / "results.json").read_text())
    files = [im["file"] for im in res["images"]]
    assert len(files) == len(set(files)) == 12
    assert _pngs(out) == _listed(out)
    for rel in _listed(out):
        with Image.open(out / rel) as im:
            im.load()
    assert killed_mid_run and proc.returncode == -signal.SIGKILL
    shutil.rmtree(out)
