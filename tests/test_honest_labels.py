"""A model without trained weights says so: in ModelInfo, on the terminal and in the report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens import models
from cnnlens.cli.main import main
from cnnlens.models.checkpoint import RANDOM_WEIGHTS


def test_model_without_weights_is_labelled_random(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _, info = models.load("resnet18")
    assert info.pretrained is False and info.weights_label == RANDOM_WEIGHTS
    assert info.extra["weights"] == RANDOM_WEIGHTS
    assert "untrained" in info.extra["class_names"]  # ImageNet names on an untrained model
    assert any("random weights" in r.getMessage() for r in caplog.records)


def test_explain_cli_report_flags_random_weights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "run"
    code = main(
        ["explain", str(photo), "--model", "resnet18", "--method", "gradcam", "--out", str(out),
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    # the CLI's logging handler prints this on stderr; under pytest caplog holds it
    assert any("random weights: predictions mean nothing" in r.getMessage() for r in caplog.records)
    html = (out / "report.html").read_text()
    assert 'class="warn"' in html and "random weights: predictions mean nothing" in html
    assert "labels are arbitrary" in html
    assert "<dt>Weights</dt><dd>resnet18</dd>" not in html.replace("\n", "").replace("  ", "")
