"""The report in a real headless Chromium: no console errors, every image loads, not blank.

Chromium is driven without Python packages: ``--dump-dom`` of a copy of the page with a
small checking script injected at the top of <head> (it records errors and, on load, writes
the image checks into the DOM), and ``--screenshot`` of the untouched page with Chromium's
console log on stderr. Skipped when /usr/bin/chromium is missing
(``apt-get install -y chromium``).
"""

from __future__ import annotations

import html as html_lib
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlens import viz
from cnnlens.report import (
    MapEntry,
    MetricsTable,
    MetricValue,
    ModelCard,
    Picture,
    Prediction,
    Prototype,
    ReportImage,
    SanityVerdict,
    write_report,
)

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_S = 90

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless browser test needs /usr/bin/chromium (Debian: apt-get install -y chromium)",
)

# Injected first in <head>: collect script errors, failed resources and console.error calls;
# after load, check every <img> decoded and write the verdict into the DOM for --dump-dom.
_PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(t && t !== window && t.tagName ? "failed to load " + t.tagName : String(e.message));
  }, true);
  var original = console.error;
  console.error = function () {
    errors.push(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
    var out = document.createElement("pre");
    out.id = "cnnlens-probe";
    out.textContent = JSON.stringify({
      images: imgs.length,
      bad: bad.map(function (i) { return i.alt; }),
      errors: errors
    });
    document.body.appendChild(out);
  });
})();
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s: {' '.join(cmd)}")


def _probe(page: Path, tmp_path: Path) -> dict[str, object]:
    """Load a copy of ``page`` with the probe and return its verdict."""
    text = page.read_text(encoding="utf-8")
    copy = page.with_name(f"probe-{page.name}")
    copy.write_text(re.sub(r"<head>", "<head>" + _PROBE, text, count=1), encoding="utf-8")
    done = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", copy.as_uri())
    found = re.search(r'<pre id="cnnlens-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html_lib.unescape(found.group(1)))


def _report(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    img = torch.stack([xs, ys, 1 - xs])
    grey = torch.rand(1, 28, 28)
    maps = [
        MapEntry(viz.overlay(img, xs * ys), method="gradcam", target=1, class_name="circle",
                 layer="features.3", stats={"max": 1.0}),
        MapEntry(viz.attribution(torch.randn(3, 32, 32)), method="saliency", target=1,
                 class_name="<script>alert(1)</script>"),
        MapEntry(viz.masked(img, ys), method="rise", target=1, class_name="circle"),
    ]  # fmt: skip
    figure = viz.methods_grid([img, img], {"gradcam": [xs, ys], "rise": [ys, xs]})
    images = [
        ReportImage(
            "shape_001.png",
            image=viz.show_image(img),
            predictions=[Prediction("circle", 1, 0.8), Prediction("square", 0, 0.2)],
            maps=maps,
            figures=[Picture(figure, "methods x images")],
        ),
        ReportImage("digit.png", image=viz.show_image(grey), maps=[MapEntry(viz.heatmap(grey[0]))]),
    ]
    metrics = MetricsTable(
        ["deletion"], {"gradcam": {"deletion": MetricValue(0.1, 0.02)}}, {"deletion": False}
    )
    return write_report(
        tmp_path / "report.html",
        title="browser check",
        model_card=ModelCard(arch="simplecnn", parameters=1234, dataset="shapes", accuracy=0.9),
        images=images,
        prototypes=[Prototype(viz.show_image(torch.rand(3, 16, 16)), class_name="circle")],
        metrics=metrics,
        sanity=[SanityVerdict("gradcam", "model randomization", True, "SSIM 0.1")],
    )


def test_probe_catches_broken_images_and_script_errors(tmp_path: Path) -> None:
    """The checker itself: a page with a broken image and a throwing script fails it."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body>"
        '<img alt="broken" src="data:image/png;base64,AAAA">'
        "<script>throw new Error('boom')</script></body></html>",
        encoding="utf-8",
    )
    verdict = _probe(page, tmp_path)
    assert verdict["bad"] == ["broken"]
    assert any("boom" in e for e in verdict["errors"])  # type: ignore[union-attr]
    # Chromium's own console log on stderr reports the uncaught error too.
    assert any("boom" in line for line in _console(tmp_path, page, tmp_path / "broken.png"))


def _console(tmp_path: Path, page: Path, shot: Path) -> list[str]:
    """Screenshot ``page`` at 1280 x 900 and return Chromium's console lines."""
    done = _chromium(
        tmp_path,
        "--enable-logging=stderr",
        "--v=0",
        "--hide-scrollbars",
        "--window-size=1280,900",
        f"--screenshot={shot}",
        page.as_uri(),
    )
    assert shot.exists(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return [line for line in done.stderr.splitlines() if "CONSOLE" in line]


def test_report_loads_cleanly_in_headless_chromium(tmp_path: Path) -> None:
    page = _report(tmp_path)
    verdict = _probe(page, tmp_path)
    assert verdict["images"] == 2 + 3 + 1 + 1 + 1  # inputs, maps, figure, heatmap, prototype
    assert verdict["bad"] == [], f"images that did not load: {verdict['bad']}"
    assert verdict["errors"] == [], f"errors in the page: {verdict['errors']}"

    shot = tmp_path / "report.png"
    console = _console(tmp_path, page, shot)
    assert console == [], f"console messages: {console}"
    with Image.open(io.BytesIO(shot.read_bytes())) as im:
        assert im.size == (1280, 900)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is (nearly) one colour"
