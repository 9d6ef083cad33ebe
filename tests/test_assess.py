"""`cnnlens assess` and cnnlens.assess: tables checked against the saved rows and an oracle,
resuming after an interruption, the folder+masks layout, and the user errors.

The model is a gap-cnn with fixed random weights on 16x16 images: these tests check the
pipeline, not what a trained model does (tests/test_trust_acceptance.py does that).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import cnnlens
import cnnlens.assess as A
import cnnlens.assess.job as J
from cnnlens import models
from cnnlens.assess.tables import csv_table, markdown_table
from cnnlens.cli.main import main
from cnnlens.data import SHAPE_CLASSES
from cnnlens.errors import DataError, InputError
from cnnlens.report import SanityVerdict, load_results

SIZE = 16
FAST = {"deletion": {"step": 32}, "insertion": {"step": 32}}
QUICK_METRICS = ["deletion", "insertion", "pointing_game", "sparseness"]


# One torch thread, as ``cnnlens assess`` uses by default: these many small batches run
# several times slower with two threads that wait for each other.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.create("gap-cnn")
    with torch.no_grad():  # spread the outputs so the classes differ clearly
        model.fc.weight.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return models.save_checkpoint(
        net,
        path,
        arch="gap-cnn",
        class_names=list(SHAPE_CLASSES),
        input_size=(SIZE, SIZE),
        preset="none",
        dataset="shapes",
    )


@pytest.fixture(scope="module")
def data() -> A.AssessData:
    return A.load_data("shapes", options={"size": SIZE}, n=8)


def _run(*args: object) -> int:
    return main(["assess", *map(str, args)])


def _rows(out: Path) -> list[dict]:
    """The rows of the run's Parquet store, in the order written, scores and curves as dicts."""
    import cnnlens.dataset as cd

    store = cd.Store.read(out / "rows", kind="assessment")
    if not store.parts():
        return []
    rows = store.dataset().to_table().to_pylist()
    return [r | {k: dict(r[k] or []) for k in ("scores", "curves")} for r in rows]


# --------------------------------------------------------------------------- the CLI


def test_cli_writes_tables_that_match_the_rows_and_an_oracle(
    checkpoint: Path, net: torch.nn.Module, data: A.AssessData, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    rc = _run(
        "--model", checkpoint, "--dataset", "shapes", "--methods", "gradcam,saliency",
        "--metrics", "deletion,insertion,pointing_game,cascading_randomization",
        "--n", 6, "--out", out, "--sanity-images", 3, "--examples", 2,
        "--metric-option", "deletion.step=32", "--metric-option", "insertion.step=32",
        "--metric-option", "pointing_game.tolerance=0", "--no-progress",
    )  # fmt: skip
    assert rc == 0
    for name in ("table.md", "table.csv", "table.json", "report.html", "results.json"):
        assert (out / name).is_file(), name
    for name in ("curves", "sanity", "examples", "sanity_gradcam", "sanity_saliency"):
        assert (out / "figures" / f"{name}.png").is_file(), name

    rows = _rows(out)
    assert len(rows) == 6 * 4  # 6 images x (2 methods + 2 baselines)
    with open(out / "table.csv") as fh:
        table = {(r["method"], r["metric"]): r for r in csv.DictReader(fh)}
    # the deletion mean and its Student-t interval, recomputed from the saved rows
    vals = np.array([r["scores"]["deletion"] for r in rows if r["method"] == "gradcam"])
    half = stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / math.sqrt(len(vals))
    cell = table[("gradcam", "deletion")]
    assert float(cell["mean"]) == pytest.approx(vals.mean(), abs=1e-5)
    assert float(cell["low"]) == pytest.approx(vals.mean() - half, abs=1e-5)
    assert float(cell["high"]) == pytest.approx(vals.mean() + half, abs=1e-5)

    # oracle: Grad-CAM maps of the same images for their labels, argmax inside the mask
    exp = cnnlens.explain(net, data.images[:6], "gradcam", target=data.labels[:6, 0])
    flat = exp.maps.flatten(1)
    hits = data.masks[:6, 0].flatten(1).gather(1, flat.argmax(1, keepdim=True)).float()
    saved = [r["scores"]["pointing_game"] for r in rows if r["method"] == "gradcam"]
    assert saved == pytest.approx(hits.flatten().tolist())
    # the random baseline: seeded per row, so the same numbers however the rows are batched
    r0 = next(r for r in rows if r["method"] == "random" and r["row"] == "0")
    noise = cnnlens.metrics.random_maps(torch.zeros(1, SIZE, SIZE), seed=zlib.crc32(b"0/0"))
    assert r0["scores"]["pointing_game"] == float(data.masks[0, 0].flatten()[noise.argmax()])
    # the area under each saved curve is the saved AUC (equal steps: the trapezoid rule)
    curve = np.array(r0["curves"]["deletion"])
    assert np.trapezoid(curve, np.linspace(0, 1, len(curve))) == pytest.approx(
        r0["scores"]["deletion"], abs=1e-4
    )

    md = (out / "table.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 5  # header, 2 + 2 rows
    assert "pointing_game ↑" in md and "deletion ↓" in md and "cascading_randomization ↓" in md
    summary = json.loads((out / "table.json").read_text())
    assert {s["method"] for s in summary["sanity"]} == {"gradcam", "saliency"}
    res = load_results(out)
    assert res.metrics is not None and set(res.metrics.rows) == {
        "gradcam", "saliency", "random", "centre",
    }  # fmt: skip
    assert res.metrics.rows["gradcam"]["deletion"].mean == pytest.approx(vals.mean(), abs=1e-5)
    assert [v.method for v in res.sanity or []] == ["gradcam", "saliency"]
    assert "Evaluation" in (out / "report.html").read_text()


def test_resume_after_interruption_skips_finished_rows(
    net: torch.nn.Module, data: A.AssessData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw = dict(
        methods=["gradcam", "saliency"], metrics=QUICK_METRICS, n=8, batch_size=3,
        metric_options=FAST, sanity_images=0, examples=0,
    )  # fmt: skip
    out = tmp_path / "run"
    real = J.AssessJob.run
    done: list[int] = []

    def interrupted(self: J.AssessJob, batch: list[dict]) -> object:
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(J.AssessJob, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        A.assess(net, data, out, **kw)
    assert len(_rows(out)) == sum(done) == 6  # two batches of three rows kept
    assert not (out / "rows" / "_cnnlens_store.lock").exists()  # the lock is released
    stale = out / "rows" / ".part-0-killed.parquet.tmp"  # a write cut short by a kill
    stale.write_bytes(b"PAR1 half a file")

    calls: list[list[tuple[str, int]]] = []

    def counted(self: J.AssessJob, batch: list[dict]) -> object:
        calls.append([(b["method"], b["i"]) for b in batch])
        return real(self, batch)

    monkeypatch.setattr(J.AssessJob, "run", counted)
    res = A.assess(net, data, out, **kw)
    assert res.reused == 6 and res.computed == 8 * 4 - 6
    assert sum(len(c) for c in calls) == 26 and not stale.exists()
    assert calls[0][0] == ("gradcam", 6)  # gradcam's first six rows were not redone
    rows = _rows(out)
    assert len(rows) == 32 and len({r["key"] for r in rows}) == 32  # each row once

    fresh = A.assess(net, data, tmp_path / "fresh", **kw)
    got = {(r["method"], r["metric"]): r["mean"] for r in res.rows}
    want = {(r["method"], r["metric"]): r["mean"] for r in fresh.rows}
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key

    # the defaults: the pointing game's tolerance is 15 pixels at 224 scaled to 16 pixels,
    # deleted pixels become the blurred image
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["metric_options"]["pointing_game"] == {"tolerance": 1.07}
    assert settings["metric_options"]["deletion"] == {"step": 32, "substrate": "blur"}
    # a third run reads everything back; other settings in the same folder are refused
    again = A.assess(net, data, out, **kw)
    assert again.computed == 0 and again.reused == 32
    with pytest.raises(InputError, match=r"other settings.*--fresh"):
        A.assess(net, data, out, **{**kw, "metrics": ["deletion"]})


def test_jsonl_rows_of_an_earlier_version_are_imported_or_refused(
    net: torch.nn.Module, data: A.AssessData, tmp_path: Path
) -> None:
    kw = dict(
        methods=["saliency"], metrics=["sparseness"], n=4, batch_size=4, sanity_images=0,
        examples=0,
    )  # fmt: skip
    ref = A.assess(net, data, tmp_path / "ref", **kw)
    # the same rows as an earlier cnnlens wrote them: rows.jsonl and run.json (format 2)
    old = tmp_path / "old"
    old.mkdir()
    lines = [
        {k: r[k] for k in ("method", "row", "image", "target", "image_hash", "options")}
        | {"scores": r["scores"], "curves": r["curves"]}
        for r in _rows(tmp_path / "ref")
    ]
    lines[0]["scores"] = {"sparseness": 0.123456}  # so that the import is seen in the table
    (old / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = json.loads((tmp_path / "ref" / "run.json").read_text())
    run["settings"]["format"] = 2
    (old / "run.json").write_text(json.dumps(run))
    res = A.assess(net, data, old, **kw)
    assert res.computed == 0 and res.reused == 4 * 3
    assert (old / "rows.jsonl.imported").is_file() and not (old / "rows.jsonl").exists()
    first = next(r for r in _rows(old) if r["method"] == lines[0]["method"] and r["row"] == "0")
    assert first["scores"]["sparseness"] == pytest.approx(0.123456)
    assert {r["method"] for r in res.rows} == {r["method"] for r in ref.rows}

    # rows of other settings are refused with one line; --fresh starts over
    other = tmp_path / "other"
    other.mkdir()
    (other / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    run["settings"]["seed"] = 7
    (other / "run.json").write_text(json.dumps(run))
    with pytest.raises(InputError, match=r"rows\.jsonl of an earlier cnnlens assess run"):
        A.assess(net, data, other, **kw)
    assert not (other / "rows").exists()  # the refusal created no store
    again = A.assess(net, data, other, fresh=True, **kw)
    assert again.computed == 12 and not (other / "rows.jsonl").exists()


def test_cli_interrupt_keeps_rows_and_says_how_to_resume(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real = J.AssessJob.run
    calls = []

    def once(self: J.AssessJob, batch: list[dict]) -> object:
        if calls:
            raise KeyboardInterrupt
        calls.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(J.AssessJob, "run", once)
    out = tmp_path / "run"
    rc = _run(
        "--model", checkpoint, "--dataset", "shapes", "--methods", "gradcam", "--n", 4,
        "--metrics", "sparseness", "--out", out, "--batch-size", 2, "--no-progress",
    )  # fmt: skip
    assert rc == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert len(_rows(out)) == 2


# --------------------------------------------------------------------------- folder + masks


def _folder(root: Path, masks: dict[str, np.ndarray], size: int = 20) -> Path:
    """images/<class>/<name>.png with a square of colour, and masks/<class>/<name>.png."""
    for rel, mask in masks.items():
        img = np.zeros((size, size, 3), np.uint8)
        img[..., 2] = 90
        img[4:12, 5:14] = (250, 200, 20)
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / rel)
        (root / "masks" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / rel)
    return root


def _square(size: int = 20) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[4:12, 5:14] = 255
    return m


def test_masked_folder_layout(checkpoint: Path, tmp_path: Path) -> None:
    root = _folder(
        tmp_path / "d", {"square/a.png": _square(), "circle/b.png": _square() // 255}
    )  # 0/255 and 0/1 masks both work
    _, info = models.load(checkpoint)
    data = A.load_masked_folder(root, model_info=info)
    assert data.images.shape == (2, 3, SIZE, SIZE)
    assert data.labels.flatten().tolist() == [SHAPE_CLASSES.index("circle"), 1]
    want = Image.fromarray(_square()).resize((SIZE, SIZE), Image.Resampling.NEAREST)
    assert torch.equal(data.masks[1, 0], torch.from_numpy(np.asarray(want) > 0))
    assert data.files is not None and data.files[0].endswith("b.png")

    out = tmp_path / "run"
    rc = _run(
        "--model", checkpoint, "--dataset", "folder", "--data-dir", root, "--methods",
        "gradcam", "--metrics", "pointing_game,energy_pointing_game", "--out", out,
        "--sanity-images", 0, "--no-progress",
    )  # fmt: skip
    assert rc == 0
    assert len(_rows(out)) == 2 * 3


def test_flat_folder_explains_the_top_class(net: torch.nn.Module, tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _folder(root, {"one.png": _square()})
    data = A.load_masked_folder(root, size=SIZE, preset="none")
    assert data.labels.tolist() == [[-1]]
    res = A.assess(
        net, data, tmp_path / "o", methods="gradcam", metrics=["pointing_game"],
        sanity_images=0, examples=0, n=None,
    )  # fmt: skip
    row = _rows(tmp_path / "o")[0]
    assert row["target"] == int(net(data.images).argmax())
    assert res.value("gradcam", "pointing_game")["n"] == 1


@pytest.mark.parametrize(
    ("masks", "expected"),
    [
        ({"square/a.png": _square(24)}, "masks must have their image's size"),
        ({"square/a.png": np.arange(400, dtype=np.uint8).reshape(20, 20)}, "is not binary"),
        ({"kite/a.png": _square()}, "class folder 'kite'"),
    ],
)
def test_bad_masks_are_one_line_errors(
    checkpoint: Path, tmp_path: Path, capsys, masks: dict, expected: str
) -> None:
    root = _folder(tmp_path / "d", masks)
    rc = _run(
        "--model", checkpoint, "--dataset", "folder", "--data-dir", root, "--out",
        tmp_path / "o", "--no-progress",
    )  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_missing_mask_is_an_error(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"square/a.png": _square()})
    (root / "masks" / "square" / "a.png").unlink()
    with pytest.raises(DataError, match="has no mask: expected"):
        A.load_masked_folder(root, size=SIZE)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--metrics", "pointing_gam"], "unknown metric(s) 'pointing_gam'"),
        (["--methods", "gradcam,nosuch"], "nosuch"),
        (["--methods", "random"], "is a baseline"),
        (["--n", "0"], "--n must be a positive integer"),
        (["--metric-option", "deletion.stp=3"], "deletion takes no option 'stp'"),
        (["--metric-option", "stp=3"], "NAME.KEY=VALUE"),
        (["--option", "rise.n_masks=3"], "not among the methods run"),
        (["--target-from", "guess"], "target must be 'label' or 'predicted'"),
        (["--dataset", "digits"], "cannot take the digits images (1x8x8)"),
        (["--engine", "spark"], "engine must be one of local, ray, got 'spark'"),
    ],
)
def test_user_errors_print_one_line(
    checkpoint: Path, tmp_path: Path, capsys, args: list[str], expected: str
) -> None:
    base = ["--model", checkpoint, "--dataset", "shapes", "--methods", "gradcam"]
    rc = _run(*base, "--n", 2, "--out", tmp_path / "o", "--no-progress", *args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]


def test_warnings_n_too_large_empty_mask_and_nan_maps(
    net: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder(
        tmp_path / "d", {"square/a.png": _square(), "square/b.png": np.zeros((20, 20), np.uint8)}
    )
    data = A.load_masked_folder(root, size=SIZE, preset="none")
    real = J.method_maps

    def nan_first(model, method, x, targets, ids, seed, options):  # type: ignore[no-untyped-def]
        maps = real(model, method, x, targets, ids, seed, options)
        if method == "saliency":
            maps = maps.clone()
            maps[0, 0, 0] = float("nan")
        return maps

    monkeypatch.setattr(J, "method_maps", nan_first)
    with pytest.warns(UserWarning) as record:
        res = A.assess(
            net, data, tmp_path / "o", methods=["gradcam", "saliency"],
            metrics=["pointing_game", "sparseness"], n=5, sanity_images=0, examples=0,
        )  # fmt: skip
    text = " | ".join(str(w.message) for w in record)
    assert "n=5 is larger than the folder dataset (2 images)" in text
    assert "empty ground-truth mask" in text and "['1']" in text
    assert "method saliency gave maps with NaN" in text
    point = res.value("gradcam", "pointing_game")
    assert point["n"] == 1 and point["n_missing"] == 1  # the empty mask's row is left out
    sal = res.value("saliency", "sparseness")
    assert sal["n"] == 1 and sal["n_missing"] == 1  # the NaN map's row is left out


# --------------------------------------------------------------------------- pieces


def test_methods_whose_names_differ_in_symbols_get_their_own_files(
    net: torch.nn.Module, data: A.AssessData, tmp_path: Path
) -> None:
    res = A.assess(
        net, data, tmp_path / "o", methods=["gradcam", "gradcam++"], n=2, sanity_images=2,
        metrics=["sparseness", A.SANITY_METRIC], examples=0,
    )  # fmt: skip
    files = sorted(p.name for p in (tmp_path / "o" / "sanity").iterdir())
    assert files == ["gradcam.json", "gradcampp.json"]
    assert (
        json.loads((tmp_path / "o" / "sanity" / "gradcampp.json").read_text())["method"]
        == "gradcam++"
    )
    assert [v.method for v in res.sanity] == ["gradcam", "gradcam++"]


def test_sanity_verdicts_read_the_upper_half_of_the_cascade(
    net: torch.nn.Module, data: A.AssessData
) -> None:
    x, t = data.images[:3], data.labels[:3, 0]
    verdicts = A.sanity_verdicts(net, x, t, ["gradcam", "saliency"])
    results = A.sanity_checks(net, x, t, "gradcam,saliency")
    assert [v.method for v in verdicts] == ["gradcam", "saliency"]
    for v in verdicts:
        assert isinstance(v, SanityVerdict) and v.check == "cascading model randomization"
        res = results[v.method]
        assert res.criterion == "spearman"  # of the signed attributions
        sim = res.spearman[1:].abs()  # 9 steps for gap-cnn: the upper 5 count
        assert sim.shape[0] == 9
        per_image = sim[:5].mean(0)
        upper = float(per_image.mean())
        assert float(A.upper_similarity(res).mean()) == pytest.approx(upper)
        # the interval is the percentile bootstrap of the mean: inside [min u_i, max u_i]
        summ = cnnlens.metrics.aggregate(per_image, method="bootstrap")
        want = None if summ.low < 0.5 <= summ.high else bool(summ.high < 0.5)
        assert v.passed is want
        assert float(per_image.min()) - 1e-6 <= summ.low <= summ.high <= float(per_image.max())
        assert f"{upper:.3f}" in v.detail and "upper 5 of 9 layers" in v.detail
        assert "n = 3 images" in v.detail and f"[{summ.low:.3f}, {summ.high:.3f}]" in v.detail


def test_markdown_and_csv_tables() -> None:
    rows = [
        {"method": "m", "metric": "deletion", "mean": 0.25, "low": 0.2, "high": 0.3, "n": 4},
        {"method": "m", "metric": "iou", "mean": float("nan"), "low": float("nan"),
         "high": float("nan"), "n": 0},
        {"method": "random", "metric": "deletion", "mean": 0.5, "low": float("nan"),
         "high": float("nan"), "n": 1},
    ]  # fmt: skip
    md = markdown_table(rows, ["deletion", "iou"])
    lines = md.splitlines()
    assert lines[0] == "| method | deletion ↓ | iou ↑ |"
    assert lines[2] == "| m | 0.250 [0.200, 0.300] | — |"
    assert lines[3] == "| random | 0.500 | — |"
    parsed = list(csv.DictReader(csv_table(rows).splitlines()))
    assert parsed[0]["mean"] == "0.25" and parsed[1]["mean"] == ""


def test_metric_names_and_library_errors(net: torch.nn.Module, data: A.AssessData) -> None:
    assert A.assess_metrics()[-1] == A.SANITY_METRIC
    assert A.assess_metrics()[:-1] == cnnlens.metrics.list_metrics()
    assert A.resolve_methods("all") == cnnlens.list_methods(by_family=True)
    no_masks = A.AssessData("x", data.images[:2], data.labels[:2], None, list(SHAPE_CLASSES))
    with pytest.raises(InputError, match="need ground-truth masks"):
        A.assess(net, no_masks, "unused", metrics=["iou"], n=None)
    pair = A.load_data("shapes-pair", options={"size": 32}, n=2)
    assert pair.labels.shape == (2, 2) and pair.masks is not None
    assert pair.masks.shape == (2, 2, 32, 32) and pair.multilabel
    with pytest.raises(InputError, match="use target 'label'"):
        A.assess(net, pair, "unused", target="predicted", n=None)


def test_pair_rows_use_each_class_and_its_own_mask(
    net: torch.nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pair = A.load_data("shapes-pair", options={"size": 32}, n=3)
    caplog.set_level(logging.WARNING)
    A.assess(
        net, pair, tmp_path / "o", methods="gradcam", metrics=["energy_pointing_game"],
        sanity_images=0, examples=0, n=None,
    )  # fmt: skip
    rows = [r for r in _rows(tmp_path / "o") if r["method"] == "gradcam"]
    assert [r["row"] for r in rows] == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    assert [r["target"] for r in rows] == pair.labels.flatten().tolist()
    exp = cnnlens.explain(net, pair.images[:1], "gradcam", target=pair.labels[:1, 1])
    mask = pair.masks[0, 1]
    want = float(exp.maps[0][mask].sum() / exp.maps[0].sum())
    assert rows[1]["scores"]["energy_pointing_game"] == pytest.approx(want, abs=1e-5)


# --------------------------------------------------------------------------- one sanity rule


def test_demo_and_assess_give_the_same_sanity_verdict(
    net: torch.nn.Module, data: A.AssessData, tmp_path: Path
) -> None:
    import dataclasses

    from cnnlens.pipelines import demo as D

    methods = ["gradcam", "guided_backprop"]
    cfg = dataclasses.replace(D.QUICK, sanity_images=3, sanity_methods=tuple(methods))
    (tmp_path / "demo").mkdir()
    run = D._Run(tmp_path / "demo", cfg, False, 0, lambda _msg: None)
    shown = D._sanity_step(run, net, data.images[:3], methods)
    # the same model and images in assess; the demo explains each image's top class
    res = A.assess(
        net, data, tmp_path / "a", methods=methods, metrics=[A.SANITY_METRIC], n=3,
        sanity_images=3, examples=0, target="predicted",
    )  # fmt: skip
    got = [(v.method, v.passed, v.detail) for v in res.sanity]
    assert got == [(v.method, v.passed, v.detail) for v in shown]
    assert all("n = 3 images" in v.detail for v in shown)
    html = (tmp_path / "a" / "report.html").read_text()
    assert all(v.detail in html for v in shown)


def test_two_sanity_images_never_give_an_interval_outside_the_range(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    out = tmp_path / "run"
    rc = _run(
        "--model", checkpoint, "--dataset", "shapes", "--methods", "gradcam,saliency",
        "--n", 2, "--metrics", A.SANITY_METRIC, "--sanity-images", 2, "--out", out,
        "--no-progress",
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    intervals = re.findall(r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]", printed + table)
    assert len(intervals) >= 4  # two verdicts printed, two cells in the table
    for low, high in intervals:
        assert 0.0 <= float(low) <= float(high) <= 1.0
    assert printed.count("n = 2 images") == 2
    saved = json.loads((out / "table.json").read_text())["sanity"]
    for v in saved:
        assert v["n"] == 2 and v["outcome"] in ("passes", "fails", "inconclusive")
        assert v["passed"] == {"passes": True, "fails": False}.get(v["outcome"])


# --------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_engine_gives_the_rows_of_the_local_engine(
    net: torch.nn.Module, data: A.AssessData, tmp_path: Path
) -> None:
    ray_mod = pytest.importorskip(
        "ray", reason="the Ray extra is not installed: pip install 'cnnlens[ray]'"
    )
    kw = dict(
        methods=["gradcam", "saliency"], metrics=QUICK_METRICS, n=6, batch_size=4,
        metric_options=FAST, sanity_images=0, examples=0,
    )  # fmt: skip
    local = A.assess(net, data, tmp_path / "local", **kw)
    # one local Ray instance with 2 CPUs for both runs (run_ray leaves it running)
    ray_mod.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray = A.assess(net, data, tmp_path / "ray", engine="ray", actors=2, **kw)
        again = A.assess(net, data, tmp_path / "ray", engine="ray", actors=2, **kw)
    finally:
        ray_mod.shutdown()
    assert local.computed == ray.computed == 6 * 4 and again.computed == 0
    a = sorted(_rows(tmp_path / "local"), key=lambda r: r["key"])
    b = sorted(_rows(tmp_path / "ray"), key=lambda r: r["key"])
    assert [r["key"] for r in a] == [r["key"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["scores"].keys() == y["scores"].keys() == set(QUICK_METRICS)
        for metric, value in x["scores"].items():
            assert y["scores"][metric] == pytest.approx(value, abs=1e-5), (x["key"], metric)
        assert y["curves"]["deletion"] == pytest.approx(x["curves"]["deletion"], abs=1e-4)
    got = {(r["method"], r["metric"]): r["mean"] for r in ray.rows}
    for r in local.rows:
        assert got[(r["method"], r["metric"])] == pytest.approx(r["mean"], abs=1e-5)


def test_a_method_that_does_not_apply_is_skipped_and_stays_skipped_on_resume(
    data: A.AssessData, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    flat = torch.nn.Sequential(  # no global pooling before the classifier: CAM cannot apply
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * SIZE * SIZE, len(SHAPE_CLASSES)),
    ).eval()
    kw = dict(methods=["cam", "saliency"], metrics=["sparseness"], n=4, batch_size=3,
              sanity_images=0, examples=0)  # fmt: skip
    res = A.assess(flat, data, tmp_path / "o", **kw)
    assert set(res.methods_skipped) == {"cam"} and res.methods == ["saliency"]
    errors = [r for r in _rows(tmp_path / "o") if r["error"]]
    assert {r["method"] for r in errors} == {"cam"} and len(errors) == 4
    assert all(r["scores"] == {} for r in errors)
    again = A.assess(flat, data, tmp_path / "o", **kw)
    assert again.computed == 0 and set(again.methods_skipped) == {"cam"}
    assert again.methods_skipped["cam"] == res.methods_skipped["cam"]
