"""Randomization metrics: does the explanation depend on what the model learned?

* :func:`efficient_mprt`: the rise in the explanation's entropy once every layer is
  re-initialized (Hedström et al. 2023, eMPRT);
* :func:`smooth_mprt`: the rank correlation of noise-averaged explanations of the trained
  and the re-initialized model (Hedström et al. 2023, sMPRT);
* :func:`random_logit`: the structural similarity of the explanation of the class and that
  of a random other class (Sixt et al. 2020).

The model is never changed: :func:`randomized_copy` re-initializes a deep copy. Its
procedure is Quantus 0.6's (``get_random_layer_generator``): every module with
``reset_parameters`` in ``named_modules`` order (bottom-up), each reset right after
``torch.manual_seed(seed + 1)``; the global RNG is forked, so it is not disturbed. With the
same seed, the same explanations and (for the stochastic parts) the same draws passed in,
the scores equal Quantus' ``EfficientMPRT``, ``SmoothMPRT`` and ``RandomLogit``
(``tests/test_randomization.py``).

A method is a registry name (run through :func:`cnnlens.explain`; ``output="raw"``
attributions by default, or ``"maps"``) or ``explain_fn(model, x, targets) -> maps``
(channels of (B, C, H, W) maps are summed). Explanations run in chunks of ``batch_size``
images; the noisy copies of :func:`smooth_mprt` are stacked into the same chunks.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.checks import check_float, check_int
from cnnlens.errors import InputError, ModelError
from cnnlens.metrics._common import check_batch_size, check_maps, frozen_eval
from cnnlens.metrics.registry import MetricInputs, register_metric
from cnnlens.metrics.sanity import ExplainFn, MethodLike, _as_2d, _setup
from cnnlens.metrics.similarity import spearman

__all__ = [
    "efficient_mprt",
    "histogram_entropy",
    "random_logit",
    "randomized_copy",
    "smooth_mprt",
    "ssim_1d",
]

log = logging.getLogger("cnnlens")


def randomized_copy(model: nn.Module, seed: int = 42) -> nn.Module:
    """A deep copy of ``model`` with every layer re-initialized (the model is not changed).

    Every module with ``reset_parameters`` is reset, in ``named_modules`` order, each right
    after ``torch.manual_seed(seed + 1)`` (Quantus 0.6's procedure, so the copy equals the
    last model of its bottom-up randomization). A module that owns parameters but has no
    ``reset_parameters`` (which Quantus leaves trained) gets normal noise with its
    parameters' standard deviation, and the fact is logged. The global RNG is forked.

    Raises:
        ModelError: a model without parameters (nothing to randomize).
    """
    if not any(p.numel() for p in model.parameters()):
        raise ModelError(f"model {type(model).__name__} has no parameters to randomize")
    work = copy.deepcopy(model)
    devices = sorted({p.device.index or 0 for p in work.parameters() if p.device.type == "cuda"})
    covered: set[int] = set()
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        for _, module in work.named_modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                torch.manual_seed(int(seed) + 1)
                reset()
                covered.update(id(p) for p in module.parameters())
        left = [
            (name, p)
            for name, p in work.named_parameters()
            if id(p) not in covered and p.numel() > 0
        ]
        if left:
            log.info(
                "randomized_copy: no reset_parameters for %s; drawn from a normal",
                ", ".join(n for n, _ in left[:5]),
            )
            torch.manual_seed(int(seed) + 1)
            for _, p in left:
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, std if std > 0 else 0.02)
    return work


def _explain_chunks(
    fn: ExplainFn, model: nn.Module, x: Tensor, target: Tensor, size: int, step: str
) -> Tensor:
    """``fn`` on ``x`` in chunks of ``size`` images: float64 maps (N, H, W)."""
    parts = [
        _as_2d(fn(model, x[i : i + size], target[i : i + size]), len(x[i : i + size]), step)
        for i in range(0, x.shape[0], size)
    ]
    return torch.cat(parts)


def histogram_entropy(maps: Tensor, n_bins: int = 100) -> Tensor:
    """Shannon entropy (nats) of each map's histogram of ``n_bins`` equal bins spanning its
    own range, float64 (B,).

    $$H(a) = -\\sum_{k=1}^{K} p_k \\log p_k, \\qquad
    p_k = \\frac{|\\{j : a_j \\in \\text{bin}_k\\}|}{|a|}$$

    As ``numpy.histogram(a, bins=K)`` with ``scipy.stats.entropy``: the last bin is closed;
    a constant map's single bin gives 0.
    """
    check_int("n_bins", n_bins)
    flat = maps.flatten(1).double()
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    same = hi == lo
    lo, hi = torch.where(same, lo - 0.5, lo), torch.where(same, hi + 0.5, hi)
    idx = ((flat - lo) / (hi - lo) * n_bins).floor().long().clamp(0, n_bins - 1)
    counts = torch.zeros(flat.shape[0], n_bins, dtype=torch.float64, device=flat.device)
    counts.scatter_add_(1, idx, torch.ones_like(flat))
    p = counts / counts.sum(dim=1, keepdim=True)
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=1)


def efficient_mprt(
    model: nn.Module,
    x: Tensor,
    method: MethodLike,
    *,
    target: object = None,
    maps: Tensor | None = None,
    n_bins: int = 100,
    seed: int = 42,
    output: str = "raw",
    batch_size: int = 64,
    **options: Any,
) -> Tensor:
    """Efficient model parameter randomization test, eMPRT (Hedström et al., "Sanity checks
    revisited: an exploration to repair the model parameter randomisation test", XAI in
    Action workshop, NeurIPS 2023, arXiv:2401.06465).

    An explanation of a model whose weights are all random should carry no structure, so its
    histogram should spread out. With $H$ the :func:`histogram_entropy` of the explanation
    on the trained model, $\\hat H$ on a fully re-initialized copy (:func:`randomized_copy`),

    $$\\mathrm{eMPRT}(x) = \\frac{\\hat H - H}{H}$$

    (Quantus ``EfficientMPRT`` with its defaults: bottom-up, ``skip_layers``, no ``abs``, no
    normalisation, 100 bins). **Higher is better**; NaN (with a warning) when $H = 0$ (a
    constant explanation).

    Args:
        model: the trained classifier; never changed.
        x: images (B, C, H, W).
        method: a registry name or ``explain_fn(model, x, targets) -> maps``.
        target: None (top class), an int or one class per image.
        maps: the explanations of ``x`` on ``model``, when already computed (else explained).
        n_bins: $K$, bins of the histogram.
        seed: seed of the re-initialization.
        output: ``"raw"`` attributions or [0, 1] ``"maps"`` of a registry name (the
            histogram spans each map's range, so a positive rescaling changes nothing).
        batch_size: most images per explain call.
        **options: the method's own options (registry names only).

    Returns:
        float (B,).

    Example:
        >>> efficient_mprt(model, x, "gradcam")          # doctest: +SKIP
    """
    check_batch_size(batch_size)
    _, fn, x, targets = _setup(model, x, method, target, output, 0.5, "spearman", options)
    if maps is None:
        maps = _explain_chunks(fn, model, x, targets, batch_size, "original")
    else:
        maps = check_maps(maps, x.shape[0]).double()
    rand = _explain_chunks(fn, randomized_copy(model, seed), x, targets, batch_size, "random")
    h, h_rand = histogram_entropy(maps, n_bins), histogram_entropy(rand, n_bins)
    zero = h == 0
    if bool(zero.any()):
        idx = zero.nonzero().flatten().tolist()
        warnings.warn(
            f"efficient_mprt: constant explanation for image(s) {idx[:10]}; its entropy is 0 "
            "and the relative rise undefined (NaN)",
            stacklevel=2,
        )
    return torch.where(zero, torch.full_like(h, float("nan")), (h_rand - h) / h).float()


def _smoothed(
    fn: ExplainFn,
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    eps: Tensor,
    batch_size: int,
    step: str,
) -> Tensor:
    """Mean of the explanations of ``x + eps[s]`` over the draws and of ``x`` itself."""
    s, b = eps.shape[0], x.shape[0]
    xs = torch.cat([(x.unsqueeze(0) + eps).reshape(s * b, *x.shape[1:]), x])
    maps = _explain_chunks(fn, model, xs, targets.repeat(s + 1), batch_size, step)
    return maps.view(s + 1, b, *maps.shape[1:]).mean(dim=0)


def smooth_mprt(
    model: nn.Module,
    x: Tensor,
    method: MethodLike,
    *,
    target: object = None,
    n_samples: int = 50,
    noise_magnitude: float = 0.1,
    noise: Tensor | None = None,
    seed: int = 42,
    output: str = "raw",
    batch_size: int = 64,
    **options: Any,
) -> Tensor:
    """Smooth model parameter randomization test, sMPRT (Hedström et al., NeurIPS 2023
    XAI in Action workshop, arXiv:2401.06465).

    Gradient noise makes the explanations of a trained and a random model look alike or
    unlike by chance; sMPRT compares noise-averaged explanations instead. With
    $\\epsilon_n \\sim \\mathcal N(0, \\sigma^2)$, $\\sigma = \\lambda(\\max x - \\min x)$ per
    image, and $\\epsilon_N = 0$,

    $$\\bar\\Phi_\\theta(x) = \\frac{1}{N}\\sum_{n=1}^{N}\\Phi_\\theta(x + \\epsilon_n), \\qquad
    \\mathrm{sMPRT}(x) = \\rho_{\\mathrm{Spearman}}\\big(|\\bar\\Phi_\\theta(x)|,
    |\\bar\\Phi_{\\hat\\theta}(x)|\\big)$$

    with $\\hat\\theta$ every layer re-initialized (:func:`randomized_copy`). Quantus
    ``SmoothMPRT`` with ``skip_layers=True, return_last_correlation=True`` (its defaults
    otherwise: bottom-up, ``abs``, second-moment normalisation, which a rank correlation
    ignores). The same draws serve both models. **Lower is better.**

    Args:
        n_samples: $N$, explanations averaged (the last on the clean image).
        noise_magnitude: $\\lambda$.
        noise: standard-normal draws (N - 1, B, C, H, W), scaled by $\\sigma$ here; default
            drawn on the CPU from a generator seeded with ``seed``.
        Others as :func:`efficient_mprt`.

    Returns:
        float (B,) in [-1, 1].
    """
    check_batch_size(batch_size)
    check_int("n_samples", n_samples)
    check_float("noise_magnitude", noise_magnitude)
    _, fn, x, targets = _setup(model, x, method, target, output, 0.5, "spearman", options)
    shape = (n_samples - 1, *x.shape)
    if noise is None:
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(shape, generator=g, dtype=torch.float64)
    elif not isinstance(noise, Tensor) or tuple(noise.shape) != shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise InputError(f"noise must have shape (n_samples - 1, *x.shape) = {shape}, got {got}")
    flat = x.flatten(1).double()
    std = noise_magnitude * (flat.amax(dim=1) - flat.amin(dim=1))
    eps = (noise.to(x.device, torch.float64) * std.view(1, -1, 1, 1, 1)).to(x.dtype)
    a = _smoothed(fn, model, x, targets, eps, batch_size, "original")
    rand = randomized_copy(model, seed)
    a_rand = _smoothed(fn, rand, x, targets, eps, batch_size, "random")
    return spearman(a.abs(), a_rand.abs())


def ssim_1d(a: Tensor, b: Tensor, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Structural similarity of each pair of flattened maps along one axis, float64 (B,)
    (Wang et al., IEEE TIP 2004), as ``skimage.metrics.structural_similarity`` on 1-D
    arrays with ``data_range`` the pair's joint range: uniform windows of ``win_size``
    values, sample covariances, the mean over the windows that fit inside.

    $$\\mathrm{SSIM} = \\frac{(2\\mu_a\\mu_b + C_1)(2\\sigma_{ab} + C_2)}
    {(\\mu_a^2 + \\mu_b^2 + C_1)(\\sigma_a^2 + \\sigma_b^2 + C_2)}, \\quad
    C_i = (k_i R)^2$$

    NaN for a pair with no range ($R = 0$).
    """
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    if fa.shape != fb.shape or fa.shape[1] < win_size:
        raise InputError(
            f"ssim_1d needs two batches of the same size with at least win_size={win_size} "
            f"values each, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    both = torch.cat([fa, fb], dim=1)
    r = both.amax(dim=1) - both.amin(dim=1)
    c1, c2 = ((k1 * r) ** 2).unsqueeze(1), ((k2 * r) ** 2).unsqueeze(1)

    def mean(t: Tensor) -> Tensor:
        return F.avg_pool1d(t.unsqueeze(1), win_size, stride=1).squeeze(1)

    norm = win_size / (win_size - 1)
    ua, ub = mean(fa), mean(fb)
    va = norm * (mean(fa * fa) - ua * ua)
    vb = norm * (mean(fb * fb) - ub * ub)
    vab = norm * (mean(fa * fb) - ua * ub)
    s = (2 * ua * ub + c1) * (2 * vab + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return torch.where(r > 0, s.mean(dim=1), torch.full_like(r, float("nan")))


def _by_max_abs(maps: Tensor) -> Tensor:
    """Each map divided by its largest absolute value (an all-zero map is left as is)."""
    flat = maps.flatten(1)
    top = flat.abs().amax(dim=1, keepdim=True)
    return torch.where(top > 0, flat / top.clamp(min=1e-300), flat).view_as(maps)


def random_logit(
    model: nn.Module,
    x: Tensor,
    method: MethodLike,
    *,
    target: object = None,
    maps: Tensor | None = None,
    off_target: Tensor | None = None,
    seed: int = 42,
    win_size: int = 7,
    output: str = "raw",
    batch_size: int = 64,
    **options: Any,
) -> Tensor:
    """Random logit test (Sixt et al., "When explanations lie: why many modified BP
    attributions fail", ICML 2020, arXiv:1912.09818).

    An explanation of class $c$ should differ from that of another class $c'$ drawn
    uniformly from the other classes. Each explanation is divided by its largest absolute
    value, then

    $$\\mathrm{RL}(x) = \\mathrm{SSIM}\\big(\\Phi_c(x)/\\lVert\\Phi_c(x)\\rVert_\\infty,\\;
    \\Phi_{c'}(x)/\\lVert\\Phi_{c'}(x)\\rVert_\\infty\\big)$$

    with :func:`ssim_1d` over the flattened maps. Quantus ``RandomLogit`` with its defaults
    (``normalise=True``, no ``abs``); **deliberate difference**: Quantus divides by one
    maximum over the whole batch, so an image's score depends on the other images in
    its batch; here each map is normalised alone (equal to Quantus called one image at a
    time). **Lower is better.**

    Args:
        maps: the explanations of ``x`` for ``target``, when already computed.
        off_target: the other class per image (B,); default drawn uniformly from the
            other classes with a CPU generator seeded with ``seed``.
        win_size: the SSIM window.
        Others as :func:`efficient_mprt`.

    Returns:
        float (B,).
    """
    check_batch_size(batch_size)
    _, fn, x, targets = _setup(model, x, method, target, output, 0.5, "spearman", options)
    with frozen_eval(model):
        n_classes = int(model(x[:1]).shape[1])
    if n_classes < 2:
        raise InputError(f"random_logit needs a model with at least 2 classes, got {n_classes}")
    if off_target is None:
        g = torch.Generator().manual_seed(int(seed))
        pick = torch.randint(0, n_classes - 1, (x.shape[0],), generator=g).to(targets.device)
        off_target = pick + (pick >= targets).long()
    off_target = torch.as_tensor(off_target, device=targets.device).long().flatten()
    if off_target.shape != targets.shape or bool((off_target == targets).any()):
        raise InputError(
            f"off_target must be one class per image, each other than the explained one; got "
            f"{off_target.tolist()[:10]} for targets {targets.tolist()[:10]}"
        )
    if maps is None:
        maps = _explain_chunks(fn, model, x, targets, batch_size, "original")
    else:
        maps = check_maps(maps, x.shape[0]).double()
    other = _explain_chunks(fn, model, x, off_target, batch_size, "random class")
    return ssim_1d(_by_max_abs(maps), _by_max_abs(other), win_size).float()


# ----------------------------------------------------------------------- registry adapters

_REGISTRY_SAMPLES = 10  # noisy explanations per model for smooth MPRT when run by assess


def _model_explain(inputs: MetricInputs, name: str) -> ExplainFn | None:
    """``explain_fn(model, x, targets)`` from the batch's explainer, or None with a warning
    (an explain callable cannot be re-bound to a randomized copy)."""
    rebind = getattr(inputs.explain, "with_model", None)
    if not callable(rebind):
        warnings.warn(
            f"{name} re-explains a randomized copy of the model and needs a registered "
            "method (cnnlens.metrics.explainer); given a plain callable, its scores are NaN",
            stacklevel=3,
        )
        return None

    def fn(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
        return rebind(model)(x, targets)

    return fn


def _nan(inputs: MetricInputs) -> Tensor:
    return torch.full((inputs.x.shape[0],), float("nan"), device=inputs.x.device)


_FACTS = dict(family="randomization", needs_explain=True)


@register_metric(
    "efficient_mprt",
    higher_is_better=True,
    label="eMPRT",
    summary="relative entropy rise of the map, all layers random",
    **_FACTS,
)
def _efficient_mprt(inputs: MetricInputs, n_bins: int = 100) -> Tensor:
    fn = _model_explain(inputs, "efficient_mprt")
    if fn is None:
        return _nan(inputs)
    return efficient_mprt(
        inputs.model,
        inputs.x,
        fn,
        target=inputs.target,
        maps=inputs.maps,
        n_bins=n_bins,
        seed=inputs.seed,
        batch_size=inputs.batch_size,
    )


@register_metric(
    "smooth_mprt",
    higher_is_better=False,
    label="sMPRT",
    summary="Spearman of noise-averaged maps, trained vs random model",
    **_FACTS,
)
def _smooth_mprt(
    inputs: MetricInputs, n_samples: int = _REGISTRY_SAMPLES, noise_magnitude: float = 0.1
) -> Tensor:
    fn = _model_explain(inputs, "smooth_mprt")
    if fn is None:
        return _nan(inputs)
    return smooth_mprt(
        inputs.model,
        inputs.x,
        fn,
        target=inputs.target,
        n_samples=n_samples,
        noise_magnitude=noise_magnitude,
        seed=inputs.seed,
        batch_size=inputs.batch_size,
    )


@register_metric(
    "random_logit",
    higher_is_better=False,
    label="rand-logit",
    summary="SSIM of the map to that of a random other class",
    **_FACTS,
)
def _random_logit(inputs: MetricInputs, win_size: int = 7) -> Tensor:
    fn = _model_explain(inputs, "random_logit")
    if fn is None:
        return _nan(inputs)
    return random_logit(
        inputs.model,
        inputs.x,
        fn,
        target=inputs.target,
        maps=inputs.maps,
        seed=inputs.seed,
        win_size=win_size,
        batch_size=inputs.batch_size,
    )
