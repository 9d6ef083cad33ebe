"""The assess report's comparison picture and robustness section, and the family scores
behind the picture (hand-computed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

import cnnlens.assess as A
from cnnlens import models
from cnnlens.report import load_results
from cnnlens.viz.summary_chart import family_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_family_scores_rescale_each_metric_then_average_the_family() -> None:
    means = {
        "a": {"pg": 0.9, "del": 0.2, "sens": 0.5},
        "b": {"pg": 0.5, "del": 0.1, "sens": 0.1},
        "c": {"pg": 0.1, "del": 0.4},
    }
    up = {"pg": True, "del": False, "sens": False}
    fam = {"pg": "localization", "del": "faithfulness", "sens": "robustness"}
    out = family_scores(means, up, fam)
    # pg: a 1, b 0.5, c 0; del (lower better): b 1, a 2/3, c 0; sens: b 1, a 0
    assert out["a"] == pytest.approx({"localization": 1.0, "faithfulness": 2 / 3, "robustness": 0})
    assert out["b"] == pytest.approx({"localization": 0.5, "faithfulness": 1.0, "robustness": 1})
    assert out["c"] == pytest.approx({"localization": 0.0, "faithfulness": 0.0})
    two = family_scores(means, up, {"pg": "x", "del": "x", "sens": "x"})
    assert two["a"]["x"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_assess_report_has_the_summary_picture_and_a_robustness_section(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    net = models.create("gap-cnn")
    with torch.no_grad():
        net.fc.weight.mul_(8.0)
    net.eval()
    data = A.load_data("shapes", options={"size": 16}, n=4)
    metrics = ["pointing_game", "sparseness", "deletion", "max_sensitivity", "avg_sensitivity"]
    draws = {"n_samples": 2}
    A.assess(
        net, data, tmp_path, methods="gradcam,saliency", metrics=metrics, n=None,
        sanity_images=0, examples=0, batch_size=4,
        metric_options={"deletion": {"step": 64}, "max_sensitivity": draws,
                        "avg_sensitivity": draws},
    )  # fmt: skip
    for name in ("summary", "robustness"):
        with Image.open(tmp_path / "figures" / f"{name}.png") as im:
            assert im.size[0] > 200 and im.size[1] > 200
    raw = json.loads((tmp_path / "results.json").read_text())
    (section,) = raw["sections"]
    assert section["title"] == "Robustness"
    assert [r["method"] for r in section["table"]] == ["gradcam", "saliency"]
    assert set(section["table"][0]) == {"method", "max-sens ↓", "avg-sens ↓"}
    assert "localization" in raw["metrics"]["figures"][-1]["caption"]
    res = load_results(tmp_path)
    assert res.sections[0].table == section["table"]
    html = (tmp_path / "report.html").read_text()
    assert "Robustness" in html and "max-sens" in html
    assert html.count("data:image/png;base64") >= 2
    cell = section["table"][0]["max-sens ↓"]
    assert math.isfinite(float(cell.split()[0]))
