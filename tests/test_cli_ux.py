"""The CLI as a new user meets it: tables that fit 80/110 columns, help that lists the valid
choices, did-you-mean for unknown names (issue 18)."""

from __future__ import annotations

import re
from types import SimpleNamespace

from typer.testing import CliRunner

from cnnlens.cli.main import app
from cnnlens.metrics import metric_infos

runner = CliRunner()


def test_summary_at_80_columns_keeps_the_type_column_and_whole_values() -> None:
    result = runner.invoke(app, ["summary", "resnet18"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert re.search(r"\bType\b", result.output)
    conv1 = next(line for line in lines if line.startswith("conv1 "))
    # every cell whole: the type, the kernel, the shape and both counts, no ellipsis
    assert re.search(r"Conv2d\s+7x7\s+\[1,64,112,112\]\s+9\.41k\s+118\.01M$", conv1), conv1
    assert "AdaptiveAvgPool2d" in result.output
    assert "…" not in result.output
    assert "Total params: 11,689,512" in result.output  # the exact figures stay below


def test_assess_table_at_110_columns_shows_whole_numbers(capsys, monkeypatch) -> None:
    from cnnlens.cli.assess import _print_table

    monkeypatch.setenv("COLUMNS", "110")
    metrics = sorted(metric_infos())
    rows = [
        {"method": m, "metric": k, "mean": -0.123456 + i / 1000}
        for m in ("gradcam", "random")
        for i, k in enumerate(metrics)
    ]
    res = SimpleNamespace(metrics=metrics, rows=rows, methods=["gradcam"], sanity=[])
    _print_table(res)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 110
    assert "…" not in out
    for i in range(len(metrics)):  # every mean printed whole, for both rows
        assert out.count(f"{-0.123456 + i / 1000:.3f}") >= 2
