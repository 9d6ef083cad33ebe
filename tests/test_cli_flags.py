"""One meaning per option name across the command line (issue 18): every command's help walked,
short flags checked against one table, renamed options still accepted with a warning."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cnnlens.cli._help import tidy
from cnnlens.cli.main import app

# the one meaning of each short flag
SHORT = {
    "-m": "--model",
    "-d": "--dataset",
    "-l": "--layer",
    "-o": "--out",
    "-D": "--dataset-option",
    "-v": "--verbose",
}


def _commands() -> dict[str, Any]:
    root = tidy(typer.main.get_command(app), choices=True)
    return {"": root, **root.commands}


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option" and not p.hidden]


def test_every_short_flag_has_one_meaning_in_every_command() -> None:
    seen: dict[str, set[str]] = {}
    for name, command in _commands().items():
        longs = {o for p in _options(command) for o in p.opts if o.startswith("--")}
        for param in _options(command):
            long = next(o for o in param.opts if o.startswith("--"))
            for short in (o for o in param.opts if not o.startswith("--")):
                seen.setdefault(short, set()).add(long)
                assert SHORT.get(short) == long, (name, short, long)
        for short, long in SHORT.items():  # where the long form exists, so does the short
            if long in longs:
                assert any(short in p.opts for p in _options(command)), (name, long, short)
        if "--method" in longs or "--methods" in longs:  # both spellings take a method list
            assert {"--method", "--methods"} <= longs, name
    assert {s: {long} for s, long in SHORT.items() if s in seen} == seen


def test_every_help_prints_words_as_metavars_and_lists_the_choices(capsys, monkeypatch) -> None:
    from cnnlens.cli.main import main

    monkeypatch.setenv("COLUMNS", "400")
    for name, command in _commands().items():
        if not name:
            continue
        assert main([name, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert not re.search(r"<(bool|str|int|float|path|list\[\w+\])>", text, re.I), name
        longs = {o for p in _options(command) for o in p.opts}
        for long, heading in (("--model", "Models:"), ("--dataset", "Datasets:")):
            if long in longs:
                assert heading in text, (name, heading)
        if "--method" in longs:
            assert "Methods: " in text and "gradcam" in text.split("Methods: ")[1], name


def test_renamed_options_still_work_and_say_so(monkeypatch) -> None:
    import cnnlens.pipelines.prototype as proto
    import cnnlens.pipelines.train as train

    seen: dict[str, Any] = {}

    def fake_prototypes(model: str, out: Any, **kw: Any) -> Any:
        seen["proto"] = (out, kw)
        import torch

        return SimpleNamespace(
            class_names=["a"], probs=torch.ones(1), reached=torch.ones(1, dtype=bool), steps=1
        )

    def fake_train(model: str, dataset: str, **kw: Any) -> Any:
        seen["train"] = kw
        raise typer.Exit(0)

    monkeypatch.setattr(proto, "run_prototypes", fake_prototypes)
    monkeypatch.setattr(train, "run_train", fake_train)
    runner = CliRunner()
    new = runner.invoke(app, ["prototype", "-m", "simplecnn", "-o", "p", "--stop-at", "0.5"])
    assert new.exit_code == 0, new.output
    assert seen["proto"][1]["target"] == 0.5 and "deprecated" not in new.output
    old = runner.invoke(app, ["prototype", "-m", "simplecnn", "-o", "p", "--target", "0.7"])
    assert old.exit_code == 0, old.output
    assert seen["proto"][1]["target"] == 0.7
    assert "--target is deprecated; use --stop-at" in old.output
    # train: -o is the output folder, -D a dataset option (the failing command)
    done = runner.invoke(
        app, ["train", "-m", "mnist-cnn", "-d", "mnist-embedded", "-o", "runs/x", "-D", "n=20"]
    )
    assert done.exit_code == 0, done.output
    assert str(seen["train"]["out"]) == "runs/x" and list(seen["train"]["dataset_options"]) == [
        "n=20"
    ]


def test_assess_target_from_and_its_old_name(monkeypatch) -> None:
    import cnnlens.assess as assess_pkg
    import cnnlens.cli._common as common

    seen: list[str] = []

    def stop(*args: Any, **kw: Any) -> Any:
        seen.append(kw["target"])
        raise typer.Exit(0)

    monkeypatch.setattr(common, "load_model", lambda *a: (None, SimpleNamespace()))
    monkeypatch.setattr(assess_pkg, "load_data", lambda *a, **kw: None)
    monkeypatch.setattr(assess_pkg, "assess", stop)
    runner = CliRunner()
    base = ["assess", "-m", "gap-cnn", "-d", "shapes", "-o", "a", "--methods", "gradcam"]
    assert runner.invoke(app, [*base, "--target-from", "predicted"]).exit_code == 0
    old = runner.invoke(app, [*base, "--target", "predicted"])
    assert old.exit_code == 0 and "--target is deprecated; use --target-from" in old.output
    assert seen == ["predicted", "predicted"]


@pytest.mark.parametrize("flag", ["--method", "--methods"])
def test_explain_takes_method_and_methods(flag: str, tmp_path) -> None:
    from PIL import Image

    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (120, 30, 200)).save(img)
    out = tmp_path / flag.strip("-")
    result = CliRunner().invoke(
        app,
        ["explain", str(img), "-m", "simplecnn", flag, "gradcam,saliency", "-o", str(out),
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "with 2 method(s)" in result.output
