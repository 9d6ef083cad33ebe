"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018, arXiv:1810.03292).

A map that explains the model must change when the model's learned weights are destroyed.

* :func:`cascading_randomization`: re-initialize the layers one after another from the head
  down to the input, keeping the earlier ones random, and compare each map with the original;
* :func:`independent_randomization`: re-initialize one layer at a time, the rest intact;
* :func:`data_randomization`: compare with a model trained on permuted labels (made by
  :func:`train_on_permuted_labels`).

Similarity per step and image is the Spearman rank correlation of the signed maps, of their
absolute values, and the SSIM of the absolute maps scaled to [0, 1]. A result's ``passed``
reads the last step alone (the test of data randomization, whose only step is the last).

The verdict of a cascading randomization, the one ``cnnlens assess`` and ``cnnlens demo``
report, is :func:`cascade_verdict`: the mean |Spearman| of the signed attributions over the
upper half of the cascade (:func:`upper_similarity`), with its sample size and a percentile
bootstrap interval; a method passes when the whole interval lies below the threshold, fails
when it lies above, and the verdict is "inconclusive" when the interval spans it.

The randomization works on a deep copy of the model; the user's model is never changed.
A method is given by its registry name (run through :func:`cnnlens.explain`) or as a
callable ``explain_fn(model, x, targets) -> maps``, with ``targets`` a long (B,) tensor and
maps (B, H, W) or (B, C, H, W) (channels are summed).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from cnnlens.core.checks import check_float
from cnnlens.core.layers import resolve_layer
from cnnlens.errors import InputError, ModelError
from cnnlens.metrics._common import (
    check_images,
    frozen_eval,
    model_device,
    resolve_class_targets,
)
from cnnlens.metrics.aggregate import aggregate
from cnnlens.metrics.similarity import spearman, ssim

__all__ = [
    "CRITERIA",
    "SANITY_CHECK",
    "VERDICT_CRITERION",
    "VERDICT_THRESHOLD",
    "CascadeVerdict",
    "PermutedLabels",
    "SanityResult",
    "cascade_verdict",
    "cascading_randomization",
    "data_randomization",
    "independent_randomization",
    "randomize_",
    "train_on_permuted_labels",
    "upper_similarity",
    "verdict_from_upper",
]

log = logging.getLogger("cnnlens")

ExplainFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
MethodLike = str | ExplainFn
CRITERIA = ("spearman_abs", "spearman", "ssim")


@dataclass
class SanityResult:
    """Similarity between original and randomized maps at each step of a sanity check.

    Attributes:
        method: the method's name (the callable's ``__name__`` for an ``explain_fn``).
        mode: ``"cascading"``, ``"independent"`` or ``"data"``.
        steps: step labels; ``steps[0]`` is ``"original"`` (the method run again on the
            unchanged model: 1 for deterministic methods, the noise floor for stochastic
            ones), then the layer randomized at each step (for cascading, it and every
            step before it), or ``"permuted labels"``.
        spearman: float (S, B), rank correlation of the signed maps.
        spearman_abs: float (S, B), rank correlation of the absolute maps.
        ssim: float (S, B), SSIM of the absolute maps scaled to [0, 1].
        threshold: the verdict's threshold.
        criterion: the similarity the verdict reads: ``"spearman_abs"``, ``"spearman"``
            or ``"ssim"``.
    """

    method: str
    mode: str
    steps: list[str]
    spearman: Tensor
    spearman_abs: Tensor
    ssim: Tensor
    threshold: float = 0.5
    criterion: str = "spearman_abs"

    def similarity(self, criterion: str | None = None) -> Tensor:
        """Mean over images of a similarity at each step, float (S,)."""
        name = criterion or self.criterion
        if name not in CRITERIA:
            raise InputError(f"criterion must be one of {', '.join(CRITERIA)}, got {name!r}")
        return getattr(self, name).mean(dim=1)

    @property
    def final(self) -> float:
        """Mean absolute similarity (``criterion``) over images after the last step: an
        inverted map depends on the weights as little as an unchanged one."""
        return float(getattr(self, self.criterion)[-1].abs().mean())

    @property
    def passed(self) -> bool | None:
        """The verdict: ``final < threshold`` for cascading and data randomization; None for
        independent randomization, which shows which layers matter rather than a verdict."""
        if self.mode == "independent":
            return None
        return self.final < self.threshold

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values, for JSON and reports."""
        return {
            "method": self.method,
            "mode": self.mode,
            "steps": list(self.steps),
            "spearman": self.spearman.mean(dim=1).tolist(),
            "spearman_abs": self.spearman_abs.mean(dim=1).tolist(),
            "ssim": self.ssim.mean(dim=1).tolist(),
            "threshold": self.threshold,
            "criterion": self.criterion,
            "final": self.final,
            "passed": self.passed,
        }

    def plot(self, *, title: str | None = None) -> Any:
        """The similarity curves (mean over images, band of one standard deviation) as a
        :class:`matplotlib.figure.Figure`, made without pyplot's global state."""
        from matplotlib.figure import Figure

        steps = len(self.steps)
        fig = Figure(figsize=(max(5.0, 0.45 * steps + 2.5), 3.8), layout="constrained")
        ax = fig.add_subplot()
        xs = list(range(steps))
        labels = {
            "spearman": "Spearman (signed)",
            "spearman_abs": "Spearman (absolute)",
            "ssim": "SSIM",
        }
        for name, label in labels.items():
            vals = getattr(self, name).double().cpu().numpy()
            mean, std = vals.mean(axis=1), vals.std(axis=1)
            ax.plot(xs, mean, marker="o", markersize=3, label=label)
            ax.fill_between(xs, mean - std, mean + std, alpha=0.15)
        ax.axhline(self.threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
        ax.set_xticks(xs)
        ax.set_xticklabels(self.steps, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("similarity to original map")
        verdict = {True: "passes", False: "fails", None: ""}[self.passed]
        ax.set_title(title or f"{self.method}: {self.mode} randomization {verdict}".strip())
        ax.legend(fontsize=7, loc="lower left")
        return fig


def _explainer(method: MethodLike, output: str, options: dict[str, Any]) -> tuple[str, ExplainFn]:
    if output not in ("raw", "maps"):
        raise InputError(f"output must be 'raw' or 'maps', got {output!r}")
    if isinstance(method, str):
        from cnnlens.api import explain

        def fn(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
            exp = explain(model, x, method=method, target=targets, **options)
            return exp.raw if output == "raw" else exp.maps

        return method, fn
    if callable(method):
        if options:
            raise InputError(
                f"options {sorted(options)} are for a registered method; an explain_fn "
                "takes none (bind them with functools.partial)"
            )
        return getattr(method, "__name__", type(method).__name__), method
    raise InputError(
        f"method must be a registry name or a callable explain_fn(model, x, targets), "
        f"got {type(method).__name__}"
    )


def _as_2d(maps: Tensor, batch: int, step: str) -> Tensor:
    """Maps (B, H, W) in float64: channels of (B, C, H, W) are summed."""
    if not isinstance(maps, Tensor):
        raise InputError(f"explain_fn must return a tensor, got {type(maps).__name__}")
    m = maps.detach()
    if m.dim() == 2 and batch == 1:
        m = m.unsqueeze(0)
    if m.dim() == 4:
        m = m.sum(dim=1)
    if m.dim() != 3 or m.shape[0] != batch:
        raise InputError(
            f"explain_fn must return maps (B, H, W) or (B, C, H, W) with B={batch}, got "
            f"{tuple(maps.shape)}"
        )
    if not bool(torch.isfinite(m).all()):
        raise InputError(f"the method returned NaN or infinite values at step {step!r}")
    return m.double()


def _unit(m: Tensor) -> Tensor:
    """Min-max scaled to [0, 1] per map (a constant map becomes zeros)."""
    flat = m.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp(min=1e-300), torch.zeros_like(flat))
    return out.view_as(m)


class _Comparer:
    def __init__(self, reference: Tensor):
        self.ref = reference
        self.ref_abs = reference.abs()
        self.ref_unit = _unit(self.ref_abs)
        self.constant_warned = False

    def __call__(self, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.constant_warned and bool((m.flatten(1).amax(1) == m.flatten(1).amin(1)).any()):
            log.info("a map is constant after randomization; its rank correlation counts as 0")
            self.constant_warned = True
        return (
            spearman(self.ref, m),
            spearman(self.ref_abs, m.abs()),
            ssim(self.ref_unit, _unit(m.abs())),
        )


def randomize_(module: nn.Module) -> nn.Module:
    """Re-initialize, in place, the parameters of ``module`` and of its submodules.

    Each submodule that owns parameters is reset with its own ``reset_parameters()`` (the
    initializer it was built with: Kaiming-uniform for convolutions and linear layers, ones
    and zeros plus fresh running statistics for batch norm); parameters of a module without
    one are drawn from a normal distribution with zero mean and the parameter's standard
    deviation. Uses the global torch RNG (the callers fork and seed it).
    """
    with torch.no_grad():
        for sub in module.modules():
            own = list(sub.parameters(recurse=False))
            if not own:
                continue
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            for p in own:
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, std if std > 0 else 0.02)
    return module


def _param_layers_in_forward_order(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the modules that own parameters, in the order the forward pass runs them."""
    owners = [
        (name, m)
        for name, m in model.named_modules()
        if name and any(True for _ in m.parameters(recurse=False))
    ]
    if not owners and any(True for _ in model.parameters(recurse=False)):
        owners = [("", model)]
    order: list[str] = []
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def record(*_: Any) -> None:
            if name not in order:
                order.append(name)

        return record

    try:
        for name, m in owners:
            handles.append(m.register_forward_pre_hook(hook(name)))
        with frozen_eval(model):
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    unused = [n for n, _ in owners if n not in order]
    if unused:
        log.info("sanity check: layers not used in forward are skipped: %s", ", ".join(unused))
    return order


def _resolve_step_layers(
    model: nn.Module, work: nn.Module, x: Tensor, layers: Sequence[Any] | None
) -> list[str]:
    """Layer names from the head down to the input (the given order, when given); names
    and modules are looked up in the user's ``model``, the forward order is taken on its
    copy ``work``."""
    if layers is None:
        names = list(reversed(_param_layers_in_forward_order(work, x)))
        if not names:
            raise ModelError(f"model {type(model).__name__} has no parameters to randomize")
        return names
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    names = []
    for layer in layers:
        name, module = resolve_layer(model, layer)
        if not any(True for _ in module.parameters()):
            raise InputError(f"layer {name!r} has no parameters to randomize")
        names.append(name)
    if not names:
        raise InputError("layers is empty; give at least one layer name, or None for all")
    return names


def _setup(
    model: nn.Module,
    x: Tensor,
    method: MethodLike,
    target: object,
    output: str,
    threshold: float,
    criterion: str,
    options: dict[str, Any],
) -> tuple[str, ExplainFn, Tensor, Tensor]:
    if criterion not in CRITERIA:
        raise InputError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    check_float("threshold", threshold)
    name, fn = _explainer(method, output, options)
    x = check_images(x).to(model_device(model, x.device))
    with frozen_eval(model):
        logits = model(x)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ModelError("sanity checks need a classifier that returns (B, N) class scores")
    targets = resolve_class_targets(target, logits)
    return name, fn, x, targets


def _run(
    mode: str,
    model: nn.Module,
    x: Tensor,
    method: MethodLike,
    *,
    target: object,
    layers: Sequence[Any] | None,
    seed: int,
    output: str,
    threshold: float,
    criterion: str,
    options: dict[str, Any],
) -> SanityResult:
    name, fn, x, targets = _setup(model, x, method, target, output, threshold, criterion, options)
    work = copy.deepcopy(model)
    step_layers = _resolve_step_layers(model, work, x, layers)
    batch = x.shape[0]
    compare = _Comparer(_as_2d(fn(work, x, targets), batch, "reference"))
    rows = [compare(_as_2d(fn(work, x, targets), batch, "original"))]
    devices = [x.device] if x.device.type == "cuda" else []
    for i, layer in enumerate(step_layers):
        module = work.get_submodule(layer)
        saved = None
        if mode == "independent":
            saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed) + i)
            randomize_(module)
        rows.append(compare(_as_2d(fn(work, x, targets), batch, layer)))
        if saved is not None:
            module.load_state_dict(saved)
    spear, spear_abs, ss = (torch.stack([r[k] for r in rows]) for k in range(3))
    return SanityResult(
        name, mode, ["original", *step_layers], spear, spear_abs, ss, float(threshold), criterion
    )


def cascading_randomization(
    model: nn.Module,
    x: Tensor,
    method: MethodLike,
    *,
    target: object = None,
    layers: Sequence[Any] | None = None,
    seed: int = 0,
    output: str = "raw",
    threshold: float = 0.5,
    criterion: str = "spearman_abs",
    **options: Any,
) -> SanityResult:
    """Cascading model-parameter randomization (Adebayo et al., "Sanity checks for saliency
    maps", NeurIPS 2018, arXiv:1810.03292).

    On a deep copy of the model, the layers are re-initialized (:func:`randomize_`) one
    after another from the output layer down to the input, the earlier ones staying random;
    after each step the method explains the same images for the same classes and the maps
    are compared with the original ones $M$:

    $$s_k = \\mathrm{sim}\\big(M,\\; M^{(\\theta_{L}, \\dots, \\theta_{L-k+1}
    \\text{ random})}\\big), \\qquad \\text{passes} \\iff
    \\frac{1}{B}\\sum_i |s_{L,i}| < \\tau$$

    Args:
        model: the trained classifier; never changed (a deep copy is randomized).
        x: images (B, C, H, W) or (C, H, W).
        method: a registry name (run via :func:`cnnlens.explain`) or
            ``explain_fn(model, x, targets) -> maps``.
        target: None (the model's top class, kept for every step), an int or one per image.
        layers: names or modules to randomize, listed from the head to the input; default
            every module that owns parameters, in reverse order of the forward pass.
        seed: seed of the re-initialization (the global RNG is forked, not disturbed).
        output: for a registry name, compare ``"raw"`` attributions (signed; default) or the
            [0, 1] ``"maps"``.
        threshold: $\\tau$, the verdict's threshold on the final similarity.
        criterion: the similarity the verdict reads (``"spearman_abs"``, ``"spearman"``,
            ``"ssim"``).
        **options: the method's own options (registry names only).

    Returns:
        The :class:`SanityResult`; ``.passed`` is the verdict and ``.plot()`` the curve.

    Example:
        >>> res = cascading_randomization(model, x, "gradcam")   # doctest: +SKIP
        >>> res.passed, res.plot().savefig("sanity.png")
    """
    return _run(
        "cascading",
        model,
        x,
        method,
        target=target,
        layers=layers,
        seed=seed,
        output=output,
        threshold=threshold,
        criterion=criterion,
        options=options,
    )


def independent_randomization(
    model: nn.Module,
    x: Tensor,
    method: MethodLike,
    *,
    target: object = None,
    layers: Sequence[Any] | None = None,
    seed: int = 0,
    output: str = "raw",
    threshold: float = 0.5,
    criterion: str = "spearman_abs",
    **options: Any,
) -> SanityResult:
    """Independent (per-layer) model-parameter randomization (Adebayo et al. 2018).

    On a deep copy of the model, each layer in turn is re-initialized while every other
    layer keeps its trained weights (and is restored before the next step):

    $$s_k = \\mathrm{sim}\\big(M,\\; M^{(\\theta_k \\text{ random})}\\big)$$

    Arguments as in :func:`cascading_randomization`. ``.passed`` is None: the curve shows
    which layers the map depends on.
    """
    return _run(
        "independent",
        model,
        x,
        method,
        target=target,
        layers=layers,
        seed=seed,
        output=output,
        threshold=threshold,
        criterion=criterion,
        options=options,
    )


def data_randomization(
    model: nn.Module,
    permuted_model: nn.Module,
    x: Tensor,
    method: MethodLike,
    *,
    target: object = None,
    output: str = "raw",
    threshold: float = 0.5,
    criterion: str = "spearman_abs",
    **options: Any,
) -> SanityResult:
    """Data randomization test (Adebayo et al. 2018): compare the maps of a model with those
    of the same architecture trained on permuted labels (see :func:`train_on_permuted_labels`),
    for the same images and classes (``target``, default the first model's top class).

    A method whose maps barely change cannot reflect what the model learned from the labels:

    $$\\text{passes} \\iff \\frac{1}{B} \\sum_i
    \\big|\\mathrm{sim}(M_i, M_i^{\\text{permuted}})\\big| < \\tau$$

    Neither model is changed.
    """
    name, fn, x, targets = _setup(model, x, method, target, output, threshold, criterion, options)
    batch = x.shape[0]
    compare = _Comparer(_as_2d(fn(model, x, targets), batch, "reference"))
    other = permuted_model
    if model_device(other, x.device) != x.device:  # move a copy, never the user's model
        other = copy.deepcopy(other).to(x.device)
    rows = [
        compare(_as_2d(fn(model, x, targets), batch, "original")),
        compare(_as_2d(fn(other, x, targets), batch, "permuted labels")),
    ]
    spear, spear_abs, ss = (torch.stack([r[k] for r in rows]) for k in range(3))
    return SanityResult(
        name,
        "data",
        ["original", "permuted labels"],
        spear,
        spear_abs,
        ss,
        float(threshold),
        criterion,
    )


class PermutedLabels(Dataset):
    """A dataset whose labels are shuffled across its items (a fixed permutation).

    Images are returned unchanged; item ``i`` gets the label of item ``perm[i]``, so the
    class frequencies stay the same while the link between image and label is destroyed.

    Args:
        dataset: any map-style dataset of ``(image, label)``; labels are read from its
            ``targets`` or ``labels`` attribute when it has one, otherwise from its items.
        seed: seed of the permutation.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        labels = getattr(dataset, "targets", None)
        if labels is None:
            labels = getattr(dataset, "labels", None)
        if labels is None:
            labels = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
        self._labels = list(labels)
        if len(self._labels) != len(dataset):  # type: ignore[arg-type]
            raise InputError(
                f"dataset has {len(dataset)} items but {len(self._labels)} labels"  # type: ignore[arg-type]
            )
        g = torch.Generator().manual_seed(int(seed))
        self.permutation = torch.randperm(len(self._labels), generator=g)
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image = self.dataset[index][0]
        label = self._labels[int(self.permutation[index])]
        return image, label


def train_on_permuted_labels(
    model: nn.Module,
    dataset: Dataset | str,
    *,
    seed: int = 0,
    reinitialize: bool = True,
    **train_kwargs: Any,
) -> nn.Module:
    """A copy of ``model`` trained on ``dataset`` with permuted labels, for
    :func:`data_randomization` (e.g. ``mnist-cnn`` on ``mnist-embedded``).

    Args:
        model: the architecture to train; a deep copy is trained, the model is not changed.
        dataset: a dataset, or a name for :func:`cnnlens.data.get_dataset` (train split).
        seed: seed of the permutation, of the re-initialization and of training.
        reinitialize: re-initialize every layer of the copy first (so a trained model can be
            passed as the architecture).
        **train_kwargs: passed to :func:`cnnlens.training.train` (``epochs``, ``lr``,
            ``batch_size``, ...).
    """
    from cnnlens.training import train

    if isinstance(dataset, str):
        from cnnlens.data import get_dataset

        dataset = get_dataset(dataset, split="train")
    work = copy.deepcopy(model)
    if reinitialize:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            randomize_(work)
    train(work, PermutedLabels(dataset, seed=seed), seed=seed, **train_kwargs)
    return work


# --------------------------------------------------------------------------- the verdict

#: The check's name in reports.
SANITY_CHECK = "cascading model randomization"
#: The similarity the verdict reads: the Spearman rank correlation of the signed raw
#: attributions (Adebayo et al. report it next to the one of absolute values). With absolute
#: values a Grad-CAM whose sign is flipped by random class weights would count as unchanged,
#: though after its ReLU it shows the opposite.
VERDICT_CRITERION = "spearman"
#: $\tau$: a method passes when its maps keep less than this likeness to the original ones.
VERDICT_THRESHOLD = 0.5


def upper_similarity(result: SanityResult) -> Tensor:
    """Per image, the mean absolute similarity to the original map over the upper half of a
    cascading randomization, float (B,).

    With $s_{k,i}$ the similarity (the result's ``criterion``) of image $i$ to its original
    map once the top $k$ of the $L$ layers are re-initialized,

    $$u_i = \\frac{1}{\\lceil L/2 \\rceil} \\sum_{k=1}^{\\lceil L/2 \\rceil} |s_{k,i}|$$

    Adebayo et al. (2018) found guided backprop "invariant to the higher layers": its maps
    barely change until the lowest layers are re-initialized. Once *every* layer is random
    most maps change, guided backprop's too, so the verdict reads $u$ (the upper half, where
    the paper's distinction lies) rather than the last step alone.

    Raises:
        InputError: a result without a randomization step.
    """
    sim = getattr(result, result.criterion)[1:].abs().double()  # drop the "original" row
    if sim.shape[0] == 0:
        raise InputError("the sanity result has no randomization step")
    return sim[: math.ceil(sim.shape[0] / 2)].mean(dim=0)


@dataclass(frozen=True)
class CascadeVerdict:
    """The verdict of a cascading randomization for one method.

    Attributes:
        method: the method checked.
        outcome: ``"passes"``, ``"fails"`` or ``"inconclusive"``.
        upper: the mean over images of $u_i$ (:func:`upper_similarity`), in [0, 1].
        low: lower end of its percentile-bootstrap interval (NaN for one image).
        high: upper end (the interval lies within the range of the $u_i$, so in [0, 1]).
        n: images the verdict rests on.
        threshold: $\\tau$.
        layers: $L$, the layers re-initialized in the whole cascade.
        final: the mean |similarity| after all $L$ layers are re-initialized.
        confidence: the interval's level.
        check: the check's name (:data:`SANITY_CHECK`).
    """

    method: str
    outcome: str
    upper: float
    low: float
    high: float
    n: int
    threshold: float
    layers: int
    final: float
    confidence: float = 0.95
    check: str = SANITY_CHECK

    @property
    def passed(self) -> bool | None:
        """True (passes), False (fails) or None (inconclusive)."""
        return {"passes": True, "fails": False}.get(self.outcome)

    @property
    def detail(self) -> str:
        """One sentence with the evidence: the similarity, its interval and sample size."""
        half = math.ceil(self.layers / 2)
        interval = (
            f"[{self.low:.3f}, {self.high:.3f}]"
            if math.isfinite(self.low) and math.isfinite(self.high)
            else "no interval from one image"
        )
        reading = {
            "passes": f"below {self.threshold:g}: passes",
            "fails": f"above {self.threshold:g}: fails",
            "inconclusive": f"spans {self.threshold:g}: inconclusive",
        }[self.outcome]
        if self.outcome == "inconclusive" and not math.isfinite(self.low):
            reading = "inconclusive"
        return (
            f"mean |Spearman| of the attributions to the original ones while the upper "
            f"{half} of {self.layers} layers are re-initialized: {self.upper:.3f} {interval} "
            f"({self.confidence:.0%} percentile bootstrap, n = {self.n} images; {reading}); "
            f"after all {self.layers}: {self.final:.3f}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {
            "method": self.method,
            "check": self.check,
            "outcome": self.outcome,
            "passed": self.passed,
            "upper": self.upper,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "threshold": self.threshold,
            "layers": self.layers,
            "final": self.final,
            "detail": self.detail,
        }


def verdict_from_upper(
    method: str,
    upper_per_image: Sequence[float | None] | Tensor,
    *,
    final: float,
    threshold: float,
    layers: int,
    seed: int = 0,
    confidence: float = 0.95,
) -> CascadeVerdict:
    """The verdict from the per-image $u_i$ of a cascade (as saved by ``cnnlens assess``).

    The values are rounded to 6 decimals (as saved), so a verdict computed now and one read
    back from disk agree. The interval is the percentile bootstrap of the mean
    (:func:`cnnlens.metrics.aggregate`), which never leaves the range of the $u_i$:

    $$\\text{passes} \\iff \\text{high} < \\tau, \\quad
    \\text{fails} \\iff \\text{low} \\ge \\tau, \\quad
    \\text{inconclusive otherwise (or for one image)}$$
    """
    values = [float("nan") if v is None else round(float(v), 6) for v in list(upper_per_image)]
    s = aggregate(
        torch.tensor(values, dtype=torch.float64),
        confidence=confidence,
        method="bootstrap",
        seed=seed,
    )
    if not (math.isfinite(s.low) and math.isfinite(s.high)):
        outcome = "inconclusive"
    elif s.high < threshold:
        outcome = "passes"
    elif s.low >= threshold:
        outcome = "fails"
    else:
        outcome = "inconclusive"
    return CascadeVerdict(
        method, outcome, s.mean, s.low, s.high, s.n, threshold, layers, final, confidence
    )


def cascade_verdict(result: SanityResult, *, seed: int = 0) -> CascadeVerdict:
    """The verdict of a cascading randomization (:func:`verdict_from_upper` of its
    :func:`upper_similarity`), the rule ``cnnlens assess`` and ``cnnlens demo`` report.

    Example:
        >>> res = cascading_randomization(net, x, "gradcam", criterion=VERDICT_CRITERION)
        ... # doctest: +SKIP
        >>> cascade_verdict(res).detail

    Raises:
        InputError: a result of another mode.
    """
    if result.mode != "cascading":
        raise InputError(f"cascade_verdict needs a cascading randomization, got {result.mode!r}")
    return verdict_from_upper(
        result.method,
        upper_similarity(result),
        final=result.final,
        threshold=result.threshold,
        layers=len(result.steps) - 1,
        seed=seed,
    )
