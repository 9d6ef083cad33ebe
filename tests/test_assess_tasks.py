"""``assess --task segmentation``: one row per image x object, region scores, own masks."""

from __future__ import annotations

import pytest
import torch

from cnnlens.assess import assess
from cnnlens.assess.data import make_rows
from cnnlens.assess.tasks import RegionScores, load_objects, task_method_options
from cnnlens.errors import InputError
from cnnlens.metrics import pointing_game
from cnnlens.models.tasks import ShapesSegmenter
from cnnlens.targets import SegmentationRegion


@pytest.fixture(scope="module")
def segmenter() -> ShapesSegmenter:
    torch.manual_seed(0)
    return ShapesSegmenter(6, channels=32).eval()


def test_region_scores_equal_the_region_target(segmenter: ShapesSegmenter) -> None:
    x = load_objects("shapes-objects", n=3).images
    with torch.no_grad():
        scores = RegionScores(segmenter)(x)
        out = segmenter(x)
        want = torch.stack([SegmentationRegion(c)(out) for c in range(6)], dim=1)
        z = out["out"]
        by_hand = (z[1, 2] * (z[1].argmax(0) == 2)).sum()
    assert scores.shape == (3, 6)
    torch.testing.assert_close(scores, want)
    torch.testing.assert_close(scores[1, 2], by_hand)


def test_rows_are_objects_scored_against_their_own_masks(segmenter: ShapesSegmenter) -> None:
    data = load_objects("shapes-objects", n=4)
    with torch.no_grad():
        logits = RegionScores(segmenter)(data.images)
    rows = make_rows(logits, data, "label")
    assert rows.ids == [f"{i}.{k}" for i in range(4) for k in range(2)]
    assert rows.targets.tolist() == data.labels.flatten().tolist()
    assert rows.masks is not None
    assert torch.equal(rows.masks, data.masks.flatten(0, 1))
    # a map equal to the object's mask points inside it; the other object's mask misses
    own = pointing_game(rows.masks.float(), rows.masks)
    other = data.masks.flip(1).flatten(0, 1)
    assert torch.equal(own, torch.ones(8, dtype=own.dtype))
    assert float(pointing_game(other.float(), rows.masks).max()) == 0.0


def test_cam_methods_read_the_backbone(segmenter: ShapesSegmenter) -> None:
    opts = task_method_options(segmenter, ["gradcam", "saliency"], {"gradcam": {"relu": True}})
    assert opts == {"gradcam": {"relu": True, "layer": "model.backbone.body"}}


@pytest.mark.filterwarnings("ignore:gradcam. the target score does not depend")
def test_assess_segmentation_rows_and_baselines(segmenter: ShapesSegmenter, tmp_path) -> None:
    metrics = ["pointing_game", "energy_pointing_game", "deletion", "insertion"]
    res = assess(
        segmenter,
        "shapes-objects",
        tmp_path / "run",
        task="segmentation",
        methods=["gradcam", "saliency"],
        metrics=metrics,
        n=3,
        sanity_images=0,
        examples=1,
        metric_options={"deletion": {"step": 256}, "insertion": {"step": 256}},
    )
    assert res.computed == 6 * 4  # 3 images x 2 objects, 2 methods + 2 baselines
    table = {(r["method"], r["metric"]): r for r in res.rows}
    for method in ("gradcam", "saliency", "random", "centre"):
        for metric in metrics:
            row = table[(method, metric)]
            assert row["n"] == 6 and row["mean"] == row["mean"]  # every row scored
    assert set(res.metrics) == set(metrics)
    assert (tmp_path / "run" / "report.html").is_file()
    settings = (tmp_path / "run" / "run.json").read_text()
    assert '"task": "segmentation"' in settings and '"activation": null' in settings


def test_task_and_dataset_must_agree(segmenter: ShapesSegmenter, tmp_path) -> None:
    with pytest.raises(InputError, match="needs a dataset of objects"):
        assess(segmenter, "shapes", tmp_path / "a", task="segmentation", n=2)
    with pytest.raises(InputError, match="use task 'segmentation'"):
        assess(segmenter, "shapes-objects", tmp_path / "b", n=2)
    with pytest.raises(InputError, match="task"):
        assess(segmenter, "shapes-objects", tmp_path / "c", task="detection", n=2)
    assert not any(tmp_path.iterdir())


def test_cli_assess_segmentation(tmp_path, capsys) -> None:
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from cnnlens.cli.main import app, main

    torch.manual_seed(0)
    segmenter = ShapesSegmenter(6)  # the shape create_task_model builds
    weights = tmp_path / "seg.safetensors"
    save_file({k: v.contiguous() for k, v in segmenter.state_dict().items()}, str(weights))
    base = ["assess", "--model", "shapes-segmenter", "--weights", str(weights)]
    args = [*base, "--dataset", "shapes-objects", "--task", "segmentation", "--n", "2"]
    args += ["--methods", "saliency", "--metrics", "pointing_game", "--sanity-images", "0"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "4 rows of shapes-objects" in res.output
    table = (tmp_path / "run" / "table.json").read_text()
    assert "saliency" in table and "centre" in table
    bad = [*args[:-4], "--task", "detection", "--out", str(tmp_path / "d")]
    assert main(bad) == 2
    assert "--task must be one of" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
