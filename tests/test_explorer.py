"""`cnnlens serve`: the explorer's operations, its HTTP bounds, and the page in real Chromium.

The browser test drives Debian's headless Chromium with selenium and chromedriver (the dev
extra holds selenium; `apt-get install -y chromium chromium-driver`, as .ci/run does). It is
skipped, with that reason, only where Chromium or its driver is absent.
"""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from cnnlens.serve import MAX_UPLOAD_BYTES, Explorer, serve_in_thread
from cnnlens.serve.http import page

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(skdata.chelsea()).resize((96, 64)).save(folder / "cat.png")
    out = tmp_path_factory.mktemp("out")
    ex = Explorer("gap-cnn", images=folder, out_dir=out)  # random weights: logged, labelled
    srv = serve_in_thread(ex, port=0)
    yield srv, ex
    srv.shutdown()
    srv.server_close()


def _url(srv, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_port}{path}"


def _post(
    srv, path: str, body: bytes, ctype: str = "application/json", host: str | None = None
) -> tuple[int, dict]:
    headers = {"Content-Type": ctype, **({"Host": host} if host else {})}
    req = urllib.request.Request(_url(srv, path), data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_page_has_no_external_assets() -> None:
    html = page().decode()
    assert "<script src" not in html and "<link" not in html
    assert "http://" not in html and "https://" not in html and "@import" not in html


def test_http_bounds_and_errors(server, tmp_path: Path) -> None:
    srv, _ = server
    code, body = _post(srv, "/api/upload", b"not an image", "application/octet-stream")
    assert code == 400 and "not an image" in body["error"]
    big = io.BytesIO()
    Image.new("L", (6000, 5000)).save(big, format="PNG")  # 30 MP, a small file
    code, body = _post(srv, "/api/upload", big.getvalue(), "application/octet-stream")
    assert code == 400 and "pixels" in body["error"]
    code, body = _post(
        srv, "/api/upload", b"x" * (MAX_UPLOAD_BYTES + 1), "application/octet-stream"
    )
    assert code == 413 and "limit" in body["error"]
    code, body = _post(srv, "/api/explain", json.dumps({"image": "nope"}).encode())
    assert code == 400 and "not loaded" in body["error"]
    # what a page on another site could send without a preflight, or via DNS rebinding
    code, body = _post(srv, "/api/model", b'{"model": "resnet18"}', "text/plain")
    assert code == 403 and "application/json" in body["error"]
    code, body = _post(srv, "/api/info", b"{}", host="evil.example:80")
    assert code == 403 and "127.0.0.1" in body["error"]
    code, body = _post(srv, "/api/model", json.dumps({"model": "/etc/passwd"}).encode())
    assert code == 400 and "registry name" in body["error"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(_url(srv, "/out/../../etc/passwd"), timeout=10)
    assert err.value.code == 404
    with urllib.request.urlopen(_url(srv, "/api/info"), timeout=10) as r:  # still serving
        assert json.loads(r.read())["model"] == "gap-cnn"


@pytest.mark.slow
def test_report_stays_in_the_output_folder(server) -> None:
    srv, ex = server
    key = ex.describe()["images"][0]["id"]
    code, body = _post(
        srv, "/api/report", json.dumps({"image": key, "methods": ["gradcam"]}).encode()
    )
    assert code == 200 and body["url"].startswith("/out/")
    written = [p for p in ex.out_dir.rglob("*") if p.is_file()]
    assert written and all(p.resolve().is_relative_to(ex.out_dir) for p in written)
    with urllib.request.urlopen(_url(srv, body["url"]), timeout=10) as r:
        assert b"random weights: predictions mean nothing" in r.read()
    code, body = _post(srv, "/api/trust", json.dumps({"image": key}).encode())
    assert code == 200 and 0.0 <= body["deletion_auc"] <= 1.0 and len(body["curve"]) > 2


def _driver():
    if not CHROMIUM.exists() or not Path(DRIVER).exists():
        pytest.skip(
            "browser test needs /usr/bin/chromium and chromedriver "
            "(Debian: apt-get install -y chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) missing")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(DRIVER))


@pytest.mark.slow
def test_explorer_in_headless_chromium(server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    srv, ex = server
    driver = _driver()
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(_url(srv, "/"))
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        assert "random weights" in driver.find_element(By.ID, "weights-label").text
        Select(driver.find_element(By.ID, "image-select")).select_by_visible_text("cat.png")
        Select(driver.find_element(By.ID, "method")).select_by_value("saliency")
        overlay = driver.find_element(By.ID, "overlay")
        wait.until(lambda d: overlay.get_attribute("src") and overlay.is_displayed())
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", overlay) > 0)
        assert overlay.get_attribute("src").startswith("data:image/png;base64,")
        predicted = driver.find_element(By.ID, "predicted").text
        assert predicted.startswith("predicted: class ") and "saliency" in predicted
        # bad uploads: a clear message, and the server keeps serving
        notes = tmp_path / "notes.txt"
        notes.write_text("not a picture")
        driver.find_element(By.ID, "upload").send_keys(str(notes))
        msg = driver.find_element(By.ID, "message")
        wait.until(lambda d: "not an image" in msg.text)
        assert msg.get_attribute("class") == "error"
        huge = tmp_path / "huge.png"
        Image.new("L", (6000, 5000)).save(huge)
        driver.find_element(By.ID, "upload").send_keys(str(huge))
        wait.until(lambda d: "pixels" in msg.text)
        # a good upload after the bad ones is explained at once
        good = tmp_path / "noise.png"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(good)
        old = overlay.get_attribute("src")
        driver.find_element(By.ID, "upload").send_keys(str(good))
        wait.until(lambda d: overlay.get_attribute("src") != old)
        assert driver.find_element(By.ID, "image-select").get_attribute("value") in {
            im["id"] for im in ex.describe()["images"]
        }
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert all("400" in e["message"] for e in logs), logs  # only the refused uploads
    finally:
        driver.quit()
