"""Perturbation methods (occlusion, RISE) and the batched-forward machinery they share.

A perturbation method asks the model many questions: "what is the score when this window is
grey?", "... when only these cells are visible?". Each question is one row of a batch; rows of
every image are packed into forwards of at most ``batch_size`` inputs, so memory is bounded by
that option whatever the number of windows or masks. The same machinery (option checks, the
forward runner, progress bars, the pixel :class:`Explanation`) serves integrated gradients,
SmoothGrad, Score-CAM and Ablation-CAM.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.explanation import Explanation
from cnnlens.core.progress import progress_bar
from cnnlens.core.registry import register
from cnnlens.core.targets import TargetLike, Targets, logits_of, resolve_targets
from cnnlens.errors import InputError
from cnnlens.methods.base import (
    Explainer,
    channels_last_forward,
    check_flag,
    normalize_maps,
    wants_optimize,
)

log = logging.getLogger("cnnlens")

__all__ = ["RISE", "Occlusion", "PerturbationMethod"]

# ---------------------------------------------------------------------------------------------
# Option checks
# ---------------------------------------------------------------------------------------------


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or an :class:`InputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_optional_int(name: str, value: Any, *, minimum: int = 1) -> int | None:
    return None if value is None else check_int(name, value, minimum=minimum)


def check_pair(name: str, value: Any) -> tuple[int, int]:
    """An int or an (h, w) pair of positive ints."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair)
    ):
        raise InputError(
            f"{name} must be a positive integer or an (h, w) pair of them, got {value!r}"
        )
    return int(pair[0]), int(pair[1])


def batch_for(x: Tensor, batch_size: int | None) -> int:
    """``batch_size``, or the default for ``x``'s device: 8 on the CPU (on the 2-core
    reference machine, resnet18 and resnet50 ran Score-CAM, occlusion and RISE 8-20% faster
    in batches of 8 than of 16, 32 or 64), 64 on an accelerator."""
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
# Batched forwards
# ---------------------------------------------------------------------------------------------


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


class Runner:
    """Runs the batched forwards of one explain call, on a fast path when asked.

    With ``optimize`` (None: automatic, see :func:`wants_optimize`) the inputs are fed in the
    channels-last memory format, whose oneDNN kernels run a CNN forward 1.3-1.5x faster and
    a forward + backward about 2x faster on the CPU, and, when ``fold`` is set, through a
    private copy of the model with each BatchNorm folded into the convolution before it
    (:func:`folded_copy`; another 1.1-1.2x). The caller's model is not touched. The copy is
    used only after :meth:`check` has seen it reproduce the model's outputs; values agree
    with the plain path to float32 rounding (gradients can differ where a ReLU input sits
    within rounding of zero). When the model's forward refuses channels-last inputs (a
    ``.view`` on a channels-last activation raises a stride error), the rest of the call
    uses the default layout; any other error is raised as it is.
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


def rows_targets(targets: Targets, rows: Tensor) -> Targets:
    """The targets of a batch whose row ``i`` is a variant of image ``rows[i]``."""
    return Targets(targets.indices[rows.to(targets.indices.device)], targets.fn, targets.per_image)


def row_scores(targets: Targets, outputs: Any, rows: Tensor, *, softmax: bool = False) -> Tensor:
    """Scores (n, K) of the targets for a batch of rows; class probabilities with ``softmax``.

    A callable target is applied to the rows' outputs and must return one score per row.
    """
    sub = rows_targets(targets, rows)
    if softmax and sub.fn is None:
        probs = logits_of(outputs).float().softmax(dim=1)
        return probs.gather(1, sub.indices.to(probs.device))
    return sub.scores(outputs).float()


def first_pass(
    runner: Runner, x: Tensor, target: TargetLike, topk: int | None
) -> tuple[Any, Targets]:
    """The model's own outputs for ``x`` (no graph) and the resolved targets; the runner's
    fast path is checked against them."""
    with torch.no_grad():
        outputs = runner.model(x)
    targets = resolve_targets(target, outputs, topk, batch=x.shape[0])
    runner.check(x, outputs)
    return outputs, targets


def detach_outputs(outputs: Any) -> Any:
    return outputs.detach() if isinstance(outputs, Tensor) else outputs


def warn_nonfinite(method: str, bad: int, total: int, what: str) -> None:
    if bad:
        warnings.warn(
            f"{method}: the model returned non-finite scores for {bad} of {total} {what}; "
            "the map is computed from the finite ones",
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
    ``maps`` (B, K, H, W); the K axis is dropped when one class per image was explained."""
    maps = normalize_maps(maps)
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
    )


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


class PerturbationMethod(Explainer):
    """Base of the black-box pixel methods: batched forwards of perturbed copies of the input.

    Args:
        model: the network; it is never changed.
        batch_size: the most inputs passed to the model in one forward (the memory bound);
            None: 8 on the CPU, 64 on an accelerator.
        progress: show a rich progress bar on stderr (off by default in the library).
        optimize: run the batched forwards on the fast CPU path (channels-last inputs, a
            BatchNorm-folded private copy of the model; see :class:`Runner`); None chooses it
            for float32 CNNs on the CPU, False runs the model exactly as it is.
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int | None = None,
        progress: bool = False,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        self.batch_size = check_optional_int("batch_size", batch_size)
        self.progress = bool(progress)
        self.optimize = check_flag("optimize", optimize)


@register("occlusion")
class Occlusion(PerturbationMethod):
    """Occlusion (Zeiler & Fergus, 2014, arXiv:1311.2901).

    A window of ``baseline`` values slides over the image with ``stride`` (covering every
    channel); each pixel's attribution is the mean, over the windows that cover it, of the
    drop in the target score:

    $$a_{ij} = \\frac{1}{|W_{ij}|}\\sum_{w \\in W_{ij}}
    \\big(f_c(x) - f_c(x_{w \\leftarrow b})\\big)$$

    Window positions are ``0, s, 2s, ...`` along each axis, ``ceil((H - h) / s) + 1`` of them,
    the last one cropped at the border, exactly as captum's ``Occlusion`` with a window
    spanning all channels.

    Args:
        model: the network.
        window: window size, an int or (h, w); it must fit in the image.
        stride: step between windows, an int or (h, w), at most the window; default half
            the window.
        baseline: the value inside the window: a number, or a tensor broadcastable to the
            input, e.g. (C, 1, 1) per-channel means or a (C, H, W) blurred image.
        batch_size, progress, optimize, eval_mode: see :class:`PerturbationMethod`.

    ``raw`` is (B[, K], C, H, W) with the same value on every channel.

    Example:
        >>> Occlusion(model, window=16, stride=8)(x, target=3).maps    # doctest: +SKIP
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"window": 8, "stride": 4, "batch_size": 256},
        "tiny": {"window": 14, "stride": 14, "batch_size": 250},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] | None = None,
        baseline: float | Tensor = 0.0,
        batch_size: int | None = None,
        progress: bool = False,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(
            model,
            batch_size=batch_size,
            progress=progress,
            optimize=optimize,
            eval_mode=eval_mode,
        )
        self.window = check_pair("window", window)
        self.stride = (
            tuple(max(1, w // 2) for w in self.window)
            if stride is None
            else check_pair("stride", stride)
        )
        self.baseline = baseline

    def _positions(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        starts = []
        for axis, (dim, win, step) in enumerate(zip(size, self.window, self.stride)):
            if win > dim:
                raise InputError(
                    f"window {self.window} does not fit in the {size[0]}x{size[1]} image "
                    f"(axis {axis}: {win} > {dim}); give a window of at most the image size"
                )
            if step > win and win < dim:
                raise InputError(
                    f"stride {self.stride} is larger than window {self.window}, so some pixels "
                    "would never be occluded; give a stride of at most the window"
                )
            starts.append(torch.arange(math.ceil((dim - win) / step) + 1) * step)
        return starts[0], starts[1]

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        b, c, h, w = x.shape
        ys, xs = self._positions((h, w))
        base = broadcast_to_input("baseline", self.baseline, x)
        runner = Runner(self.model, x, self.optimize)
        outputs, targets = first_pass(runner, x, target, topk)
        fx = row_scores(targets, outputs, torch.arange(b, device=x.device))  # (B, K)
        k = targets.k
        dev = x.device
        total = torch.zeros(b, k, h, w, device=dev)
        count = torch.zeros(b, k, h, w, device=dev)
        n_pos = len(ys) * len(xs)
        n_rows = b * n_pos
        ys, xs = ys.to(dev), xs.to(dev)
        yy = torch.arange(h, device=dev).view(1, h, 1)
        xx = torch.arange(w, device=dev).view(1, 1, w)
        bad, bs = 0, batch_for(x, self.batch_size)
        with (
            progress_bar(self.progress, n_rows, "occlusion", transient=True) as bar,
            torch.inference_mode(),
        ):
            for start in range(0, n_rows, bs):
                idx = torch.arange(start, min(start + bs, n_rows), device=dev)
                img, pos = idx // n_pos, idx % n_pos
                y0 = ys[pos // len(xs)].view(-1, 1, 1)
                x0 = xs[pos % len(xs)].view(-1, 1, 1)
                inside = (yy >= y0) & (yy < y0 + self.window[0])
                inside = (inside & (xx >= x0) & (xx < x0 + self.window[1])).unsqueeze(1)
                occluded = torch.where(inside, base[img], x[img])
                scores = row_scores(targets, runner(occluded), img)
                drop = fx[img] - scores
                finite = torch.isfinite(drop)
                bad += int((~finite).any(dim=1).sum())
                drop = torch.where(finite, drop, torch.zeros_like(drop))
                cover = inside.float()  # (n, 1, h, w)
                total.index_add_(0, img, drop[:, :, None, None] * cover)
                count.index_add_(0, img, finite.float()[:, :, None, None] * cover)
                bar.advance(len(idx))
        warn_nonfinite(self.name, bad, n_rows, "occluded inputs")
        attr = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
        raw = attr.unsqueeze(2).expand(b, k, c, h, w).clone()
        return pixel_explanation(raw, attr, targets, outputs, self.name)


@register("rise")
class RISE(PerturbationMethod):
    """RISE, randomized input sampling for explanation (Petsiuk et al., 2018, arXiv:1806.07421).

    ``n_masks`` random masks ``M_i`` are made by drawing a coarse grid of cells of
    ``cell_size`` pixels, each kept with probability ``p``, upsampling it bilinearly to
    ``(grid + 1) * cell_size`` and cropping the image size at a random shift of less than one
    cell. The grid drawn has one cell more than the image needs in each direction, so every
    cell is exactly ``cell_size`` pixels; the paper stretches an s x s grid over s + 1 cells
    instead (cells about 1/s larger). The map is the score-weighted mean of the masks:

    $$S_c = \\frac{1}{N\\,p}\\sum_{i=1}^{N} f_c(x \\odot M_i)\\, M_i$$

    with ``f_c`` the class probability (softmax of the logits; ``probabilities=False`` uses
    the raw output, and a callable target its own score). Masks are drawn on the input's
    device from a local generator seeded with ``seed`` (the global RNG is untouched), in
    blocks whose size does not depend on ``batch_size``, and they are shared by every image,
    so the result is the same batched or image by image. Masked inputs whose score is not
    finite are left out of the sum and of ``N``, with a warning.

    Args:
        model: the network.
        n_masks: number of masks N (the paper uses 4000 for ImageNet CNNs).
        cell_size: cell size in pixels; default ``ceil(max(H, W) / 7)`` (the image covered
            by a 7x7 grid, the paper's grid size).
        p: probability that a cell is kept.
        seed: seed of the mask generator.
        probabilities: weight the masks by softmax probabilities (the paper) rather than
            raw scores.
        batch_size, progress, optimize, eval_mode: see :class:`PerturbationMethod`.

    Example:
        >>> RISE(model, n_masks=2000, seed=0)(x).maps                  # doctest: +SKIP
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_masks": 500, "batch_size": 250},
        "tiny": {"n_masks": 64, "batch_size": 250},
    }

    mask_block: ClassVar[int] = 64

    def __init__(
        self,
        model: nn.Module,
        *,
        n_masks: int = 4000,
        cell_size: int | None = None,
        p: float = 0.5,
        seed: int = 0,
        probabilities: bool = True,
        batch_size: int | None = None,
        progress: bool = False,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(
            model,
            batch_size=batch_size,
            progress=progress,
            optimize=optimize,
            eval_mode=eval_mode,
        )
        self.n_masks = check_int("n_masks", n_masks)
        self.cell_size = check_optional_int("cell_size", cell_size)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise InputError(f"p (the keep probability) must be in (0, 1], got {p!r}")
        self.p = float(p)
        self.seed = check_int("seed", seed, minimum=0)
        self.probabilities = bool(probabilities)

    def masks(self, size: tuple[int, int], device: torch.device | str = "cpu") -> Iterator[Tensor]:
        """The masks, (n, H, W) float32 blocks in [0, 1], drawn from a generator seeded anew."""
        h, w = size
        cell = self.cell_size or math.ceil(max(h, w) / 7)
        gh, gw = math.ceil(h / cell), math.ceil(w / cell)
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        rows = torch.arange(h, device=device)
        cols = torch.arange(w, device=device)
        for start in range(0, self.n_masks, self.mask_block):
            n = self.mask_block
            grid = (torch.rand(n, 1, gh + 1, gw + 1, generator=gen, device=device) < self.p).float()
            up = F.interpolate(
                grid, size=((gh + 1) * cell, (gw + 1) * cell), mode="bilinear", align_corners=False
            )[:, 0]
            dy = torch.randint(0, cell, (n,), generator=gen, device=device)
            dx = torch.randint(0, cell, (n,), generator=gen, device=device)
            sel = torch.arange(n, device=device).view(n, 1, 1)
            masks = up[sel, (dy[:, None] + rows)[:, :, None], (dx[:, None] + cols)[:, None, :]]
            yield masks[: min(n, self.n_masks - start)]

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        b, c, h, w = x.shape
        dev = x.device
        runner = Runner(self.model, x, self.optimize)
        outputs, targets = first_pass(runner, x, target, topk)
        k = targets.k
        total = torch.zeros(b, k, h, w, device=dev)
        valid = torch.zeros(b, k, device=dev)
        softmax = self.probabilities and targets.fn is None
        bad, bs = 0, batch_for(x, self.batch_size)
        with (
            progress_bar(self.progress, b * self.n_masks, "rise", transient=True) as bar,
            torch.inference_mode(),
        ):
            for masks in self.masks((h, w), dev):
                n_rows = b * masks.shape[0]
                for start in range(0, n_rows, bs):
                    idx = torch.arange(start, min(start + bs, n_rows), device=dev)
                    img, m = idx % b, idx // b
                    mk = masks[m].unsqueeze(1)  # (n, 1, H, W)
                    out = runner(x[img] * mk.to(x.dtype))
                    scores = row_scores(targets, out, img, softmax=softmax)
                    finite = torch.isfinite(scores)
                    bad += int((~finite).any(dim=1).sum())
                    scores = torch.where(finite, scores, torch.zeros_like(scores))
                    total.index_add_(0, img, scores[:, :, None, None] * mk)
                    valid.index_add_(0, img, finite.float())
                    bar.advance(len(idx))
        warn_nonfinite(self.name, bad, b * self.n_masks, "masked inputs")
        sal = total / (valid * self.p).clamp(min=torch.finfo(torch.float32).tiny)[:, :, None, None]
        raw = sal.unsqueeze(2).expand(b, k, c, h, w).clone()
        return pixel_explanation(raw, sal, targets, outputs, self.name)
