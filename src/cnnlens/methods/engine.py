"""The method engine: the machinery every method family stands on.

Input checks and placement (:func:`prepare_input`), the fast CPU path (channels-last inputs,
a BatchNorm-folded private copy of the model: :class:`BatchedForward`), the resolution of
targets for rows of a batch (:func:`first_pass`, :func:`rows_targets`, :func:`row_scores`),
batch sizes, baselines broadcast to the input, channel reductions and the
:class:`~cnnlens.core.explanation.Explanation` of a pixel method.

Threads. A model may be explained from several threads at once (README, "Thread safety"):
the engine never patches process-wide state. The fast path's BatchNorm folding used to trace
the model with torch.fx, whose tracer replaces ``nn.Module.__call__`` for the whole process
while it runs, breaking any forward another thread runs meanwhile (a lock cannot help: the
other thread's code does not take it). :func:`folded_copy` instead finds the
convolution -> BatchNorm pairs with hooks on the private copy during one real forward, and
the copy is used only once it reproduces the model's outputs. It also leaves no reference
cycles (an fx GraphModule did), so a call's copy is freed when the call ends.

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
from cnnlens.core.maps import normalize_maps
from cnnlens.core.outputs import detach_outputs
from cnnlens.core.targets import TargetLike, Targets, resolve_targets
from cnnlens.errors import InputError, ModelError

log = logging.getLogger("cnnlens")

__all__ = [
    "LAYOUT_ERRORS",
    "REDUCTIONS",
    "BatchedForward",
    "batch_for",
    "broadcast_to_input",
    "channels_last_forward",
    "check_channels",
    "check_finite_input",
    "check_finite_outputs",
    "check_finite_result",
    "check_reduce",
    "detach_outputs",
    "explain_runtime_error",
    "first_component",
    "first_pass",
    "folded_copy",
    "input_gradients",
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


def prepare_input(x: Any, model: nn.Module, *, channels_last: bool = False) -> Tensor:
    """Check ``x`` and return a (B, C, H, W) (or video (B, C, T, H, W)) tensor on the model's
    device and dtype.

    With ``channels_last`` (a Keras model) ``x`` is (B, H, W, C) or (H, W, C) images, returned
    as a (B, C, H, W) view: the one place where the input layout of a Keras model is turned
    into the engine's (see :mod:`cnnlens.core.keras`).
    """
    if not isinstance(x, Tensor):
        want = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
        raise InputError(f"x must be a torch.Tensor of shape {want}, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if channels_last:
        if x.dim() != 4:
            raise InputError(
                f"x must have shape (B, H, W, C) or (H, W, C) for a Keras model, got "
                f"{tuple(x.shape)} (Keras video models are not supported)"
            )
        x = x.permute(0, 3, 1, 2)
    if x.dim() not in (4, 5):
        raise InputError(
            f"x must have shape (B, C, H, W), (C, H, W) or video (B, C, T, H, W), got "
            f"{tuple(x.shape)}"
        )
    if (
        x.dim() == 4
        and not channels_last
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
    check_finite_input(x)
    check_channels(model, x)
    device, dtype = model_device_dtype(model)
    if x.is_inference():
        x = x.clone()
    return x.to(device=device or x.device, dtype=dtype or torch.float32)


_CONVS_IN = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_channels(model: nn.Module, x: Tensor) -> None:
    """Refuse ``x`` when the model's first layer (the first module, in registration order,
    with parameters of its own) is a convolution taking another number of channels."""
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        want = getattr(module, "in_channels", 0) if isinstance(module, _CONVS_IN) else 0
        if want and x.dim() >= 2 and want != x.shape[1]:
            raise InputError(
                f"the model takes {want}-channel input (its first layer {name or 'model'!r}), "
                f"got {x.shape[1]} channels in x of shape {tuple(x.shape)}"
            )
        return


#: torch's words for shape and autograd errors a user's input or model causes, and the
#: one line cnnlens says instead (see :func:`explain_runtime_error`).
_RUNTIME_ERRORS: tuple[tuple[tuple[str, ...], type[Exception], str], ...] = (
    (
        (
            "Output size is too small",
            "can't be greater than actual input size",
            "smaller than kernel",
        ),
        InputError,
        "the input is too small for the model: x of size {size} shrinks to nothing in a layer",
    ),
    (
        ("channels, but got",),
        InputError,
        "x has {channels} channels, which a layer of the model does not take ({torch})",
    ),
    (
        ("leaf Variable that requires grad is being used in an in-place operation",),
        ModelError,
        "the model modifies its input in place; copy it first in forward (x = x.clone())",
    ),
    (
        ("does not require grad and does not have a grad_fn",),
        ModelError,
        "the model's outputs do not depend differentiably on x (does its forward run under "
        "torch.no_grad() or detach?); use a perturbation method such as occlusion or rise",
    ),
)


def explain_runtime_error(err: RuntimeError, x: Tensor) -> Exception | None:
    """A :class:`~cnnlens.errors.CnnlensError` saying in one line what a ``RuntimeError`` of
    torch during an explanation means for the user's input or model; None for any other."""
    text = str(err)
    for parts, kind, message in _RUNTIME_ERRORS:
        if any(p in text for p in parts):
            size = "x".join(str(int(s)) for s in x.shape[2:])
            first = text.strip().splitlines()[0][:160] if text.strip() else ""
            return kind(message.format(size=size, channels=x.shape[1], torch=first))
    return None


def check_finite_input(x: Tensor, name: str = "x") -> None:
    """Refuse an input holding NaN or an infinity: no explanation of it means anything."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        nan = int(torch.isnan(x).sum())
        raise InputError(
            f"{name} holds {bad} non-finite values of {x.numel()} ({nan} NaN, {bad - nan} "
            f"infinite); give a finite input (replace or drop those pixels)"
        )


def _nonfinite_parameter(model: nn.Module) -> str | None:
    """The name of the first parameter or buffer of ``model`` holding NaN or an infinity."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite_outputs(model: nn.Module, outputs: Any) -> None:
    """Refuse non-finite model outputs for the explained (finite) input, naming the parameter
    that holds NaN or an infinity when one does (e.g. a checkpoint with NaN weights).

    Raises:
        ModelError: ``outputs`` (a tensor) holds NaN or an infinity.
    """
    if not isinstance(outputs, Tensor) or not outputs.is_floating_point():
        return
    bad = int((~torch.isfinite(outputs.detach())).sum())
    if bad:
        culprit = _nonfinite_parameter(model)
        why = (
            f"its parameter {culprit!r} holds NaN or infinite values (broken weights?)"
            if culprit
            else "check the model for an overflow or a division by zero"
        )
        raise ModelError(
            f"the model's outputs for x hold {bad} non-finite values of {outputs.numel()}; {why}"
        )


def check_finite_result(model: nn.Module, exp: Explanation) -> Explanation:
    """Refuse a result computed from non-finite model outputs or gradients, naming which.

    Raises:
        ModelError: the model's outputs for the (finite) input hold NaN or an infinity (see
            :func:`check_finite_outputs`), or the attributions do (a gradient that
            overflowed or is NaN).
    """
    check_finite_outputs(model, exp.scores)
    bad = int((~torch.isfinite(exp.raw)).sum())
    if bad:
        what = "gradient" if exp.layer is None else "activations or gradient of the layer"
        raise ModelError(
            f"{exp.method}: the attributions hold {bad} non-finite values of "
            f"{exp.raw.numel()}: the {what} overflowed or is NaN although the outputs are "
            "finite; try a float32 model or another method"
        )
    return exp


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


def _strip_hooks(model: nn.Module) -> None:
    """Drop every hook of a private copy (the caller's hooks must not run on it)."""
    for module in model.modules():
        for hooks in (
            module._forward_hooks,
            module._forward_pre_hooks,
            module._backward_hooks,
            module._backward_pre_hooks,
        ):
            hooks.clear()


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _conv_norm_pairs(twin: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, str]]:
    """``(conv name, conv, norm name)`` for each BatchNorm whose input, in one forward of the
    private ``twin`` on ``x``, is the untouched output of a convolution; each module of a
    pair runs once per forward. Found with hooks on the twin alone, never by tracing."""
    produced: dict[int, tuple[str, Tensor, int]] = {}
    calls: dict[str, int] = {}
    pairs: dict[str, str] = {}
    handles = []

    def after_conv(name: str):
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, Tensor):
                produced[id(out)] = (name, out, out._version)

        return hook

    def before_norm(name: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
            if args and isinstance(args[0], Tensor) and id(args[0]) in produced:
                conv, out, version = produced[id(args[0])]
                if out is args[0] and out._version == version:
                    pairs[name] = conv

        return hook

    modules = dict(twin.named_modules())
    try:
        for name, m in modules.items():
            if isinstance(m, _CONVS):
                handles.append(m.register_forward_hook(after_conv(name)))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                handles.append(m.register_forward_pre_hook(before_norm(name)))
        with torch.no_grad():  # not inference mode: its tensors keep no version counter
            twin(x)
    finally:
        for h in handles:
            h.remove()
        produced.clear()
    return [
        (conv, modules[conv], norm)
        for norm, conv in pairs.items()
        if calls.get(conv) == 1 and calls.get(norm) == 1
    ]


@torch.no_grad()
def _fold_into(conv: nn.Module, norm: nn.Module) -> bool:
    """Fold an eval-mode BatchNorm into the convolution before it (in place), with
    $s = \\gamma/\\sqrt{\\sigma^2+\\epsilon}$: $w' = s\\,w$, $b' = s\\,(b-\\mu) + \\beta$.
    False when the shapes do not fit."""
    mean, var = norm.running_mean, norm.running_var
    if mean is None or var is None or mean.numel() != conv.out_channels:
        return False
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    w = conv.weight
    conv.weight = nn.Parameter(w * scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype))
    conv.bias = nn.Parameter(shift.to(w.dtype))
    return True


def folded_copy(model: nn.Module, x: Tensor | None = None) -> nn.Module | None:
    """A private copy of ``model`` with every BatchNorm folded into the convolution before it,
    parameters frozen, hooks dropped and weights stored channels-last; None when the model has
    no BatchNorm in eval mode, cannot be copied, or no BatchNorm directly follows a
    convolution.

    The pairs are found by one forward of the copy on ``x[:1]`` with hooks on the copy's own
    modules (see :func:`_conv_norm_pairs`), not by torch.fx: symbolic tracing patches
    ``nn.Module.__call__`` for the whole process while it runs, which breaks any forward
    another thread runs meanwhile, and leaves the traced graph in reference cycles. A pair
    found this way can still be wrong (the convolution's output also read elsewhere, as in a
    residual branch): :meth:`BatchedForward.check` drops a copy whose outputs differ.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or any(m.training for m in norms) or x is None:
        return None
    try:
        twin = copy.deepcopy(model)
    except Exception as err:  # an uncopyable model runs as it is
        log.debug("no BatchNorm folding for %s: %s", type(model).__name__, err)
        return None
    _strip_hooks(twin)
    for p in twin.parameters():
        p.requires_grad_(False)
    try:
        pairs = _conv_norm_pairs(twin, x[:1])
    except Exception as err:  # the private copy's forward failed: no fast copy
        log.debug("no BatchNorm folding for %s: %s", type(model).__name__, err)
        return None
    folded = 0
    for _conv_name, conv, norm_name in pairs:
        if _fold_into(conv, twin.get_submodule(norm_name)):
            parent, _, leaf = norm_name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, leaf, nn.Identity())
            folded += 1
    if not folded:
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
        self.fast: nn.Module | None = folded_copy(model, x) if self.channels_last and fold else None
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
    check_finite_outputs(forward.model, outputs)
    targets = resolve_targets(target, outputs, topk, batch=x.shape[0])
    forward.check(x, outputs)
    return outputs, targets


def input_gradients(
    scores: Tensor, leaf: Tensor, model: nn.Module, why: str, *, seeded: bool = False
) -> Tensor:
    """Gradients (B, K, ...) of each target's scores ``scores[:, k]`` (B, K) with respect to
    ``leaf``, one backward per target (the graph kept until the last); with ``seeded`` the
    backward starts from the scores themselves (LRP's relevance seed) instead of ones. A target
    the input does not reach gives zeros; scores without a graph are a ``ModelError`` whose
    line ends with ``why`` (what to use instead)."""
    if not scores.requires_grad:
        raise ModelError(
            f"the target scores of {type(model).__name__} do not depend differentiably on the "
            f"input{why}"
        )
    k_all = scores.shape[1]
    grads = []
    for k in range(k_all):
        seed = scores[:, k]
        (g,) = torch.autograd.grad(
            seed if seeded else seed.sum(),
            leaf,
            seed.detach() if seeded else None,
            retain_graph=k < k_all - 1,
            allow_unused=True,
        )
        grads.append(torch.zeros_like(leaf) if g is None else g)
    return torch.stack(grads, dim=1)


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
