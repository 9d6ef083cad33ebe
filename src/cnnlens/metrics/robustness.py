"""Robustness: does the explanation stay put when the input barely changes?

Every metric here perturbs the images ``n_samples`` times, re-explains each perturbed batch
for the same targets and compares the maps; one score per image, float (B,), **lower is
better**. The perturbations are batched (several draws go through one ``explain`` call, up
to ``batch_size`` images) and seeded: either pass the noise yourself, ``noise`` of shape
(n_samples, B, C, H, W), or let it be drawn from a CPU ``torch.Generator`` seeded with
``seed`` (the same numbers on every device).

``explain`` is a registry name (``"gradcam"``: :func:`cnnlens.explain` with the given
``options``) or any ``explain(x, target) -> maps (B, H, W)``.

The settings and formulas follow Quantus 0.6 (Hedström et al., JMLR 2023) so the numbers are
the same on the same noise (``tests/test_robustness.py`` checks this): sensitivity and the
relative stabilities use uniform noise, the local Lipschitz estimate Gaussian noise.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.core.capture import capture
from cnnlens.core.checks import check_int
from cnnlens.core.layers import resolve_layer
from cnnlens.errors import InputError
from cnnlens.metrics._common import (
    ExplainFn,
    check_batch_size,
    check_images,
    check_maps,
    explainer,
    frozen_eval,
    resolve_class_targets,
)
from cnnlens.metrics.registry import MetricInputs, register_metric

__all__ = [
    "avg_sensitivity",
    "draw_noise",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
]

_LIPSCHITZ_EPS = 1e-10  # added to the input distance, as in Quantus


def draw_noise(
    x: Tensor,
    n_samples: int,
    *,
    kind: str = "uniform",
    low: float = -0.2,
    high: float = 0.2,
    std: float = 0.1,
    seed: int = 0,
) -> Tensor:
    """Perturbations (n_samples, B, C, H, W) for ``x``, on ``x``'s device, float32.

    ``kind="uniform"``: independent $U[\\mathrm{low}, \\mathrm{high})$ per value;
    ``kind="gaussian"``: $\\mathcal N(0, \\mathrm{std}^2)$. Drawn on the CPU from a generator
    seeded with ``seed``.
    """
    if kind not in ("uniform", "gaussian"):
        raise InputError(f"kind must be 'uniform' or 'gaussian', got {kind!r}")
    check_int("n_samples", n_samples)
    g = torch.Generator().manual_seed(int(seed))
    shape = (n_samples, *x.shape)
    if kind == "uniform":
        if not high > low:
            raise InputError(f"high must exceed low, got low={low!r}, high={high!r}")
        noise = torch.rand(shape, generator=g) * (high - low) + low
    else:
        if not std > 0:
            raise InputError(f"std must be > 0, got {std!r}")
        noise = torch.randn(shape, generator=g) * std
    return noise.to(x.device)


@dataclass
class _Run:
    """One perturbation draw for the whole batch."""

    x: Tensor  # perturbed images (B, C, H, W)
    maps: Tensor  # their maps, float64 (B, H*W)
    changed: Tensor  # bool (B,): the top class differs from the unperturbed one
    logits: Tensor  # float64 (B, N)
    rep: Tensor | None  # float64 (B, D), the layer's output, when asked for


def _forward(model: nn.Module, x: Tensor, layer: tuple[str, nn.Module] | None) -> tuple:
    with frozen_eval(model):
        if layer is None:
            return model(x).double(), None
        with capture([layer]) as cap:
            logits = model(x)
        return logits.double(), cap.outputs[layer[0]].flatten(1).double()


def _runs(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    explain: ExplainFn,
    noise: Tensor,
    batch_size: int,
    top: Tensor,
    forward: bool = True,
    layer: tuple[str, nn.Module] | None = None,
) -> Iterator[_Run]:
    """Each draw's perturbed images, maps, logits and changed-prediction flags (without
    ``forward``: no model call, logits empty, nothing changed); draws are stacked into
    explain/forward calls of at most ``batch_size`` images."""
    b = x.shape[0]
    per_call = max(1, batch_size // b)
    for start in range(0, noise.shape[0], per_call):
        k = min(per_call, noise.shape[0] - start)
        xp = (x.unsqueeze(0) + noise[start : start + k]).reshape(k * b, *x.shape[1:])
        scores = None
        if forward and layer is None and callable(getattr(explain, "with_scores", None)):
            # a registered method's own forward gives the logits: one model pass, not two
            maps, scores = explain.with_scores(xp, target.repeat(k))  # type: ignore[attr-defined]
        else:
            maps = explain(xp, target.repeat(k))
        maps = check_maps(maps, k * b, name="perturbed maps")
        if scores is not None:
            logits, rep = scores.double(), None
        elif forward:
            logits, rep = _forward(model, xp, layer)
        else:
            logits, rep = torch.zeros(k * b, 0, dtype=torch.float64, device=x.device), None
        maps = maps.flatten(1).double()
        for j in range(k):
            rows = slice(j * b, (j + 1) * b)
            yield _Run(
                xp[rows],
                maps[rows],
                logits[rows].argmax(dim=1) != top
                if forward
                else torch.zeros_like(top, dtype=torch.bool),
                logits[rows],
                None if rep is None else rep[rows],
            )


@dataclass(frozen=True)
class _Settings:
    """How the draws are made and reduced (the arguments every robustness metric shares)."""

    n_samples: int
    noise: Tensor | None
    seed: int
    batch_size: int
    nan_when_changed: bool
    options: dict[str, Any]


def _prepare(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object,
    run: _Settings,
    draw: dict[str, Any],
) -> tuple[Tensor, Tensor, Tensor, ExplainFn, Tensor, Tensor]:
    """Checked images, maps (float64, (B, H*W)), targets, explain function, noise and the
    logits of the images (float64)."""
    x = check_images(x)
    maps = check_maps(maps, x.shape[0])
    check_batch_size(run.batch_size)
    logits = _forward(model, x, None)[0]
    target = resolve_class_targets(target, logits)
    noise = run.noise
    if noise is None:
        noise = draw_noise(x, run.n_samples, seed=run.seed, **draw)
    elif not isinstance(noise, Tensor) or noise.dim() != 5 or noise.shape[1:] != x.shape:
        shape = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise InputError(f"noise must have shape (n_samples, *x.shape), got {shape}")
    noise = noise.to(x.device, x.dtype)
    fn = explainer(model, explain, run.options)
    return x, maps.flatten(1).double(), target, fn, noise, logits


def _reduce(scores: Tensor, changed: Tensor, nan_when_changed: bool, how: str) -> Tensor:
    """Max (or mean) over draws (S, B) -> (B,); with ``nan_when_changed`` a draw that
    changed the prediction is NaN and makes the image's result NaN (Quantus' convention)."""
    if nan_when_changed:
        scores = torch.where(changed, torch.full_like(scores, float("nan")), scores)
        return (scores.amax(dim=0) if how == "max" else scores.mean(dim=0)).float()
    if how == "max":
        finite = torch.where(scores.isnan(), torch.full_like(scores, -torch.inf), scores)
        out = finite.amax(dim=0)
        return torch.where(out == -torch.inf, torch.full_like(out, float("nan")), out).float()
    return scores.nanmean(dim=0).float()


def _warn_zero(norm: Tensor, name: str) -> None:
    zero = norm == 0
    if bool(zero.any()):
        idx = zero.nonzero().flatten().tolist()
        warnings.warn(
            f"{name}: all-zero map for image(s) {idx[:10]}; its relative change is undefined (NaN)",
            stacklevel=3,
        )


def _sensitivity(
    how: str,
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object,
    run: _Settings,
    radius: float,
) -> Tensor:
    draw = dict(kind="uniform", low=-radius, high=radius)
    x, e, target, fn, noise, logits = _prepare(model, x, maps, explain, target, run, draw)
    ref = e.norm(dim=1)
    _warn_zero(ref, "max_sensitivity" if how == "max" else "avg_sensitivity")
    scores, changed = [], []
    top, forward = logits.argmax(dim=1), run.nan_when_changed
    for draw_ in _runs(model, x, target, fn, noise, run.batch_size, top, forward):
        ratio = (e - draw_.maps).norm(dim=1) / ref
        scores.append(torch.where(ref == 0, torch.full_like(ratio, float("nan")), ratio))
        changed.append(draw_.changed)
    return _reduce(torch.stack(scores), torch.stack(changed), run.nan_when_changed, how)


def max_sensitivity(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object = None,
    *,
    n_samples: int = 200,
    radius: float = 0.2,
    noise: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    nan_when_prediction_changes: bool = False,
    **options: Any,
) -> Tensor:
    """Max-sensitivity (Yeh et al., "On the (in)fidelity and sensitivity of explanations",
    NeurIPS 2019, arXiv:1901.09392), normalized by the map's norm as in Quantus.

    $$\\mathrm{SENS}_{\\max}(x) = \\max_{\\|\\delta\\|_\\infty \\le r}
    \\frac{\\|\\Phi(x + \\delta) - \\Phi(x)\\|_F}{\\|\\Phi(x)\\|_F}$$

    estimated over ``n_samples`` draws $\\delta \\sim U[-r, r]^{C \\times H \\times W}$.

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: the maps $\\Phi(x)$ (B, H, W) of ``explain`` on ``x``.
        explain: a method name or ``explain(x, target) -> maps``.
        target: class per image (None: the top class).
        n_samples: number of draws.
        radius: $r$, half-width of the uniform noise.
        noise: the draws themselves, (n_samples, B, C, H, W) (then ``radius``/``seed`` are
            not used).
        seed: seed of the draws.
        batch_size: most images per explain call.
        nan_when_prediction_changes: a draw that changes the top class makes the image NaN.
        **options: options of the named method.

    Returns:
        float (B,), lower is better; NaN for an all-zero map (with a warning).

    Example:
        >>> max_sensitivity(model, x, exp.maps, "gradcam", n_samples=20)   # doctest: +SKIP
    """
    run = _Settings(n_samples, noise, seed, batch_size, nan_when_prediction_changes, options)
    return _sensitivity("max", model, x, maps, explain, target, run, radius)


def avg_sensitivity(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object = None,
    *,
    n_samples: int = 200,
    radius: float = 0.2,
    noise: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    nan_when_prediction_changes: bool = False,
    **options: Any,
) -> Tensor:
    """Average sensitivity (Yeh et al., NeurIPS 2019, arXiv:1901.09392): the mean instead of
    the max of :func:`max_sensitivity`'s ratio over the draws,

    $$\\mathrm{SENS}_{\\mathrm{avg}}(x) = \\mathbb E_{\\delta \\sim U[-r, r]}
    \\frac{\\|\\Phi(x + \\delta) - \\Phi(x)\\|_F}{\\|\\Phi(x)\\|_F}$$

    Arguments and result as :func:`max_sensitivity`.
    """
    run = _Settings(n_samples, noise, seed, batch_size, nan_when_prediction_changes, options)
    return _sensitivity("mean", model, x, maps, explain, target, run, radius)


def local_lipschitz_estimate(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object = None,
    *,
    n_samples: int = 200,
    std: float = 0.1,
    noise: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    nan_when_prediction_changes: bool = False,
    **options: Any,
) -> Tensor:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola, "On the robustness of
    interpretability methods", ICML WHI 2018, arXiv:1806.08049).

    $$\\hat L(x) = \\max_{x' = x + \\delta}
    \\frac{\\|\\Phi(x) - \\Phi(x')\\|_2}{\\|x - x'\\|_2 + 10^{-10}}, \\qquad
    \\delta \\sim \\mathcal N(0, \\sigma^2)$$

    (Gaussian draws stand in for the paper's neighbourhood search, as in Quantus.)

    Args:
        std: $\\sigma$ of the Gaussian noise; other arguments as :func:`max_sensitivity`.

    Returns:
        float (B,), lower is better.
    """
    run = _Settings(n_samples, noise, seed, batch_size, nan_when_prediction_changes, options)
    x, e, target, fn, noise, logits = _prepare(
        model, x, maps, explain, target, run, dict(kind="gaussian", std=std)
    )
    scores, changed = [], []
    xf = x.flatten(1).double()
    top, forward = logits.argmax(dim=1), run.nan_when_changed
    for draw in _runs(model, x, target, fn, noise, batch_size, top, forward):
        dist = (xf - draw.x.flatten(1).double()).norm(dim=1)
        scores.append((e - draw.maps).norm(dim=1) / (dist + _LIPSCHITZ_EPS))
        changed.append(draw.changed)
    return _reduce(torch.stack(scores), torch.stack(changed), run.nan_when_changed, "max")


def _relative(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Element-wise relative change $(a - b) / a$, with ``eps`` standing in for a zero $a$."""
    return (a - b) / (a + (a == 0) * eps)


def _floor(d: Tensor, eps: float) -> Tensor:
    return d + (d == 0) * eps


def _stability(
    which: str,
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object,
    run: _Settings,
    bounds: tuple[float, float, float],
    layer: str | nn.Module | None,
) -> Tensor:
    low, high, eps_min = bounds
    x, e, target, fn, noise, logits = _prepare(
        model, x, maps, explain, target, run, dict(kind="uniform", low=low, high=high)
    )
    if not eps_min > 0:
        raise InputError(f"eps_min must be > 0, got {eps_min!r}")
    resolved = resolve_layer(model, layer) if which == "representation" else None
    ref_logits, ref_rep = _forward(model, x, resolved) if resolved else (logits, None)
    xf = x.flatten(1).double()
    scores, changed = [], []
    top = ref_logits.argmax(dim=1)
    for draw in _runs(model, x, target, fn, noise, run.batch_size, top, True, resolved):
        num = _relative(e, draw.maps, eps_min).norm(dim=1)
        if which == "input":
            den = _relative(xf, draw.x.flatten(1).double(), eps_min).norm(dim=1)
        elif which == "output":
            den = (ref_logits - draw.logits).norm(dim=1)
        else:
            den = _relative(ref_rep, draw.rep, eps_min).norm(dim=1)
        scores.append(num / _floor(den, eps_min))
        changed.append(draw.changed)
    return _reduce(torch.stack(scores), torch.stack(changed), run.nan_when_changed, "max")


_STABILITY_ARGS = """
    The maximum runs over ``n_samples`` draws $x' = x + \\delta$,
    $\\delta \\sim U[\\mathrm{low}, \\mathrm{high})$ (Quantus' default 0.02 to 0.2); a zero
    entry of a divisor is replaced by ``eps_min``, and a zero norm in the denominator too.
    Note that a map's zero pixels then weigh $1/\\epsilon$: the score is dominated by maps
    that are exactly zero somewhere (all cnnlens [0, 1] maps have a zero minimum); compare
    methods with it only on the same kind of map.

    Args:
        low, high: range of the uniform noise.
        eps_min: $\\epsilon$ of the formula.
        nan_when_prediction_changes: (default True, as in the paper) a draw that changes
            the top class makes the image's score NaN.
        Others as :func:`max_sensitivity`.

    Returns:
        float (B,), lower is better.
"""


def relative_input_stability(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object = None,
    *,
    n_samples: int = 200,
    low: float = 0.02,
    high: float = 0.2,
    noise: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    eps_min: float = 1e-6,
    nan_when_prediction_changes: bool = True,
    **options: Any,
) -> Tensor:
    run = _Settings(n_samples, noise, seed, batch_size, nan_when_prediction_changes, options)
    return _stability("input", model, x, maps, explain, target, run, (low, high, eps_min), None)


relative_input_stability.__doc__ = (
    """Relative input stability (Agarwal et al., "Rethinking stability for attribution-based
    explanations", ICLR PAIR2Struct 2022, arXiv:2203.06877).

    $$\\mathrm{RIS}(x) = \\max_{x'} \\frac{\\|(\\Phi(x) - \\Phi(x')) / \\Phi(x)\\|_2}
    {\\max(\\|(x - x') / x\\|_2, \\epsilon)}$$
    """
    + _STABILITY_ARGS
)


def relative_output_stability(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object = None,
    *,
    n_samples: int = 200,
    low: float = 0.02,
    high: float = 0.2,
    noise: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    eps_min: float = 1e-6,
    nan_when_prediction_changes: bool = True,
    **options: Any,
) -> Tensor:
    run = _Settings(n_samples, noise, seed, batch_size, nan_when_prediction_changes, options)
    return _stability("output", model, x, maps, explain, target, run, (low, high, eps_min), None)


relative_output_stability.__doc__ = (
    """Relative output stability (Agarwal et al., 2022, arXiv:2203.06877): the change of the
    map relative to the change of the logits $h$,

    $$\\mathrm{ROS}(x) = \\max_{x'} \\frac{\\|(\\Phi(x) - \\Phi(x')) / \\Phi(x)\\|_2}
    {\\max(\\|h(x) - h(x')\\|_2, \\epsilon)}$$
    """
    + _STABILITY_ARGS
)


def relative_representation_stability(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    explain: str | ExplainFn,
    target: object = None,
    *,
    layer: str | nn.Module,
    n_samples: int = 200,
    low: float = 0.02,
    high: float = 0.2,
    noise: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    eps_min: float = 1e-6,
    nan_when_prediction_changes: bool = True,
    **options: Any,
) -> Tensor:
    run = _Settings(n_samples, noise, seed, batch_size, nan_when_prediction_changes, options)
    return _stability(
        "representation", model, x, maps, explain, target, run, (low, high, eps_min), layer
    )


relative_representation_stability.__doc__ = (
    """Relative representation stability (Agarwal et al., 2022, arXiv:2203.06877): the
    change of the map relative to the relative change of an internal representation
    $L$ (the output of ``layer``, flattened),

    $$\\mathrm{RRS}(x) = \\max_{x'} \\frac{\\|(\\Phi(x) - \\Phi(x')) / \\Phi(x)\\|_2}
    {\\max(\\|(L(x) - L(x')) / L(x)\\|_2, \\epsilon)}$$
    """
    + _STABILITY_ARGS
)


# ----------------------------------------------------------------------- registry adapters

_REGISTRY_SAMPLES = 10  # draws per image when run by assess (Quantus' default is 200)


def _explain_of(inputs: MetricInputs) -> ExplainFn:
    if inputs.explain is None:
        raise InputError("robustness metrics re-explain perturbed inputs; give an explain fn")
    return inputs.explain


def _common(inputs: MetricInputs, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "n_samples": _REGISTRY_SAMPLES,
        "seed": inputs.seed,
        "batch_size": inputs.batch_size,
        **options,
    }


_FACTS = dict(family="robustness", higher_is_better=False, needs_explain=True)


def _scorer(metric: Any) -> Any:
    """The registry adapter of ``metric``: ``metric(model, x, maps, explain, target, ...)``
    run on ``MetricInputs`` with the registry's draws, seed and batch size."""

    def score(inputs: MetricInputs, **options: Any) -> Tensor:
        return metric(
            inputs.model,
            inputs.x,
            inputs.maps,
            _explain_of(inputs),
            inputs.target,
            **_common(inputs, options),
        )

    return score


_max_sensitivity = register_metric(
    "max_sensitivity", label="max-sens", summary="max map change / map norm", **_FACTS
)(_scorer(max_sensitivity))
_avg_sensitivity = register_metric(
    "avg_sensitivity", label="avg-sens", summary="mean map change / map norm", **_FACTS
)(_scorer(avg_sensitivity))
_local_lipschitz = register_metric(
    "local_lipschitz", label="lipschitz", summary="max map change / input change", **_FACTS
)(_scorer(local_lipschitz_estimate))
_ris = register_metric(
    "relative_input_stability",
    label="RIS",
    summary="max relative map change / relative input change",
    **_FACTS,
)(_scorer(relative_input_stability))
_ros = register_metric(
    "relative_output_stability",
    label="ROS",
    summary="max relative map change / logit change",
    **_FACTS,
)(_scorer(relative_output_stability))


@register_metric(
    "relative_representation_stability",
    label="RRS",
    summary="max relative map change / relative change of the last spatial layer",
    **_FACTS,
)
def _rrs(inputs: MetricInputs, layer: str | None = None, **options: Any) -> Tensor:
    from cnnlens.core.layers import find_spatial_layer

    layer = layer if layer is not None else find_spatial_layer(inputs.model, inputs.x)
    return relative_representation_stability(
        inputs.model,
        inputs.x,
        inputs.maps,
        _explain_of(inputs),
        inputs.target,
        layer=layer,
        **_common(inputs, options),
    )
