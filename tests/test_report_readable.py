"""The report as a reader meets it (issue 18): every picture opens enlarged without script or
network, maps come with colour bars and their numbers defined, methods go family by family,
SmoothGrad is drawn as its base method is."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import torch
from PIL import Image

import cnnlens
from cnnlens.core.registry import FAMILIES, list_methods
from cnnlens.report import MapEntry, ModelCard, Picture, ReportImage, render_report


class _Zoom(HTMLParser):
    """Each <img> with whether it sits in a label.zoom that holds a checkbox."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.imgs: list[bool] = []
        self.boxes = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("type") == "checkbox":
            self.boxes += 1
        if tag == "img":
            self.imgs.append(
                any(t == "label" and "zoom" in (b.get("class") or "") for t, b in self.stack)
            )
        elif tag not in ("input", "br", "meta"):
            self.stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop()[0] != tag:
            pass


def _html() -> str:
    big = Image.new("RGB", (1800, 400), (200, 30, 30))
    small = Image.new("RGB", (28, 28), (0, 90, 200))
    image = ReportImage(
        "digit.png",
        image=small,
        maps=[
            MapEntry(
                small,
                method="gradcam",
                stats={"mean": 0.3, "coverage": 0.12, "peak_y": 0.4, "peak_x": 0.5},
            ),
            MapEntry(small, method="integrated_gradients", stats={"sum": 1.5, "delta": 0.01}),
        ],
        figures=[Picture(big, "a wide figure")],
    )
    return render_report(model_card=ModelCard(arch="simplecnn"), images=[image])


def test_every_picture_opens_enlarged_without_script() -> None:
    html = _html()
    page = _Zoom()
    page.feed(html)
    assert len(page.imgs) == 4 and all(page.imgs) and page.boxes == 4
    assert "input:checked + .frame" in html and "max-width: none" in html  # full size when open
    assert "<script" not in html and "http" not in html and "url(" not in html


def test_maps_get_colour_bars_and_their_numbers_are_defined() -> None:
    html = _html()
    legend = html.split("Reading the maps")[1].split("</details>")[0]
    # jet runs from dark blue (0) to dark red (1); bwr from blue through white to red
    assert "linear-gradient(to right, rgb(0,0,128) 0%" in legend
    assert "rgb(128,0,0) 100%" in legend
    assert "rgb(0,0,255) 0%" in legend and "rgb(255,254,254) 50%" in legend
    for key in ("coverage", "peak_y", "peak_x", "sum", "delta", "mean"):
        assert re.search(rf"<dt>{key}</dt><dd>[^<]{{20,}}</dd>", legend), key
    assert "0.5 or above" in legend
    # no maps, no legend
    bare = render_report(model_card=ModelCard(arch="simplecnn"), images=[])
    assert "Reading the maps" not in bare


def test_methods_are_listed_family_by_family() -> None:
    from cnnlens.pipelines.explain import expand_methods

    names = list_methods(by_family=True)
    assert sorted(names) == list_methods()
    ranks = [FAMILIES.index(cnnlens.get_method(n).family) for n in names]
    assert ranks == sorted(ranks)
    assert names[:3] == ["cam", "gradcam", "gradcam++"]  # each family's founding method first
    assert names.index("gradcam") < names.index("saliency") < names.index("occlusion")
    assert expand_methods(["all"]) == names
    assert expand_methods(["occlusion,gradcam"]) == ["occlusion", "gradcam"]  # as the user said


def test_smoothgrad_is_drawn_as_its_base_method() -> None:
    from cnnlens.models import SimpleCNN
    from cnnlens.viz import signed_view

    torch.manual_seed(0)
    net = SimpleCNN(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    smooth = cnnlens.get_method("smoothgrad")
    for base, signed, opts in (
        ("saliency", False, {}),
        ("integrated_gradients", True, {"n_steps": 4}),
    ):
        exp = cnnlens.explain(net, x, "smoothgrad", base=base, n_samples=2, **opts)
        plain = cnnlens.explain(net, x, base, **opts)
        assert exp.raw.min() < 0 < exp.raw.max()  # both carry signs; the base decides the view
        assert signed_view(smooth, exp.raw[0], exp.maps[0], exp.extras) is signed, base
        assert signed_view(cnnlens.get_method(base), plain.raw[0], plain.maps[0]) is signed
