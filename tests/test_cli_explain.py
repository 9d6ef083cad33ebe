"""`cnnlens explain`: folders of good and broken images, targets, layers, every method, the
user errors, and the option parsers it shares (cnnlens.pipelines.options)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlens
from cnnlens import models
from cnnlens.cli.main import main
from cnnlens.data import load_image, to_tensor
from cnnlens.errors import InputError, TargetError
from cnnlens.pipelines.explain import collect_images, unique_stems
from cnnlens.pipelines.options import parse_class_list, resolve_device, split_values
from cnnlens.viz import render_map

CLASSES = ["circle", "square", "star"]
SIZE = (16, 16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gap-cnn for 16x16 grey images, 3 named classes, random but fixed weights."""
    torch.manual_seed(0)
    net = models.create("gap-cnn", num_classes=3, in_channels=1)
    with torch.no_grad():  # spread the outputs so the classes differ clearly
        net.fc.weight.mul_(8.0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return models.save_checkpoint(
        net,
        path,
        arch="gap-cnn",
        arch_kwargs={"num_classes": 3, "in_channels": 1},
        class_names=CLASSES,
        input_size=SIZE,
        preset="mnist",
        dataset="toy",
    )


def _png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three good images (grey, RGB, another size), two broken ones and a text file."""
    d = tmp_path_factory.mktemp("images")
    a = np.zeros((20, 20), np.uint8)
    a[3:9, 4:12] = 255
    b = np.zeros((16, 16, 3), np.uint8)
    b[8:14, 2:7] = (255, 200, 30)
    c = (np.arange(24 * 30).reshape(24, 30) % 251).astype(np.uint8)
    good = _png(d / "a.png", a)
    _png(d / "b.png", b)
    _png(d / "c.png", c)
    (d / "broken.png").write_bytes(b"this is not an image")
    (d / "truncated.png").write_bytes(good.read_bytes()[:60])
    (d / "notes.txt").write_text("not an image and not listed")
    return d


def _run(*args: object) -> int:
    return main(["explain", *(str(a) for a in args), "--no-progress"])


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _model_input(path: str | Path) -> torch.Tensor:
    return to_tensor(load_image(path, mode="L"), size=SIZE, preset="mnist", channels=1)


def test_folder_with_broken_images(checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = _run(
        folder,
        "--model",
        checkpoint,
        "--method",
        "gradcam,integrated_gradients",
        "--option",
        "n_steps=8",
        "--out",
        out,
    )
    assert rc == 0
    res = _results(out)
    files = sorted(Path(im["file"]).name for im in res["images"])
    assert files == ["a.png", "b.png", "c.png"]
    skipped = {Path(s["file"]).name: s["reason"] for s in res["skipped"]}
    assert set(skipped) == {"broken.png", "truncated.png"}  # notes.txt is not an image file
    assert "not an image" in skipped["broken.png"]
    assert "truncated" in skipped["truncated.png"]

    net, _ = models.load(checkpoint)
    paths = [im["file"] for im in res["images"]]
    x = torch.stack([_model_input(p) for p in paths])
    with torch.no_grad():
        probs = torch.softmax(net(x), dim=1)
    gradcam = cnnlens.explain(net, x, "gradcam")
    ig = cnnlens.explain(net, x, "integrated_gradients", n_steps=8)
    for i, im in enumerate(res["images"]):
        # top-5 predictions (3 classes here) = softmax of the model on the same input
        order = probs[i].argsort(descending=True).tolist()
        assert [p["index"] for p in im["predictions"]] == order
        assert [p["class"] for p in im["predictions"]] == [CLASSES[j] for j in order]
        for p in im["predictions"]:
            assert p["prob"] == pytest.approx(float(probs[i, p["index"]]), abs=1e-5)
        top = order[0]
        assert im["targets"] == [{"index": top, "class": CLASSES[top]}]
        by_method = {m["method"]: m for m in im["maps"]}
        assert set(by_method) == {"gradcam", "integrated_gradients"}
        g = by_method["gradcam"]
        assert (g["target"], g["class"], g["layer"]) == (top, CLASSES[top], gradcam.layer)
        assert g["stats"]["mean"] == pytest.approx(float(gradcam.maps[i].mean()), abs=1e-4)
        assert g["stats"]["coverage"] == pytest.approx(
            float((gradcam.maps[i] >= 0.5).float().mean()), abs=1e-4
        )
        assert g["view"] == "overlay"
        # the PNG is the rendering of the very map cnnlens.explain computes
        png = np.asarray(Image.open(out / g["png"]).convert("RGB"))
        expect = np.asarray(render_map(x[i], gradcam.maps[i], preset="mnist", min_side=224))
        assert np.abs(png.astype(int) - expect.astype(int)).max() <= 1
        q = by_method["integrated_gradients"]
        assert q["layer"] is None
        assert q["view"] == "signed attribution"
        assert q["stats"]["sum"] == pytest.approx(float(ig.raw[i].sum()), rel=1e-3, abs=1e-6)
        assert q["stats"]["delta"] == pytest.approx(float(ig.extras["delta"][i]), abs=1e-3)
        assert (out / im["input_png"]).is_file()

    # the report embeds every picture (inputs and maps) and links nothing outside itself
    html = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert all(s.startswith("data:image/") for s in sources)
    assert len(sources) >= 3 + 6
    assert "broken.png" in html and "truncated.png" in html


def test_nothing_explained_is_one_line_and_status_2(
    checkpoint: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = _run(folder / "broken.png", folder / "truncated.png", "--model", checkpoint, "--out", out)
    err = capsys.readouterr().err
    assert rc == 2
    last = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(last) == 1 and "none of the 2 inputs" in last[0] and "broken.png" in last[0]
    assert "Traceback" not in err
    assert len(_results(out)["skipped"]) == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--layer", "features.block9"], "features.block"),
        (["--target", "1000"], "the model has 3 classes (0..2)"),
        (["--target-name", "sqare"], "nearest: square"),
        (["--topk", "4"], "between 1 and 3"),
        (["--target", "1", "--topk", "2"], "only one of"),
        (["--method", "gradcam", "--method", "nosuch"], "available: ablationcam"),
        (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--option", "rise.n_masks=5"], "not among the methods run (gradcam)"),
        (["--option", "n_masks=5"], "no method among gradcam takes an option 'n_masks'"),
        (["--option", "n_masks"], "KEY=VALUE"),
        (["--method", "gradcam,occlusion", "--option", "window=40"], "does not fit"),
    ],
)
def test_user_errors_print_one_line(
    checkpoint: Path,
    folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    rc = _run(folder / "a.png", "--model", checkpoint, "--out", tmp_path / "o", *args)
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]


def test_targets_times_layers(checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    layers = ["features.block2", "features.block4"]
    rc = _run(
        folder / "a.png",
        folder / "c.png",
        "--model",
        checkpoint,
        "--target",
        "0",
        "--target",
        "2",
        "--layer",
        layers[0],
        "--layer",
        layers[1],
        "--out",
        out,
        "--batch-size",
        "1",
    )
    assert rc == 0
    res = _results(out)
    net, _ = models.load(checkpoint)
    for im in res["images"]:
        x = _model_input(im["file"])[None]
        exp = cnnlens.explain(net, x, "gradcam", target=torch.tensor([[0, 2]]), layer=layers)
        assert [t["index"] for t in im["targets"]] == [0, 2]
        assert len(im["maps"]) == 4
        assert len({m["png"] for m in im["maps"]}) == 4
        for m in im["maps"]:
            k = [0, 2].index(m["target"])
            expect = exp.per_layer[m["layer"]][0, k]
            assert m["stats"]["mean"] == pytest.approx(float(expect.mean()), abs=1e-4)
            assert (out / m["png"]).is_file()


def test_target_name_and_topk(checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    rc = _run(folder / "a.png", "--model", checkpoint, "--target-name", "STAR", "--out", tmp_path)
    assert rc == 0
    (im,) = _results(tmp_path)["images"]
    assert [(m["target"], m["class"]) for m in im["maps"]] == [(2, "star")]

    out = tmp_path / "topk"
    assert _run(folder / "b.png", "--model", checkpoint, "--topk", "2", "--out", out) == 0
    (im,) = _results(out)["images"]
    top2 = [p["index"] for p in im["predictions"][:2]]
    assert [m["target"] for m in im["maps"]] == top2


def test_method_all_runs_every_registered_method(
    checkpoint: Path, folder: Path, tmp_path: Path
) -> None:
    rc = _run(
        folder / "a.png",
        "--model",
        checkpoint,
        "--method",
        "all",
        "--option",
        "n_steps=8",
        "--option",
        "rise.n_masks=200",
        "--option",
        "batch_size=100",
        "--out",
        tmp_path,
    )
    assert rc == 0
    res = _results(tmp_path)
    ran = {m["method"] for m in res["images"][0]["maps"]}
    not_applicable = {m["method"] for m in res["methods_skipped"]}
    assert ran | not_applicable == set(cnnlens.list_methods())
    assert "cam" in ran  # gap-cnn ends in global average pooling + one linear layer
    for m in res["images"][0]["maps"]:
        assert (tmp_path / m["png"]).is_file()
        assert 0.0 <= m["stats"]["mean"] <= 1.0


def test_collect_images_and_unique_stems(tmp_path: Path) -> None:
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        _png(tmp_path / sub / "img.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "x" / ".hidden.png").write_bytes(b"")
    (tmp_path / "x" / "readme.md").write_text("")
    files, missing = collect_images([tmp_path, tmp_path / "x" / "img.png", tmp_path / "gone.jpg"])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["x/img.png", "y/img.png"]
    assert missing == [{"file": str(tmp_path / "gone.jpg"), "reason": "no such file or folder"}]
    assert unique_stems(files) == ["img", "img-2"]


def test_parse_class_list() -> None:
    names = ["cat", "dog", "bird", "fish"]
    assert parse_class_list(["0-2", "1,3"], num_classes=4, class_names=names) == [0, 1, 2, 3]
    assert parse_class_list(["Dog", "cat"], num_classes=4, class_names=names, by_name=True) == [
        1,
        0,
    ]
    assert parse_class_list(["bird", "0"], num_classes=4, class_names=names) == [2, 0]
    with pytest.raises(TargetError, match=r"--target 4 is out of range: .* 4 classes \(0..3\)"):
        parse_class_list(["4"], num_classes=4, class_names=names)
    with pytest.raises(TargetError, match="from low to high"):
        parse_class_list(["3-1"], num_classes=4)
    with pytest.raises(TargetError, match="no class names"):
        parse_class_list(["cat"], num_classes=4, by_name=True, option="--target-name")
    with pytest.raises(TargetError, match="nearest: bird"):
        parse_class_list(["bird!"], num_classes=4, class_names=names, by_name=True)
    assert split_values(["a, b", "c", ""]) == ["a", "b", "c"]


def test_resolve_device() -> None:
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(InputError, match="cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device is available"):
            resolve_device("cuda")


def test_version_and_help_list_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert re.fullmatch(r"cnnlens \S+ \(torch \S+, Python \S+\)\n", capsys.readouterr().out)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("assess", "demo", "evaluate", "explain", "prototype", "report", "summary",
                    "train", "visualize"):  # fmt: skip
        assert re.search(rf"^\W*{command}\s", out, re.M), command


def test_the_pipeline_is_a_library_call(checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    """run_explain without the CLI: its steps agree with what it wrote, one batch at a time."""
    from cnnlens.pipelines.explain import prepare_model, resolve_targets, run_explain
    from cnnlens.pipelines.options import check_out_dir

    run = run_explain(
        [folder / "a.png", folder / "c.png"],
        model=str(checkpoint),
        out=tmp_path / "lib",
        methods=["gradcam", "saliency"],
        target_names=["square"],
        batch_size=1,
    )
    data = _results(run.out)
    assert run.explained == [str(folder / "a.png"), str(folder / "c.png")]
    assert run.maps == 4 == sum(len(im["maps"]) for im in data["images"])
    assert {m["class"] for im in data["images"] for m in im["maps"]} == {"square"}
    assert run.report.is_file() and data["methods"] == ["gradcam", "saliency"]
    prep = prepare_model(str(checkpoint), None, "cpu")
    assert (prep.num_classes, prep.names, prep.multilabel) == (3, CLASSES, False)
    assert resolve_targets(prep, ["0-1"], [], None) == [0, 1]
    with pytest.raises(TargetError, match="--topk must be between 1 and 3"):
        resolve_targets(prep, [], [], 4)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--out .* exists and is not a folder"):
        check_out_dir(tmp_path / "file")
