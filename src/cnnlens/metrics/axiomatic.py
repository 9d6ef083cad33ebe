"""Axiomatic measures: does an explanation keep the properties an attribution should have?

* :func:`completeness` (Sundararajan et al. 2017): the map sums to the score's change from
  a baseline to the image.
* :func:`input_invariance` (Kindermans et al. 2017): shifting the input by a constant
  that the first layer's bias absorbs (the network's function is unchanged) leaves the
  explanation unchanged.
* :func:`non_sensitivity` (Nguyen & Martínez 2020): values the model ignores get zero
  attribution, and values with zero attribution are ones the model ignores.

Each follows Quantus 0.6 on the same inputs (``tests/test_axiomatic.py``; deliberate
differences named in each docstring) and runs batched on the model's device.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.core.checks import check_float, check_int
from cnnlens.errors import InputError
from cnnlens.metrics._common import (
    Activation,
    ExplainFn,
    check_activation,
    check_batch_size,
    check_images,
    check_maps,
    explainer,
    fast_forward,
    fit_maps,
    frozen_eval,
    probabilities,
    resolve_class_targets,
)
from cnnlens.metrics.registry import MetricInputs, register_metric

__all__ = ["Completeness", "completeness", "input_invariance", "non_sensitivity"]


@dataclass
class Completeness:
    """Completeness of a batch of maps.

    Attributes:
        total: float64 (B,), the map's sum $\\sum_i \\Phi_i$.
        delta: float64 (B,), the score's change $f_c(x) - f_c(\\bar x)$.
    """

    total: Tensor
    delta: Tensor

    @property
    def gap(self) -> Tensor:
        """$\\sum_i \\Phi_i - (f_c(x) - f_c(\\bar x))$, float64 (B,); 0 for a complete map."""
        return self.total - self.delta

    @property
    def complete(self) -> Tensor:
        """Whether the sum equals the change exactly (Quantus' score), bool (B,)."""
        return self.total == self.delta

    @property
    def relative_error(self) -> Tensor:
        """$|\\text{gap}| / |f_c(x) - f_c(\\bar x)|$, float (B,); NaN where the score does not
        change."""
        return torch.where(
            self.delta != 0, self.gap.abs() / self.delta.abs().clamp(min=1e-300), torch.nan
        ).float()


def completeness(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    baseline: float | Tensor | None = None,
    activation: Activation = None,
) -> Completeness:
    """Completeness (Sundararajan, Taly & Yan, "Axiomatic attribution for deep networks",
    ICML 2017, arXiv:1703.01365; "summation to delta" in Shrikumar et al. 2017).

    $$\\sum_i \\Phi_i(x) = f_c(x) - f_c(\\bar x)$$

    with $\\bar x$ the baseline (default: every value set to the image's minimum, Quantus'
    ``"black"``). Integrated gradients and DeepLIFT satisfy it by construction (up to
    their integration error); it applies to raw attributions on the score's scale (sum a
    pixel method's raw map over its channels), not to maps normalized to [0, 1]. Quantus
    0.6's ``Completeness`` returns :attr:`Completeness.complete`, an exact float
    equality that almost never holds; cnnlens also gives the gap and the relative error.

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: (B, H, W) attributions, summed over channels.
        target: class per image (None: the top class).
        baseline: $\\bar x$: None (each image's minimum), a number, or a tensor that
            broadcasts to x.
        activation: ``None`` (logits, default, as Quantus), ``"softmax"`` or ``"sigmoid"``.

    Returns:
        a :class:`Completeness`.
    """
    x = check_images(x)
    maps = check_maps(maps, x.shape[0]).to(x.device)
    check_activation(activation)
    if baseline is None:
        ref = x.flatten(1).min(1).values.view(-1, 1, 1, 1).expand_as(x)
    elif isinstance(baseline, Tensor):
        ref = baseline.to(x.device, x.dtype).expand_as(x)
    else:
        ref = torch.full_like(x, check_float("baseline", baseline))
    with frozen_eval(model):
        out = probabilities(model(torch.cat([x, ref])), activation)
    b = x.shape[0]
    target = resolve_class_targets(target, out[:b])
    scores = out.gather(1, target.repeat(2).view(-1, 1)).view(2, b)
    delta = (scores[0] - scores[1]).double()  # float32 difference, as Quantus
    return Completeness(maps.flatten(1).sum(1).double(), delta)


def input_invariance(
    model: nn.Module,
    x: Tensor,
    explain: str | ExplainFn,
    target: object = None,
    *,
    shift: float = -1.0,
    atol: float = 1e-4,
    maps: Tensor | None = None,
    options: Mapping[str, Any] | None = None,
) -> Tensor:
    """Input invariance (Kindermans et al., "The (un)reliability of saliency methods",
    2017, arXiv:1711.00867).

    A second network $g$ is $f$ with its first layer's bias lowered by $W m$: it computes
    $g(x + m) = f(x)$ for every $x$. An input-invariant method explains $g$ at $x + m$ as
    it explains $f$ at $x$:

    $$\\Phi(g, x + m) = \\Phi(f, x)$$

    (elementwise within ``atol``, as Quantus' ``np.isclose``). Gradients pass; input x
    gradient and integrated gradients with a zero baseline do not. cnnlens builds $g$
    exactly, for any model, by subtracting $m$ from the input in a forward pre-hook
    (removed afterwards). Quantus 0.6 changes the first module's bias instead, which fails
    where that module has no bias (torchvision's ResNets) or is a container (VGG,
    MobileNet), and with zero padding compensates only the interior, so at the borders
    $g \\ne f$ and invariant methods can fail (``tests/test_axiomatic.py``).

    Args:
        model: the classifier (never changed; the hook is removed on every path).
        x: images (B, C, H, W).
        explain: a method name, or a callable ``explain(x, target) -> maps``.
        target: class per image (None: the top class).
        shift: the constant $m$ added to every input value.
        atol: the absolute tolerance of the comparison (relative tolerance 1e-5).
        maps: the explanations of $f$ at $x$ if already computed.
        options: the method's options (with a method name).

    Returns:
        bool (B,): True where the explanation did not change.
    """
    x = check_images(x)
    shift = check_float("shift", shift)
    atol = check_float("atol", atol, minimum=0.0)
    fn = explainer(model, explain, options)
    if target is None or not isinstance(target, Tensor):
        with frozen_eval(model):
            target = resolve_class_targets(target, model(x))
    before = fn(x, target) if maps is None else maps
    handle = model.register_forward_pre_hook(lambda _m, args: (args[0] - shift, *args[1:]))
    try:
        after = fn(x + shift, target)
    finally:
        handle.remove()
    if before.shape != after.shape:
        raise InputError(
            f"maps has shape {tuple(before.shape)} but the explanation has {tuple(after.shape)}"
        )
    same = torch.isclose(before.to(after.device, after.dtype), after, rtol=1e-5, atol=atol)
    return same.flatten(1).all(1)


def non_sensitivity(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: object = None,
    *,
    features_in_step: int = 1,
    patch_size: int | None = None,
    eps: float = 1e-5,
    absolute: bool = True,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """Non-sensitivity (Nguyen & Martínez, "On quantitative aspects of model
    interpretability", 2020, arXiv:2007.07584).

    Each group $G$ of input values is set alone to the image's minimum; the group is
    *ignored* by the model when the class score moves by less than $\\epsilon$, and *left
    out* by the map when every $|\\Phi_i|$ in it is below $\\epsilon$. The score counts the
    groups where the two disagree:

    $$\\mathrm{NS} = \\big|\\{G : [\\,|f_c(x) - f_c(x_{[x_G = b]})| < \\epsilon\\,]
    \\oplus [\\max_{i \\in G} |\\Phi_i| < \\epsilon]\\}\\big|$$

    Groups are ``features_in_step`` consecutive values in (channel, row, column) order, or
    with ``patch_size`` square patches of all channels. With ``features_in_step=1`` equal
    to Quantus 0.6's ``NonSensitivity`` (which fails with a shape error for larger steps)
    on maps it does not rescale (``normalise=False``).

    Args:
        model: the classifier (never changed).
        x: images (B, C, H, W).
        maps: (B, H, W) maps (a pixel's value applies to each channel).
        target: class per image (None: the top class).
        features_in_step: values per group (when ``patch_size`` is None).
        patch_size: side of square groups of whole pixels.
        eps: the $\\epsilon$ above.
        absolute: compare $|\\Phi|$ (Quantus' ``abs=True``).
        activation: ``"softmax"`` (default, as Quantus), ``"sigmoid"`` or ``None``.
        batch_size: most images per forward pass.

    Returns:
        float (B,): the number of disagreeing groups, lower is better.
    """
    x = check_images(x)
    b, c, h, w = x.shape
    maps = fit_maps(check_maps(maps, b), (h, w)).double()
    check_batch_size(batch_size)
    check_activation(activation)
    eps = check_float("eps", eps, minimum=0.0)
    group = _groups(x, features_in_step, patch_size)  # (C*H*W,) group of each value
    n = int(group.max()) + 1
    a = maps.flatten(1).repeat(1, c)
    a = a.abs() if absolute else a
    top = torch.full((b, n), -torch.inf, dtype=a.dtype, device=x.device)
    top.scatter_reduce_(1, group.expand(b, -1), a, reduce="amax")
    left_out = top < eps
    flat = x.flatten(1)
    fill = flat.min(1, keepdim=True).values
    per_call = max(1, batch_size // b)
    ignored = []
    with frozen_eval(model):
        out = probabilities(model(x), activation)
        target = resolve_class_targets(target, out)
        ref = out.gather(1, target.view(-1, 1)).squeeze(1)
        fast = fast_forward(model, x)
        for start in range(0, n, per_call):
            ks = torch.arange(start, min(n, start + per_call), device=x.device)
            hit = group.view(1, 1, -1) == ks.view(-1, 1, 1)  # (k, 1, F)
            xs = torch.where(hit, fill.unsqueeze(0), flat.unsqueeze(0)).view(-1, c, h, w)
            probs = probabilities(fast(xs), activation)
            score = probs.gather(1, target.repeat(len(ks)).view(-1, 1)).view(len(ks), b)
            ignored.append((score - ref).abs() < eps)
    return (torch.cat(ignored).T ^ left_out).sum(1).float()


def _groups(x: Tensor, features_in_step: int, patch_size: int | None) -> Tensor:
    """The group index of each value of an image flattened as (C, H, W), long (C*H*W,)."""
    c, h, w = x.shape[1:]
    if patch_size is None:
        step = check_int("features_in_step", features_in_step, maximum=c * h * w)
        return torch.arange(c * h * w, device=x.device) // step
    side = check_int("patch_size", patch_size, maximum=max(h, w))
    cols = -(-w // side)
    rows = torch.arange(h, device=x.device) // side
    cell = rows.view(-1, 1) * cols + torch.arange(w, device=x.device) // side
    return cell.flatten().repeat(c)


@register_metric(
    "completeness",
    family="axiomatic",
    higher_is_better=False,
    label="complete",
    summary="|map sum - score change from the black image| / |change|",
    options_of=completeness,
)
def _completeness(inputs: MetricInputs, **options: Any) -> Tensor:
    maps = inputs.maps
    if bool(maps.min() >= 0) and bool(maps.max() <= 1):
        warnings.warn(
            "completeness of maps normalized to [0, 1]: their sum and the score change are in "
            "different units, so the error ranks methods only roughly; give raw "
            "attributions to completeness() for the axiom itself",
            stacklevel=2,
        )
    settings = {"activation": inputs.activation, **options}
    got = completeness(inputs.model, inputs.x, inputs.maps, inputs.target, **settings)
    return got.relative_error


@register_metric(
    "input_invariance",
    family="axiomatic",
    higher_is_better=True,
    label="in-inv",
    summary="1 if the map is unchanged by a bias-absorbed input shift",
    binary=True,
    needs_explain=True,
)
def _input_invariance(inputs: MetricInputs, *, shift: float = -1.0, atol: float = 1e-4) -> Tensor:
    if inputs.explain is None:
        raise InputError("input_invariance re-explains its inputs; it needs an explain function")
    same = input_invariance(
        inputs.model,
        inputs.x,
        inputs.explain,
        inputs.target,
        shift=shift,
        atol=atol,
        maps=inputs.maps,
    )
    return same.float()


@register_metric(
    "non_sensitivity",
    family="axiomatic",
    higher_is_better=False,
    label="non-sens",
    summary="share of patches where 'ignored' and 'zero map' disagree",
    options_of=non_sensitivity,
)
def _non_sensitivity(inputs: MetricInputs, **options: Any) -> Tensor:
    h, w = inputs.x.shape[-2:]
    settings = {
        "activation": inputs.activation,
        "batch_size": inputs.batch_size,
        "patch_size": max(1, min(h, w) // 8),  # an 8x8 grid of whole-pixel patches
        **options,
    }
    x = inputs.x
    count = non_sensitivity(inputs.model, x, inputs.maps, inputs.target, **settings)
    groups = _groups(x, settings.get("features_in_step", 1), settings["patch_size"])
    return count / (int(groups.max()) + 1)
