"""Perturbation methods: occlusion and RISE.

A perturbation method asks the model many questions: "what is the score when this window is
grey?", "... when only these cells are visible?". Each question is one row of a batch; rows of
every image are packed into forwards of at most ``batch_size`` inputs, so memory is bounded by
that option whatever the number of windows or masks. The batched forward and the targets of
rows come from :mod:`cnnlens.methods.engine`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.checks import check_flag, check_float, check_int, check_optional_int, check_pair
from cnnlens.core.explanation import Explanation
from cnnlens.core.progress import progress_bar
from cnnlens.core.registry import register
from cnnlens.core.targets import TargetLike
from cnnlens.errors import InputError
from cnnlens.methods.base import Explainer
from cnnlens.methods.engine import (
    BatchedForward,
    batch_for,
    broadcast_to_input,
    first_pass,
    pixel_explanation,
    row_scores,
    warn_nonfinite,
)

__all__ = ["RISE", "Occlusion", "PerturbationMethod"]


class PerturbationMethod(Explainer):
    """Base of the black-box pixel methods: batched forwards of perturbed copies of the input.

    Args:
        model: the network; it is never changed.
        batch_size: the most inputs passed to the model in one forward (the memory bound);
            None: 8 on the CPU, 64 on an accelerator.
        progress: show a rich progress bar on stderr (off by default in the library).
        optimize: run the batched forwards on the fast CPU path (channels-last inputs, a
            BatchNorm-folded private copy of the model; see
            :class:`~cnnlens.methods.engine.BatchedForward`); None chooses it for float32 CNNs
            on the CPU, False runs the model exactly as it is.
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.
    """

    family: ClassVar[str] = "perturbation"

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
        forward = BatchedForward(self.model, x, self.optimize)
        outputs, targets = first_pass(forward, x, target, topk)
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
                scores = row_scores(targets, forward(occluded), img)
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
        self.p = check_float(
            "p (the keep probability)", p, minimum=0.0, strict_minimum=True, maximum=1.0
        )
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
        forward = BatchedForward(self.model, x, self.optimize)
        outputs, targets = first_pass(forward, x, target, topk)
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
                    out = forward(x[img] * mk.to(x.dtype))
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
