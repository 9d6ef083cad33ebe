"""`cnnlens explain --model path/to/model.keras` (issue 12, item 5): a saved Keras model is
loaded in safe mode, fed (B, H, W, C) images at its input size, explained and reported; a file
holding a Lambda layer is refused with one line; without Keras, one line says how to get it.

Needs the ``keras`` extra (installed by ``make test``); skipped without it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest
import torch
from PIL import Image

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - another backend was set first
    pytest.skip("Keras runs on another backend than torch", allow_module_level=True)

from cnnlens import models  # noqa: E402
from cnnlens.cli.main import main  # noqa: E402
from cnnlens.core.keras import KerasChannelsFirst  # noqa: E402
from cnnlens.data import load_image  # noqa: E402
from cnnlens.errors import ModelError, WeightsError  # noqa: E402
from cnnlens.models.keras import load_keras  # noqa: E402

SIZE = 24


def small_keras(lambda_layer: bool = False):
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Lambda(lambda t: t * 2.0)(inp) if lambda_layer else inp
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(h)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, keras.layers.Dense(4, name="fc")(h))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keras")
    path = d / "model.keras"
    small_keras().save(path)
    rng = np.random.default_rng(0)
    photos = d / "photos"
    photos.mkdir()
    Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(photos / "a.png")
    return path, photos


def test_explain_a_saved_keras_model_from_the_command_line(
    saved: tuple[Path, Path], tmp_path: Path
) -> None:
    path, photos = saved
    out = tmp_path / "out"
    args = ["explain", str(photos), "--model", str(path), "--out", str(out), "--no-progress"]
    rc = main([*args, "--method", "gradcam", "--method", "saliency", "--layer", "c2"])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["model"]["input_size"] == [SIZE, SIZE] and data["model"]["in_channels"] == 3
    (image,) = data["images"]
    assert {m["method"] for m in image["maps"]} == {"gradcam", "saliency"}
    assert [m["layer"] for m in image["maps"] if m["method"] == "gradcam"] == ["c2"]
    for m in image["maps"]:
        assert (out / m["png"]).is_file()
    assert (out / "report.html").is_file()
    # the probabilities are the Keras model's own for the (1, H, W, C) image at its input size
    img = load_image(photos / "a.png", mode="RGB").resize((SIZE, SIZE), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
    with torch.no_grad():
        probs = keras.ops.softmax(keras.saving.load_model(path)(x))[0]
    top = image["predictions"][0]
    assert top["index"] == int(probs.argmax())
    assert top["prob"] == pytest.approx(float(probs.max()), abs=2e-3)


def test_load_keras_gives_a_channels_first_model(saved: tuple[Path, Path]) -> None:
    path, _ = saved
    net, info = models.load(path)
    assert isinstance(net, KerasChannelsFirst) and not net.training
    assert (
        info.input_size == (SIZE, SIZE) and info.num_classes == 4 and info.arch.startswith("keras")
    )
    x = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(net(x), net.keras(x.permute(0, 2, 3, 1)))


def test_a_keras_file_with_a_lambda_layer_is_refused_by_safe_mode(
    tmp_path: Path, saved: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lambda.keras"
    small_keras(lambda_layer=True).save(path)
    with pytest.raises(WeightsError, match=r"safe mode refuses .*Lambda"):
        load_keras(path)
    out = tmp_path / "out"
    rc = main(["explain", str(saved[1]), "--model", str(path), "--out", str(out), "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "Lambda" in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_keras_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        models.load(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(WeightsError, match="not a Keras model file"):
        models.load(bad)
    monkeypatch.setitem(sys.modules, "keras", None)  # as if the extra were not installed
    with pytest.raises(ModelError, match=r"pip install 'cnnlens\[keras\]'"):
        load_keras(bad)
