"""``cnnlens explain --task detection|segmentation|multilabel`` on small random-weight models:
the detections, regions and labels the model gives, one map each, the report's task table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnnlens.cli.main import app, main
from cnnlens.data.objects import make_shapes_objects
from cnnlens.models.tasks import create_task_model

pytest.importorskip("torchvision")
runner = CliRunner()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    data = make_shapes_objects(1, size=64, split="test")
    path = tmp_path_factory.mktemp("img") / "shapes.png"
    Image.fromarray((data.images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return path


def _run(args: list[str]) -> tuple[int, str]:
    res = runner.invoke(app, ["explain", *args])
    return res.exit_code, res.output


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run through ``main`` (user errors: one line, status 2); the error line."""
    assert main(["explain", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    return err


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_detection_one_map_per_detection_with_its_box(image, tmp_path):
    out = tmp_path / "det"
    args = ["--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--task", "detection"]
    args += ["--size", "64", "--num-classes", "4", "--score-threshold", "0", "--out", str(out)]
    torch.manual_seed(0)
    code, text = _run([str(image), *args, "--max-detections", "2", "--method", "gradcam,saliency"])
    assert code == 0, text
    torch.manual_seed(0)  # the same random weights: the detections the command explained
    ref = create_task_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn", "detection", num_classes=4, size=64
    )
    x = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1) / 255
    with torch.no_grad():
        det = ref(x[None].float())[0]
    im = _results(out)["images"][0]
    assert im["task"]["kind"] == "detection"
    assert im["task"]["columns"] == ["detection", "gradcam", "saliency"]
    assert len(im["task"]["rows"]) == len(im["predictions"]) == 2
    for k, p in enumerate(im["predictions"]):
        assert p["box"] == pytest.approx(det["boxes"][k].tolist(), abs=0.01)
        assert p["index"] == int(det["labels"][k]) and p["prob"] == pytest.approx(
            float(det["scores"][k]), abs=1e-5
        )
        pics = im["task"]["rows"][k]["pictures"]
        assert len(pics) == 3 and all((out / q["png"]).is_file() for q in pics)
    html = (out / "report.html").read_text()
    assert "Detections" in html and 'class="task"' in html
    assert html.count("data:image/png;base64") >= 1 + 2 * 3  # the input + the table


def test_detection_with_nothing_above_the_threshold_says_so(image, tmp_path):
    out = tmp_path / "none"
    code, text = _run(
        [str(image), "--model", "shapes-detector", "--task", "detection", "--out", str(out),
         "--score-threshold", "1.0"]
    )  # fmt: skip
    assert code == 0, text
    im = _results(out)["images"][0]
    assert im["task"]["rows"] == [] and "no detection scores at least" in im["notes"]


def test_segmentation_regions_by_default_and_by_class_name(image, tmp_path, capsys):
    out = tmp_path / "seg"
    torch.manual_seed(0)
    code, text = _run(
        [str(image), "--model", "lraspp_mobilenet_v3_large", "--task", "segmentation",
         "--num-classes", "3", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, text
    im = _results(out)["images"][0]
    assert im["task"]["columns"] == ["predicted region", "gradcam"]
    shares = [p["prob"] for p in im["predictions"]]
    assert im["task"]["rows"] and shares == sorted(shares, reverse=True)
    assert sum(shares) == pytest.approx(1.0)  # every predicted class (no background name here)
    # by name, on the shapes segmenter's classes
    out2 = tmp_path / "seg2"
    code, text = _run(
        [str(image), "--model", "shapes-segmenter", "--task", "segmentation", "--class",
         "circle", "--out", str(out2)]
    )  # fmt: skip
    assert code == 0, text
    im = _results(out2)["images"][0]
    assert [p["class"] for p in im["predictions"]] == ["circle"] or "circle" in im["notes"]
    text = _fails(
        [str(image), "--model", "shapes-segmenter", "--task", "segmentation", "--class",
         "circel", "--out", str(tmp_path / "bad")], capsys
    )  # fmt: skip
    assert "--class" in text and "circel" in text


def test_multilabel_one_column_per_label_above_the_threshold(image, tmp_path):
    out = tmp_path / "ml"
    torch.manual_seed(0)
    code, text = _run(
        [str(image), "--model", "gap-cnn", "--task", "multilabel", "--score-threshold", "0",
         "--max-detections", "3", "--method", "gradcam,saliency", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, text
    im = _results(out)["images"][0]
    probs = [p["prob"] for p in im["predictions"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert [r["label"] for r in im["task"]["rows"]] == ["gradcam", "saliency"]
    assert all(len(r["pictures"]) == 3 for r in im["task"]["rows"])
    assert im["task"]["columns"][0].startswith(im["predictions"][0]["class"])


def test_task_errors_are_one_line(image, tmp_path, capsys):
    text = _fails(
        [str(image), "--model", "resnet18", "--task", "detection", "--out", str(tmp_path / "a")],
        capsys,
    )
    assert "not a detection model" in text
    text = _fails(
        [str(image), "--model", "gap-cnn", "--task", "pose", "--out", str(tmp_path / "b")], capsys
    )
    assert "--task" in text
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
