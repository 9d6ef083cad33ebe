"""Shared plumbing of the metrics: input checks, targets, probabilities, batched forwards.

Everything here speaks torch on the model's device. Inputs a user can get wrong (maps with
NaN, masks of the wrong size or not binary, targets out of range) raise
:class:`cnnlens.errors.InputError` / :class:`cnnlens.errors.TargetError` before any work
is done, so nothing is half-computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import frozen
from cnnlens.core.checks import check_int
from cnnlens.core.device import model_device  # noqa: F401  (re-exported for the metrics)
from cnnlens.core.targets import resolve_targets
from cnnlens.errors import InputError, TargetError

Activation = Literal["softmax", "sigmoid"] | None
ACTIVATIONS = ("softmax", "sigmoid", None)


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, frozen parameters and no autograd; every flag restored on exit
    (:func:`cnnlens.core.capture.frozen` plus ``torch.no_grad``)."""
    with frozen(model), torch.no_grad():
        yield model


def fast_forward(model: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
    """``model``'s forward for batches like ``x`` on cnnlens' fast CPU path (channels-last
    inputs, BatchNorm folded into a private copy; see
    :class:`cnnlens.methods.engine.BatchedForward`), kept only once it has reproduced the
    model's outputs on ``x``; the plain forward elsewhere. Call it inside :func:`frozen_eval`.
    """
    from cnnlens.methods.engine import BatchedForward

    forward = BatchedForward(model, x, optimize=None)
    forward.check(x, model(x))
    return lambda batch: forward.forward(batch)[1]


def check_activation(activation: Activation) -> None:
    if activation not in ACTIVATIONS:
        raise InputError(f"activation must be 'softmax', 'sigmoid' or None, got {activation!r}")


def probabilities(logits: Tensor, activation: Activation) -> Tensor:
    """Class probabilities (B, N) in float32: softmax (single-label), sigmoid (multi-label)
    or the raw scores (``None``)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InputError(f"the model must return class scores of shape (B, N), got {shape}")
    logits = logits.float()
    if activation == "softmax":
        return logits.softmax(dim=1)
    if activation == "sigmoid":
        return logits.sigmoid()
    return logits


def check_images(x: Tensor, name: str = "x") -> Tensor:
    """Finite images as (B, C, H, W); a single (C, H, W) image gains a batch axis."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a tensor (B, C, H, W), got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise InputError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise InputError(
            f"{name} holds {bad} non-finite values (NaN or infinite) of {x.numel()}; "
            "a metric of such images means nothing"
        )
    return x


def check_maps(maps: Tensor, batch: int | None = None, name: str = "maps") -> Tensor:
    """Maps as float (B, H, W): accepts (H, W), (B, H, W) and (B, 1, H, W).

    Raises:
        InputError: for another shape, a batch size that differs from the images', or
            NaN / infinite values.
    """
    if not isinstance(maps, Tensor):
        raise InputError(f"{name} must be a tensor (B, H, W), got {type(maps).__name__}")
    if maps.dim() == 2:
        maps = maps.unsqueeze(0)
    elif maps.dim() == 4:
        if maps.shape[1] != 1:
            raise InputError(
                f"{name} must be one map per image, (B, H, W); got {tuple(maps.shape)}: "
                f"select one target's maps (e.g. exp.maps[:, 0]) or reduce the channels"
            )
        maps = maps[:, 0]
    elif maps.dim() != 3:
        raise InputError(f"{name} must have shape (B, H, W), got {tuple(maps.shape)}")
    if batch is not None and maps.shape[0] != batch:
        if maps.shape[0] == 1:
            maps = maps.expand(batch, -1, -1)
        else:
            raise InputError(
                f"{name} has {maps.shape[0]} maps but there are {batch} images; give one map "
                f"per image"
            )
    maps = maps.float() if not maps.is_floating_point() else maps
    bad = ~torch.isfinite(maps).flatten(1).all(dim=1)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        raise InputError(f"{name} contain NaN or infinite values (image(s) {idx[:10]})")
    return maps


def check_masks(masks: Tensor, maps: Tensor, name: str = "masks") -> Tensor:
    """Ground-truth masks as bool (B, H, W) matching ``maps`` (B, H, W).

    Accepts bool or 0/1 numbers, shape (H, W) (shared by the batch), (B, H, W) or
    (B, 1, H, W). Warns about empty masks (their scores are NaN).

    Raises:
        InputError: for a size that differs from the maps' or values other than 0 and 1.
    """
    if not isinstance(masks, Tensor):
        raise InputError(f"{name} must be a tensor (B, H, W), got {type(masks).__name__}")
    batch, h, w = maps.shape
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() == 2:
        masks = masks.unsqueeze(0)
    if masks.dim() != 3 or tuple(masks.shape[1:]) != (h, w):
        raise InputError(f"{name} must have the maps' size (B, {h}, {w}), got {tuple(masks.shape)}")
    if masks.shape[0] not in (1, batch):
        raise InputError(f"{name} has {masks.shape[0]} masks but there are {batch} maps")
    if masks.dtype != torch.bool:
        if masks.is_complex() or not bool(((masks == 0) | (masks == 1)).all()):
            raise InputError(f"{name} must be binary (bool or 0/1 values), got other values")
        masks = masks != 0
    masks = masks.to(maps.device).expand(batch, h, w)
    empty = ~masks.flatten(1).any(dim=1)
    if bool(empty.any()):
        idx = empty.nonzero().flatten().tolist()
        warnings.warn(
            f"{name}: empty ground-truth mask for image(s) {idx[:10]}; their scores are NaN",
            stacklevel=3,
        )
    return masks


def mask_inputs(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Checked maps and masks, one row per image: the maps float64 (B, H*W), the masks
    bool (B, H*W), and which masks are empty, bool (B,) (see :func:`check_masks`)."""
    maps = check_maps(maps)
    masks = check_masks(masks, maps)
    empty = ~masks.flatten(1).any(dim=1)
    return maps.flatten(1).double(), masks.flatten(1), empty


def nan_where(values: Tensor, empty: Tensor) -> Tensor:
    """``values`` as float32 with NaN where ``empty`` (the images with an empty mask)."""
    return torch.where(empty, torch.full_like(values, float("nan")), values).float()


def fit_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps resized bilinearly (align_corners=False) to the images' ``size`` if needed."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(
        maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False
    ).squeeze(1)


def resolve_class_targets(target: object, logits: Tensor) -> Tensor:
    """One class index per image, long (B,), from None (top class) | int | sequence | (B,)."""
    if callable(target) and not isinstance(target, Tensor):
        raise TargetError(
            "metrics need one class index per image (None, an int or a sequence), "
            "not a callable target"
        )
    resolved = resolve_targets(target, logits)
    if not resolved.per_image or resolved.k != 1:
        raise TargetError(
            f"metrics need one class index per image, shape ({logits.shape[0]},); "
            f"got {tuple(resolved.indices.shape)}"
        )
    return resolved.indices[:, 0].to(logits.device)


def batched_target_probs(
    model: nn.Module,
    make_batch: Iterator[tuple[Tensor, Tensor]],
    activation: Activation,
) -> Tensor:
    """Run ``model`` on each (inputs, class indices) chunk; the target's probability per row.

    The caller wraps this in :func:`frozen_eval`.
    """
    out = []
    for inputs, classes in make_batch:
        probs = probabilities(model(inputs), activation)
        out.append(probs.gather(1, classes.view(-1, 1)).squeeze(1))
    return torch.cat(out) if out else torch.empty(0)


def check_batch_size(batch_size: int) -> None:
    check_int("batch_size", batch_size)


def check_fractions(fractions: Sequence[float] | Tensor, name: str = "fractions") -> Tensor:
    """Fractions as a sorted float64 1-D CPU tensor with values in [0, 1]."""
    f = torch.as_tensor(fractions, dtype=torch.float64).flatten()
    if f.numel() == 0 or not bool(((f >= 0) & (f <= 1)).all()):
        raise InputError(f"{name} must be values in [0, 1], got {f.tolist()}")
    if not bool((f[1:] > f[:-1]).all()):
        raise InputError(f"{name} must be strictly increasing, got {f.tolist()}")
    return f


def order_ranks(maps: Tensor, descending: bool = True) -> Tensor:
    """Rank of each pixel, long (B, H*W): 0 for the first pixel to perturb.

    A stable sort, so tied pixels are taken in raster order.
    """
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=descending, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


# --- re-explaining perturbed inputs (robustness, continuity)

ExplainFn = Callable[[Tensor, Tensor], Tensor]


class MethodExplainer:
    """A registered method bound to a model and options: ``explainer(x, target) -> maps``.

    :meth:`with_model` binds the same method and options to another model (a randomized
    copy, for the randomization metrics).
    """

    def __init__(self, model: nn.Module, method: str, options: Mapping[str, Any] | None = None):
        self.model = model
        self.method = method
        self.options = dict(options or {})

    def __call__(self, x: Tensor, target: Tensor) -> Tensor:
        return self.with_scores(x, target)[0]

    def with_scores(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor | None]:
        """The maps and the model's (B, N) outputs of the same forward pass in eval mode,
        so a metric that needs both runs the model once; the outputs are None when they are
        not such a tensor or the method runs the model in train mode."""
        from cnnlens.api import explain as run

        exp = run(self.model, x, method=self.method, target=target, **self.options)
        maps = exp.maps
        if maps.dim() == 4:  # one class per row was asked; be lenient with (B, 1, H, W)
            maps = maps[:, 0]
        scores = exp.scores
        usable = (
            isinstance(scores, Tensor)
            and scores.dim() == 2
            and scores.shape[0] == x.shape[0]
            and self.options.get("eval_mode", True)
            and exp.output in (None, "tensor")
        )
        return maps.detach().float(), scores.detach() if usable else None

    def with_model(self, model: nn.Module) -> MethodExplainer:
        """The same method and options on ``model``."""
        return MethodExplainer(model, self.method, self.options)


def explainer(
    model: nn.Module, explain: str | ExplainFn, options: Mapping[str, Any] | None = None
) -> ExplainFn:
    """``explain`` as a function ``(x, target) -> maps``: a registry name runs
    :func:`cnnlens.explain` with ``options`` (a :class:`MethodExplainer`); a callable is used
    as is (without options)."""
    if isinstance(explain, str):
        return MethodExplainer(model, explain, options)
    if callable(explain):
        if options:
            raise InputError(
                f"options {sorted(options)} are for a registered method; an explain "
                "function takes none (bind them with functools.partial)"
            )
        return explain
    raise InputError(
        f"explain must be a method name or a callable explain(x, target) -> maps, "
        f"got {type(explain).__name__}"
    )
