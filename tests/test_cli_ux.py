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


def _help(capsys, *argv: str) -> str:
    from cnnlens.cli.main import main

    assert main([*argv, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())  # unwrap rich's panel lines


def test_explain_help_lists_every_method_and_prints_words_as_metavars(capsys, monkeypatch) -> None:
    import cnnlens
    from cnnlens.models import list_models

    monkeypatch.setenv("COLUMNS", "400")  # one line per option, so names are not cut
    text = _help(capsys, "explain")
    methods = text.split("Methods:")[1]
    for name in cnnlens.list_methods():
        assert re.search(rf"[ ,]{re.escape(name)}[,.]", methods), name
    for name in list_models("cnnlens"):
        assert name in text
    assert "<list[" not in text and "<bool>" not in text and "<str>" not in text
    assert "K=V" in text and "METHOD" in text and "NAME" in text


def test_train_and_assess_help_list_the_dataset_names(capsys, monkeypatch) -> None:
    from cnnlens.data.datasets import list_datasets

    monkeypatch.setenv("COLUMNS", "400")
    for command in ("train", "assess"):
        text = _help(capsys, command)
        assert "<" not in text.replace("runs/<model>-<dataset>", ""), command
        for name in list_datasets():
            assert re.search(rf"Datasets:.*\b{re.escape(name)}\b", text), (command, name)


def test_unknown_method_option_gets_a_did_you_mean_with_the_methods_options() -> None:
    import pytest

    from cnnlens.errors import InputError
    from cnnlens.pipelines.options import parse_method_options

    with pytest.raises(InputError) as err:
        parse_method_options(["rise.n_mask=10"], ["rise", "gradcam"])
    text = str(err.value)
    assert "did you mean n_masks?" in text
    assert "rise takes n_masks, cell_size" in text and "\n" not in text
    with pytest.raises(InputError, match="gradcam takes layer"):  # KEY=VALUE: every method
        parse_method_options(["n_mask=10"], ["gradcam", "rise"])
    assert parse_method_options(["rise.n_masks=10"], ["rise"]) == {"rise": {"n_masks": 10}}


def test_unknown_class_name_suggests_the_classes_with_that_word() -> None:
    import pytest

    from cnnlens.errors import TargetError
    from cnnlens.pipelines.options import parse_class_list

    names = ["crate", "oxcart", "tabby cat", "tiger cat", "Persian cat", "catamaran", "dog"]
    with pytest.raises(TargetError) as err:
        parse_class_list(
            ["cat"], num_classes=len(names), class_names=names, option="--target-name", by_name=True
        )
    text = str(err.value)
    assert "tabby cat, tiger cat, Persian cat" in text
    assert "crate" not in text and "oxcart" not in text and "catamaran" not in text
    with pytest.raises(TargetError, match="containing it: catamaran"):
        parse_class_list(
            ["amara"],
            num_classes=len(names),
            class_names=names,
            option="--target-name",
            by_name=True,
        )
    with pytest.raises(TargetError, match="nearest: crate"):
        parse_class_list(
            ["crates"],
            num_classes=len(names),
            class_names=names,
            option="--target-name",
            by_name=True,
        )


def test_explain_of_a_text_file_fails_in_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    from cnnlens.cli.main import main

    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    out = tmp_path / "out"
    assert main(["explain", str(notes), "-m", "simplecnn", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "notes.txt: not an image file" in err, err
    assert not out.exists()  # no results.json, no report.html, not even the folder


def test_a_long_skip_reason_is_cut_to_its_first_sentence() -> None:
    from cnnlens.pipelines.explain import first_sentence

    long = "CAM needs a global average pooling before the last linear layer.\n" + "x " * 1000
    assert first_sentence(long) == (
        "CAM needs a global average pooling before the last linear layer."
    )
    assert first_sentence("layer 'fc': not a conv layer") == "layer 'fc': not a conv layer"
    cut = first_sentence("y" * 5000)
    assert len(cut) == 200 and cut.endswith("…")


def test_dir_of_the_package_shows_its_parts_without_importing_them() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cnnlens; d = dir(cnnlens); "
        "print(all(n in d and n in cnnlens.__all__ for n in ('viz', 'data', 'models', "
        "'metrics')), 'cnnlens.viz' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "False"]
