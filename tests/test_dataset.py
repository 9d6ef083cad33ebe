"""cnnlens.dataset: the Parquet store, the local and Ray engines, resume, read-back, report."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cnnlens
import cnnlens.dataset as cd
from cnnlens.cli.main import main
from cnnlens.data import load_image, to_tensor
from cnnlens.dataset.job import SCHEMA, map_statistics, model_hash
from cnnlens.errors import CnnlensError, InputError
from cnnlens.models import create, load, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_PER_CLASS = 60
CLASSES = ("circle", "square", "stripes", "noise")


def _picture(kind: str, i: int, rng: np.random.Generator) -> np.ndarray:
    img = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
    y, x = rng.integers(4, 24, 2)
    if kind == "circle":
        yy, xx = np.mgrid[:40, :40]
        img[(yy - y - 6) ** 2 + (xx - x - 6) ** 2 < 36] = (250, 60, 60)
    elif kind == "square":
        img[y : y + 12, x : x + 12] = (60, 250, 60)
    elif kind == "stripes":
        img[:, :: 4 + i % 3] = (60, 60, 250)
    return img


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 generated 40x40 PNGs in 4 class folders, plus one corrupt file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        (root / kind).mkdir()
        for i in range(N_PER_CLASS):
            Image.fromarray(_picture(kind, i, rng)).save(root / kind / f"{i:03d}.png")
    (root / "noise" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = create("gap-cnn", num_classes=4)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    return save_checkpoint(
        net,
        path,
        arch="gap-cnn",
        arch_kwargs={"num_classes": 4},
        class_names=list(CLASSES),
        input_size=(32, 32),
        preset="cifar10",
    )


N_IMAGES = len(CLASSES) * N_PER_CLASS + 1


def _explain(folder: Path, checkpoint: Path, out: Path, **kw):
    args = {"method": ["gradcam", "saliency"], "batch_size": 32, "map_size": 16} | kw
    return cd.explain(folder, checkpoint, out=out, **args)


@pytest.fixture(scope="module")
def store(folder: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    summary = _explain(folder, checkpoint, tmp_path_factory.mktemp("s") / "store")
    assert summary.stats.computed == N_IMAGES and summary.stats.skipped == 0
    return summary.store


def test_schema_and_values(store: Path, folder: Path, checkpoint: Path) -> None:
    table = cd.load(store, maps=True)
    assert table.schema.equals(SCHEMA)
    assert table.num_rows == N_IMAGES * 2  # one row per image and method
    rows = table.filter(pc.field("id") == "square/007.png").to_pylist()
    assert sorted(r["method"] for r in rows) == ["gradcam", "saliency"]
    path = folder / "square" / "007.png"
    net, _ = load(checkpoint)
    for r in rows:
        assert r["content_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert r["model_hash"] == model_hash(net, "gap-cnn")
        assert r["label"] == "square" and r["path"] == str(path.resolve())
        assert r["error"] is None and r["rank"] == 0
    # the stored map is the public engine's map, area-downsampled to 16 px, in float16
    x = to_tensor(load_image(path), size=(32, 32), preset="cifar10")[None]
    for r in rows:
        exp = cnnlens.explain(net, x, method=r["method"])
        assert r["target"] == int(exp.targets[0]) == int(exp.scores.argmax())
        assert r["target_name"] == CLASSES[r["target"]]
        prob = torch.softmax(exp.scores, 1)[0]
        assert r["target_prob"] == pytest.approx(float(prob[r["target"]]), abs=1e-5)
        assert r["pred_index"] == prob.argsort(descending=True)[:4].tolist()
        stored = cd.decode_map(r["map"], r["map_height"], r["map_width"])
        expected = F.interpolate(exp.maps[:, None], (16, 16), mode="area")[0, 0]
        assert stored.shape == (16, 16)
        torch.testing.assert_close(stored, expected, atol=2e-3, rtol=0)
        stats = map_statistics(exp.maps)
        for name in ("peak_y", "peak_x", "map_mean", "coverage", "top10_mass"):
            assert r[name] == pytest.approx(float(stats[name][0]), abs=1e-5)


def test_map_statistics_by_hand() -> None:
    m = torch.zeros(1, 10, 10)
    m[0, 2, 7] = 1.0
    s = map_statistics(m)
    assert float(s["peak_y"][0]) == pytest.approx(0.25)
    assert float(s["peak_x"][0]) == pytest.approx(0.75)
    assert float(s["top10_mass"][0]) == pytest.approx(1.0)
    assert float(s["coverage"][0]) == pytest.approx(0.01)
    flat = map_statistics(torch.full((1, 10, 10), 0.3))
    assert float(flat["top10_mass"][0]) == pytest.approx(0.1)
    assert torch.isnan(map_statistics(torch.zeros(1, 4, 4))["top10_mass"][0])


def test_corrupt_file_is_a_row(store: Path) -> None:
    bad = cd.load(store, filter=pc.field("id") == "noise/broken.png").to_pylist()
    assert len(bad) == 2
    for r in bad:
        assert "broken.png" in r["error"] and "not an image" in r["error"]
        assert r["target"] is None and r["content_hash"]
    assert cd.load(store, columns=["map"], filter=pc.field("error").is_null()).num_rows == 480


def test_maps_of_one_image_and_pandas(store: Path) -> None:
    maps = cd.maps_of(store, "circle/001.png")
    assert [m.method for m in maps] == ["gradcam", "saliency"]
    assert all(m.map.dtype == torch.float32 and m.map.shape == (16, 16) for m in maps)
    assert cd.stack_maps(maps[:1]).shape == (1, 16, 16)
    with pytest.raises(InputError, match="not in store"):
        cd.maps_of(store, "nope.png")
    df = cd.load(store, columns=["label", "method", "top10_mass"]).to_pandas()
    assert set(df["label"].dropna()) == set(CLASSES)
    assert df.groupby("method")["top10_mass"].mean().between(0.1, 1.0).all()


def test_resume_after_an_exception_mid_run(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"

    def kill_after_two(info: cd.BatchDone) -> None:
        if info.index == 1:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        _explain(folder, checkpoint, out, on_batch=kill_after_two)
    first = cd.load(out, columns=["key", "id"])
    assert first.num_rows == 2 * 32 * 2  # two finished batches, two methods
    assert not list(out.glob(".*.tmp"))
    summary = _explain(folder, checkpoint, out)
    assert summary.stats.skipped == 64 and summary.stats.computed == N_IMAGES - 64
    _assert_complete(out)


def _assert_complete(out: Path) -> None:
    t = cd.load(out, columns=["id", "method"]).to_pandas()
    assert len(t) == N_IMAGES * 2
    assert not t.duplicated().any()
    assert t["id"].nunique() == N_IMAGES


@pytest.mark.slow
def test_resume_after_sigkill(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    script = textwrap.dedent(
        f"""
        import time, cnnlens.dataset as cd
        def slow(info):
            time.sleep(0.3)
        cd.explain({str(folder)!r}, {str(checkpoint)!r}, out={str(out)!r},
                   method=["gradcam", "saliency"], batch_size=32, map_size=16, on_batch=slow)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(cnnlens.__file__).parents[1]), *sys.path])
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("part-*.parquet"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    written = cd.load(out, columns=["id"]).num_rows
    assert 0 < written < N_IMAGES * 2
    summary = _explain(folder, checkpoint, out)
    assert summary.stats.skipped * 2 == written
    _assert_complete(out)


def test_other_settings_are_refused(store: Path, folder: Path, checkpoint: Path, tmp_path: Path):
    with pytest.raises(cd.StoreError, match=r"other settings.*methods"):
        _explain(folder, checkpoint, store, method="gradcam")
    with pytest.raises(cd.StoreError, match="map_size"):
        _explain(folder, checkpoint, store, map_size=8)
    # the same settings resume and compute nothing
    assert _explain(folder, checkpoint, store).stats.computed == 0
    # overwrite replaces the store
    (tmp_path / "copy").mkdir()
    other = tmp_path / "copy" / "s"
    _explain(folder, checkpoint, other, method="gradcam")
    s = _explain(folder, checkpoint, other, method="gradcam", topk=2, overwrite=True)
    assert s.stats.computed == N_IMAGES
    t = cd.load(other, columns=["rank", "method"])
    assert t.num_rows == (N_IMAGES - 1) * 2 + 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    with pytest.raises(cd.StoreError, match="not a cnnlens store"):
        _explain(folder, checkpoint, tmp_path / "full")


def test_sources(folder: Path, tmp_path: Path) -> None:
    glob = cd.resolve_source(str(folder / "*" / "00[0-4].png"))
    assert glob.kind == "glob" and len(glob.items) == 20
    assert glob.items[0]["id"] == "circle/000.png"
    listing = tmp_path / "files.txt"
    listing.write_text(f"# two files\n{folder}/square/001.png\n\n{folder}/noise/broken.png\n")
    src = cd.resolve_source(listing)
    assert src.kind == "list" and src.items[0]["path"].endswith("square/001.png")
    ds = cd.resolve_source("shapes:test", options={"n": 12, "seed": 3})
    assert ds.kind == "dataset" and len(ds.items) == 12 and ds.items[0]["label"]
    img, digest, err = ds.read(ds.items[0], "RGB")
    assert img.size == (64, 64) and len(digest) == 64 and err is None
    with pytest.raises(CnnlensError, match="not a folder"):
        cd.resolve_source("no-such-thing")


def test_report_over_the_store(store: Path, tmp_path: Path) -> None:
    html = cd.build_store_report(store, tmp_path / "r.html", examples=2, classes=4)
    text = html.read_text()
    for part in ("Store summary", "Average gradcam map", "most confident 1", "broken.png"):
        assert part in text


def test_cli_store_mode(folder: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.store"
    args = ["explain", str(folder / "circle"), "--model", str(checkpoint), "--out", str(out)]
    assert main([*args, "--format", "parquet", "--target", "square", "--no-progress"]) == 0
    assert "60 image(s) explained" in capsys.readouterr().out
    t = cd.load(out, columns=["target", "target_name"])
    assert set(t.column("target_name").to_pylist()) == {"square"}
    assert main([*args, "--format", "parquet", "--topk", "2", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "--format", "png", "--engine", "ray"]) == 2
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_ray_engine_matches_local(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    ray_mod = pytest.importorskip(
        "ray", reason="the Ray extra is not installed: pip install 'cnnlens[ray]'"
    )
    listing = tmp_path / "some.txt"
    files = [*sorted(folder.glob("*/00[0-9].png")), folder / "noise" / "broken.png"]
    listing.write_text("\n".join(str(f) for f in files))
    local = _explain(listing, checkpoint, tmp_path / "local", batch_size=8)
    # one local Ray instance for both runs (run_ray leaves an instance it did not start)
    ray_mod.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray = _explain(listing, checkpoint, tmp_path / "ray", batch_size=8, engine="ray")
        again = _explain(listing, checkpoint, tmp_path / "ray", batch_size=8, engine="ray")
    finally:
        ray_mod.shutdown()
    assert ray.stats.computed == local.stats.computed == len(files)
    assert ray.stats.errors == local.stats.errors == 2
    cols = ["key", "method", "target", "map", "error"]
    a = (
        cd.load(local.store, maps=True)
        .select(cols)
        .sort_by([("key", "ascending"), ("method", "ascending")])
    )
    b = (
        cd.load(ray.store, maps=True)
        .select(cols)
        .sort_by([("key", "ascending"), ("method", "ascending")])
    )
    assert a.drop_columns(["map"]).equals(b.drop_columns(["map"]))
    for x, y in zip(a.column("map").to_pylist(), b.column("map").to_pylist()):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_allclose(
                np.frombuffer(x, "<f2"), np.frombuffer(y, "<f2"), atol=2e-3, rtol=0
            )
    # resume on Ray: everything is already there
    assert again.stats.computed == 0 and again.stats.skipped == len(files)
    assert pa.types.is_binary(cd.load(ray.store, maps=True).schema.field("map").type)


def test_scale_md_examples_print_what_they_say(tmp_path: Path, monkeypatch) -> None:
    """The python blocks of docs/scale.md run in order (one namespace, in a fresh folder)
    and each ``print(...)  # text`` line prints ``text``."""
    import contextlib
    import io
    import re

    doc = Path(__file__).resolve().parents[1] / "docs" / "scale.md"
    blocks = re.findall(r"^```python\n(.*?)^```", doc.read_text(), re.M | re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        expected = [
            m.group(1).strip()
            for line in code.splitlines()
            if (m := re.match(r"^\s*print\(.*\)\s+# (.*)$", line))
        ]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"docs/scale.md block {i + 1}", "exec"), namespace)
        assert [line.strip() for line in out.getvalue().splitlines()] == expected


def test_one_run_per_store(store: Path, folder: Path, checkpoint: Path) -> None:
    import socket

    from cnnlens.dataset.store import LOCK_FILE

    lock = store / LOCK_FILE
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")  # a live run holds the store
    try:
        with pytest.raises(cd.StoreError, match="being written by another run"):
            _explain(folder, checkpoint, store)
    finally:
        lock.unlink()
    assert not lock.exists()


def test_channels_last_copy_gives_the_same_maps_and_leaves_the_model_alone() -> None:
    from cnnlens.dataset.job import channels_last_copy

    torch.manual_seed(0)
    net = create("gap-cnn", num_classes=4).eval()
    x = torch.rand(3, 3, 32, 32)
    fast = channels_last_copy(net, (3, 32, 32))
    assert fast is not net
    conv = next(p for p in net.parameters() if p.dim() == 4)
    assert conv.is_contiguous()  # the caller's model keeps its layout
    assert next(p for p in fast.parameters() if p.dim() == 4).is_contiguous(
        memory_format=torch.channels_last
    )
    a = cnnlens.explain(net, x, "gradcam")
    b = cnnlens.explain(fast, x.contiguous(memory_format=torch.channels_last), "gradcam")
    torch.testing.assert_close(b.maps, a.maps, atol=1e-4, rtol=0)
    assert torch.equal(a.targets, b.targets)

    class Viewing(torch.nn.Module):  # .view of a channels-last activation fails: kept as is
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4 * 30 * 30, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).view(len(x), -1))

    viewing = Viewing()
    assert channels_last_copy(viewing, (3, 32, 32)) is viewing
    linear = torch.nn.Linear(4, 2)  # no image input: nothing to convert
    assert channels_last_copy(linear, (4,)) is linear
