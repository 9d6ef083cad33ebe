"""examples/quickstart.ipynb runs top to bottom (nbclient, no network) and shows pictures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient (dev extra) missing")
nbformat = pytest.importorskip("nbformat", reason="nbformat (dev extra) missing")
pytest.importorskip("ipykernel", reason="ipykernel (dev extra) missing")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = src + (os.pathsep + env_path if env_path else "")
    try:
        client = nbclient.NotebookClient(
            nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        client.execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert any("data:image/png;base64," in h and "gradcam" in h for h in html)  # exp's repr
    assert len(pngs) >= 2  # the photo overlay and the methods grid
    text = "".join(o.get("text", "") for o in outputs)
    assert "deletion AUC" in text and "report.html True" in text
