"""The method engine: the machinery every method family stands on.

Input checks and placement (:func:`prepare_input`), the fast CPU path (channels-last inputs,
a BatchNorm-folded private copy of the model: :class:`BatchedForward`), the resolution of
targets for rows of a batch (:func:`first_pass`, :func:`rows_targets`, :func:`row_scores`),
batch sizes, baselines broadcast to the input, channel reductions and the
:class:`~cnnlens.core.explanation.Explanation` of a pixel method.

It lives in ``methods/`` rather than ``core/`` although it is torch-only: it holds the
policies of the methods (when the fast path is taken, default batch sizes, how pixel
attributions become maps and results), which no other layer needs; ``core/`` stays what
every layer may use (targets, layers, hooks, device, map post-processing, checks). A method
file imports this module and :mod:`cnnlens.methods.base`, never another method's file.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.core.checks import check_choice
from cnnlens.core.device import model_device_dtype
from cnnlens.core.explanation import Explanation
from cnnlens.core.keras import is_keras
from cnnlens.core.maps import normalize_maps
from cnnlens.core.outputs import detach_outputs
from cnnlens.core.targets import TargetLike, Targets, resolve_targets
from cnnlens.errors import InputError

log = logging.getLogger("cnnlens")

__all__ = [
    "LAYOUT_ERRORS",
    "REDUCTIONS",
    "BatchedForward",
    "batch_for",
    "broadcast_to_input",
    "channels_last_forward",
    "check_reduce",
    "detach_outputs",
    "first_component",
    "first_pass",
    "folded_copy",
    "pixel_explanation",
    "prepare_input",
    "reduce_channels",
    "row_scores",
    "rows_targets",
    "wants_optimize",
    "warn_if_zero",
    "warn_nonfinite",
]

# ---------------------------------------------------------------------------------------------
# The input
# ---------------------------------------------------------------------------------------------


# the channel counts of images: an input whose last axis is one of these and whose axis 1 is
# not is an NHWC batch (Keras's layout), which a torch model cannot mean
_IMAGE_CHANNELS = (1, 2, 3, 4)


def prepare_input(x: Any, model: nn.Module) -> Tensor:
    """Check ``x`` and return a (B, C, H, W) (or video (B, C, T, H, W)) tensor on the model's
    device and dtype."""
    if not isinstance(x, Tensor):
        raise InputError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() not in (4, 5):
        raise InputError(
            f"x must have shape (B, C, H, W), (C, H, W) or video (B, C, T, H, W), got "
            f"{tuple(x.shape)}"
        )
    if (
        x.dim() == 4
        and not is_keras(model)
        and x.shape[-1] in _IMAGE_CHANNELS
        and x.shape[1] not in _IMAGE_CHANNELS
        and x.shape[2] > 4
    ):
        raise InputError(
            f"x has shape {tuple(x.shape)}, an NHWC (B, H, W, C) batch; a torch model takes "
            "(B, C, H, W): pass x.permute(0, 3, 1, 2)"
        )
    if x.shape[0] == 0:
        raise InputError("x is an empty batch (B = 0)")
    if not x.is_floating_point():
        hint = (
            " (raw 0-255 pixels? cnnlens.data.to_tensor scales and normalizes images)"
            if x.dtype == torch.uint8
            else ""
        )
        raise InputError(
            f"x must be a floating-point tensor preprocessed as the model expects, got dtype "
            f"{x.dtype}{hint}"
        )
    device, dtype = model_device_dtype(model)
    if x.is_inference():
        x = x.clone()
    return x.to(device=device or x.device, dtype=dtype or torch.float32)


def batch_for(x: Tensor, batch_size: int | None) -> int:
    """``batch_size``, or the default for ``x``'s device: 8 on the CPU (where small batches
    ran the multi-pass methods fastest; see docs/benchmarks.md), 64 on an accelerator."""
    if batch_size is not None:
        return batch_size
    return 8 if x.device.type == "cpu" else 64


def broadcast_to_input(name: str, value: Any, x: Tensor) -> Tensor:
    """A scalar or tensor ``value`` broadcast to ``x``'s (B, C, H, W) shape, on its device.

    Accepted: a number, a 0-d tensor, or a tensor broadcastable to (B, C, H, W) such as
    (C, 1, 1) (one value per channel), (C, H, W) (one image for all), (1, C, H, W) or
    (B, C, H, W).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full_like(x, float(value))
    if not isinstance(value, Tensor):
        raise InputError(
            f"{name} must be a number or a tensor broadcastable to x's shape "
            f"{tuple(x.shape)}, got {type(value).__name__}"
        )
    try:
        shape = torch.broadcast_shapes(value.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise InputError(
            f"{name} has shape {tuple(value.shape)}, which does not broadcast to x's shape "
            f"{tuple(x.shape)}; give a scalar, (C, 1, 1), (C, H, W), (1, C, H, W) or (B, C, H, W)"
        )
    return value.to(device=x.device, dtype=x.dtype).expand_as(x)


# ---------------------------------------------------------------------------------------------
# Forwards: the fast CPU path
# ---------------------------------------------------------------------------------------------

# what a forward that refuses channels-last inputs raises (a .view on such an activation)
LAYOUT_ERRORS = ("view size is not compatible", "stride", "contiguous")


def wants_optimize(model: nn.Module, x: Tensor, flag: bool | None) -> bool:
    """Whether the forwards of a call run on the fast CPU path.

    ``None`` (automatic) chooses it for 4-D float32 inputs on the CPU when the model has a
    2-D convolution. See :class:`BatchedForward` for what the fast path of the multi-pass
    methods does, and :class:`~cnnlens.methods.base.BaseCAM` for the CAM methods.
    """
    if flag is not None:
        return bool(flag) and x.dim() == 4
    if x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def channels_last_forward(
    model: nn.Module, batch: Tensor, *, requires_grad: bool = False
) -> tuple[Tensor, Any] | None:
    """``(leaf, outputs)`` of ``model`` on ``batch`` fed in the channels-last memory format
    (the leaf requiring grad when asked), or None when the model's forward refuses that layout
    (see :data:`LAYOUT_ERRORS`); any other error is raised as it is."""
    leaf = batch.contiguous(memory_format=torch.channels_last).detach()
    leaf.requires_grad_(requires_grad)
    try:
        return leaf, model(leaf)
    except RuntimeError as err:
        if not any(text in str(err) for text in LAYOUT_ERRORS):
            raise
        log.debug("the model refuses channels-last inputs (%s); using the default layout", err)
        return None


def folded_copy(model: nn.Module) -> nn.Module | None:
    """A private copy of ``model`` with every BatchNorm folded into the convolution or linear
    layer before it (torch.fx), parameters frozen, hooks dropped and weights stored
    channels-last; None when the model has no BatchNorm in eval mode or cannot be traced
    symbolically."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or any(m.training for m in norms):
        return None
    from torch.fx.experimental.optimization import fuse

    try:
        twin = copy.deepcopy(model)
        for module in twin.modules():
            for hooks in (
                module._forward_hooks,
                module._forward_pre_hooks,
                module._backward_hooks,
                module._backward_pre_hooks,
            ):
                hooks.clear()
        twin = fuse(twin, inplace=True)
    except Exception as err:  # an untraceable or uncopyable model runs as it is
        log.debug("no BatchNorm folding for %s: %s", type(model).__name__, err)
        return None
    for p in twin.parameters():
        p.requires_grad_(False)
    # channels-last weights spare oneDNN a reorder of every weight at every call
    return twin.to(memory_format=torch.channels_last)


class BatchedForward:
    """The batched forwards of one explain call, on the fast CPU path when asked.

    With ``optimize`` (None: automatic, see :func:`wants_optimize`) the inputs are fed in the
    channels-last memory format, whose oneDNN kernels run a CNN faster on the CPU, and, when
    ``fold`` is set, through a private copy of the model with each BatchNorm folded into the
    convolution before it (:func:`folded_copy`); docs/benchmarks.md gives the measured gains.
    The caller's model is not touched. The copy is used only after :meth:`check` has seen it
    reproduce the model's outputs; values agree with the plain path to float32 rounding
    (gradients can differ where a ReLU input sits within rounding of zero). When the model's
    forward refuses channels-last inputs (a ``.view`` on a channels-last activation raises a
    stride error), the rest of the call uses the default layout; any other error is raised
    as it is.

    Example:
        >>> forward = BatchedForward(model, x, optimize=None)       # doctest: +SKIP
        >>> outputs, targets = first_pass(forward, x, target=None, topk=None)
        >>> scores = forward(x_masked)
    """

    def __init__(
        self, model: nn.Module, x: Tensor, optimize: bool | None, *, fold: bool = True
    ) -> None:
        self.model = model
        self.channels_last = wants_optimize(model, x, optimize)
        self.fast: nn.Module | None = folded_copy(model) if self.channels_last and fold else None
        self.checked = self.fast is None

    def check(self, x: Tensor, outputs: Any) -> None:
        """Keep the folded copy only if it reproduces the model's ``outputs`` for ``x``."""
        if self.checked:
            return
        self.checked = True
        if not isinstance(outputs, Tensor) or not outputs.is_floating_point():
            self.fast = None
            return
        with torch.inference_mode():
            got = self.forward(x)[1]
        ref = outputs.detach().float()
        tol = 1e-3 * float(ref.abs().max()) + 1e-5
        if (
            not isinstance(got, Tensor)
            or got.shape != ref.shape
            or bool(((got.float() - ref).abs() > tol).any())
        ):
            log.debug("the BatchNorm-folded copy disagrees with the model; not using it")
            self.fast = None

    def forward(self, batch: Tensor, *, requires_grad: bool = False) -> tuple[Tensor, Any]:
        """``(leaf, outputs)``: the input actually fed (a leaf when ``requires_grad``)."""
        if self.channels_last:
            net = self.fast if self.fast is not None else self.model
            got = channels_last_forward(net, batch, requires_grad=requires_grad)
            if got is not None:
                return got
            self.channels_last = False
            self.fast = None  # its channels-last weights would bring the layout back
            batch = batch.contiguous()
        leaf = batch.detach().requires_grad_(requires_grad)
        return leaf, self.model(leaf)

    def __call__(self, batch: Tensor) -> Any:
        return self.forward(batch)[1]


# ---------------------------------------------------------------------------------------------
# Targets of rows: row i of a batch is a variant (masked, noisy, on a path) of image rows[i]
# ---------------------------------------------------------------------------------------------


def first_pass(
    forward: BatchedForward, x: Tensor, target: TargetLike, topk: int | None
) -> tuple[Any, Targets]:
    """The model's own outputs for ``x`` (no graph) and the resolved targets; the fast path
    of ``forward`` is checked against them."""
    with torch.no_grad():
        outputs = forward.model(x)
    targets = resolve_targets(target, outputs, topk, batch=x.shape[0])
    forward.check(x, outputs)
    return outputs, targets


def rows_targets(targets: Targets, rows: Tensor) -> Targets:
    """The targets of a batch whose row ``i`` is a variant of image ``rows[i]``."""
    fn = targets.fn
    # a target object follows its images' rows (cnnlens.targets.Target.rows)
    if fn is not None and callable(getattr(fn, "rows", None)):
        fn = fn.rows(rows)
    return dataclasses.replace(
        targets, indices=targets.indices[rows.to(targets.indices.device)], fn=fn
    )


def row_scores(targets: Targets, outputs: Any, rows: Tensor, *, softmax: bool = False) -> Tensor:
    """Scores (n, K) of the targets for a batch of rows; class probabilities with ``softmax``
    (the sigmoid for a single-output model, whose softmax would always be 1).

    A callable target is applied to the rows' outputs and must return one score per row.
    """
    sub = rows_targets(targets, rows)
    if softmax and sub.fn is None:
        logits = sub.logits(outputs).float()
        probs = logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)
        return probs.gather(1, sub.indices.to(probs.device))
    return sub.scores(outputs).float()


def warn_nonfinite(method: str, bad: int, total: int, what: str) -> None:
    """Warn that ``bad`` of ``total`` perturbed inputs gave non-finite scores (left out)."""
    if bad:
        warnings.warn(
            f"{method}: the model returned non-finite scores for {bad} of {total} {what}; "
            "the map is computed from the finite ones",
            RuntimeWarning,
            stacklevel=4,
        )


# ---------------------------------------------------------------------------------------------
# Pixel attributions to maps and results
# ---------------------------------------------------------------------------------------------

REDUCTIONS = ("absmax", "square", "abs", "sum")


def check_reduce(reduce: str | None, default: str) -> str:
    """``reduce`` (``default`` when None) if it is one of :data:`REDUCTIONS`."""
    return check_choice("reduce", default if reduce is None else reduce, REDUCTIONS)


def reduce_channels(attr: Tensor, how: str, dim: int = -3) -> Tensor:
    """Reduce the channel axis ``dim`` of attributions (n, K, C, H, W) (or video
    (n, K, C, T, H, W)) to maps (n, K, H, W) (or (n, K, T, H, W)).

    ``"absmax"``: $\\max_c |a_c|$; ``"square"``: $\\sum_c a_c^2$; ``"abs"``:
    $\\sum_c |a_c|$; ``"sum"``: $\\sum_c a_c$ (signed).
    """
    if how == "absmax":
        return attr.abs().amax(dim=dim)
    if how == "square":
        return attr.pow(2).sum(dim=dim)
    if how == "abs":
        return attr.abs().sum(dim=dim)
    if how == "sum":
        return attr.sum(dim=dim)
    raise InputError(f"reduce must be one of {', '.join(REDUCTIONS)}; got {how!r}")


def first_component(contrib: Tensor, *, sign_correction: bool = True) -> Tensor:
    """Projection (B, h, w) of (B, C, h, w) ``contrib`` on its first principal component
    over the h*w positions (centered per channel), in float64; NaNs count as zero."""
    b, c, h, w = contrib.shape
    flat = torch.nan_to_num(contrib.detach()).reshape(b, c, h * w).transpose(1, 2).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    proj = (flat @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)
    if sign_correction:
        flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape(b, h, w).to(contrib.dtype)


def warn_if_zero(method: str, attr: Tensor, why: str) -> None:
    """A RuntimeWarning when some maps (B, K, ...) are zero everywhere (nothing to read);
    ``why`` says what that means for the method."""
    dead = int((attr.flatten(2).abs().amax(2) == 0).sum())
    if dead:
        warnings.warn(
            f"{method}: the attribution is zero everywhere for {dead} of "
            f"{attr.shape[0] * attr.shape[1]} maps ({why})",
            RuntimeWarning,
            stacklevel=4,
        )


def pixel_explanation(
    raw: Tensor,
    maps: Tensor,
    targets: Targets,
    outputs: Any,
    method: str,
    extras: dict[str, Any] | None = None,
) -> Explanation:
    """The :class:`Explanation` of a pixel method from ``raw`` (B, K, C, H, W) and unnormalized
    ``maps`` (B, K, H, W) (video: (B, K, C, T, H, W) and (B, K, T, H, W)); the K axis is
    dropped when one class per image was explained."""
    maps = normalize_maps(maps, dims=maps.dim() - 2)
    raw = raw.float()
    extras = dict(extras or {})
    if targets.per_image:
        raw, maps = raw[:, 0], maps[:, 0]
        b = raw.shape[0]
        extras = {
            k: v[:, 0] if isinstance(v, Tensor) and v.dim() >= 2 and v.shape[0] == b else v
            for k, v in extras.items()
        }
    return Explanation(
        maps=maps,
        raw=raw,
        targets=targets.public(),
        scores=detach_outputs(outputs),
        method=method,
        layer=None,
        extras=extras,
        output=targets.chosen,
    )
