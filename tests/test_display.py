"""Results that show themselves: Jupyter reprs, show/plot/save, one-liners."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from types import SimpleNamespace

import matplotlib
import pytest
import torch
from PIL import Image
from torch import nn

import cnnlens
from cnnlens import viz

matplotlib.use("Agg")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_explanation_repr_html_embeds_the_picture_and_no_network() -> None:
    x = torch.rand(2, 3, 32, 32)
    exp = cnnlens.explain(_net(), x, method="gradcam", topk=2)
    exp.class_names = ["cat", "dog", "fox"]
    html = exp._repr_html_()
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    w, h = _png_size(base64.b64decode(srcs[0].split(",", 1)[1]))
    assert w > 200 and h > 200
    text = html.replace(srcs[0], "")  # everything but the embedded picture
    assert not re.search(r"https?:|//|<link|<script|@import|url\(", text)
    top = [["cat", "dog", "fox"][c] for c in exp.targets[0].tolist()]
    assert "gradcam" in html and "layer" in html and all(n in html for n in top)
    assert _png_size(exp._repr_png_()) == (w, h)


def test_show_plot_save(tmp_path) -> None:
    import matplotlib.pyplot as plt

    exp = cnnlens.explain(_net(), torch.rand(1, 3, 32, 32), method="saliency")
    path = exp.save(tmp_path / "out.png")
    assert path.is_file() and _png_size(path.read_bytes())[0] > 100
    fig, ax = plt.subplots()
    assert exp.plot(ax=ax) is ax and len(ax.images) == 1
    plt.close(fig)
    exp.show()  # Agg backend: nothing opens
    plt.close("all")
    # an explanation made by a method class holds no input: the error says what to pass
    bare = cnnlens.methods.Saliency(_net())(torch.rand(1, 3, 32, 32))
    with pytest.raises(cnnlens.CnnlensError, match="image="):
        bare.figure()
    assert bare.figure(image=torch.rand(3, 32, 32)).get_size_inches()[0] > 1


def test_assessment_and_prototype_results_draw() -> None:
    rows = [
        {
            "method": m,
            "metric": k,
            "mean": v,
            "low": v - 0.1,
            "high": v + 0.1,
            "higher_is_better": k == "insertion",
        }
        for m, v in [("gradcam", 0.6), ("saliency", 0.3)]
        for k in ("insertion", "deletion")
    ]
    result = SimpleNamespace(rows=rows)
    fig = viz.result_figure(type("AssessResult", (), {"rows": rows})())
    assert len([a for a in fig.axes if a.has_data()]) == 2
    with pytest.raises(cnnlens.CnnlensError, match="Explanation"):
        viz.result_figure(result)
    from cnnlens.prototypes import class_prototypes

    with pytest.warns(UserWarning, match="did not reach"):
        res = class_prototypes(_net(), classes=[0, 1], steps=2, shape=(3, 16, 16))
    assert res._repr_html_().count("data:image/png;base64,") == 1


def test_one_liners() -> None:
    x = torch.rand(2, 3, 32, 32)
    exp = cnnlens.explain(_net(), x, method="gradcam", topk=2)
    ims = viz.overlay_batch(x, exp.maps)
    assert len(ims) == 4 and ims[0].size == (32, 32)
    fig = viz.compare(_net(), x, ["gradcam", "saliency"])
    assert len([a for a in fig.axes if a.images]) == 2 * 3


def test_core_does_not_import_viz_at_import_time() -> None:
    code = (
        "import sys, cnnlens.core.explanation, cnnlens.core.display\n"
        "bad = [m for m in sys.modules if m.startswith(('cnnlens.viz', 'matplotlib', 'PIL'))]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
