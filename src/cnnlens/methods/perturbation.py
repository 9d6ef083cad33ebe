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

from cnnlens.core.checks import (
    check_flag,
    check_float,
    check_int,
    check_optional_int,
    check_sides,
)
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

    Video input (B, C, T, H, W): the window is a (t, h, w) box over frames and pixels and
    the map is (B, T, H, W). A window given as an int or (h, w) spans every frame (the same
    region hidden in the whole clip: the map says where, equal in every frame); a (t, h, w)
    window also says when. The temporal stride is the third of a (t, h, w) ``stride``, else
    half the window's ``t``.

    Args:
        model: the network.
        window: window size, an int, (h, w), or (t, h, w) for a video; it must fit in the
            input.
        stride: step between windows, an int, (h, w) or (t, h, w), at most the window;
            default half the window.
        baseline: the value inside the window: a number, or a tensor broadcastable to the
            input, e.g. (C, 1, 1) per-channel means or a (C, H, W) blurred image.
        batch_size, progress, optimize, eval_mode: see :class:`PerturbationMethod`.

    ``raw`` is (B[, K], C, H, W) (video (B[, K], C, T, H, W)) with the same value on every
    channel.

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
        window: int | tuple[int, ...] = 16,
        stride: int | tuple[int, ...] | None = None,
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
        self.window = check_sides("window", window)
        self.stride = None if stride is None else check_sides("stride", stride)
        self.baseline = baseline

    def sides(self, size: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(window, stride)`` over the input's ``size``, (H, W) or a video's (T, H, W)."""
        window, stride = self.window, self.stride
        if len(window) == 3 and len(size) == 2:
            raise InputError(
                f"window {window} is a (t, h, w) box for video input (B, C, T, H, W); the "
                "input is images: give an int or (h, w)"
            )
        if len(size) == 3 and len(window) == 2:
            window = (size[0], *window)  # the whole clip: where, not when
        if stride is None:
            return window, tuple(max(1, w // 2) for w in window)
        if len(stride) == 3 and len(window) == 2:
            raise InputError(f"stride {stride} is (t, h, w) but the input is images")
        if len(stride) < len(window):
            stride = (max(1, window[0] // 2), *stride)
        return window, stride

    def _positions(self, size: tuple[int, ...]) -> list[Tensor]:
        window, stride = self.sides(size)
        starts = []
        shown = "x".join(str(d) for d in size)
        for axis, (dim, win, step) in enumerate(zip(size, window, stride)):
            if win > dim:
                raise InputError(
                    f"window {window} does not fit in the {shown} input "
                    f"(axis {axis}: {win} > {dim}); give a window of at most the input size"
                )
            if step > win and win < dim:
                raise InputError(
                    f"stride {stride} is larger than window {window}, so some pixels "
                    "would never be occluded; give a stride of at most the window"
                )
            starts.append(torch.arange(math.ceil((dim - win) / step) + 1) * step)
        return starts

    @staticmethod
    def _inside(
        pos: Tensor, starts: list[Tensor], window: tuple[int, ...], size: tuple[int, ...]
    ) -> Tensor:
        """Boolean masks (n, 1, *size) of the windows at flat positions ``pos`` (the last
        axis runs fastest)."""
        nd = len(size)
        inside = torch.ones((len(pos), *size), dtype=torch.bool, device=pos.device)
        rest = pos
        for axis in reversed(range(nd)):
            at = starts[axis][rest % len(starts[axis])].view(-1, *[1] * nd)
            rest = rest // len(starts[axis])
            shape = [1] * (nd + 1)
            shape[axis + 1] = size[axis]
            coord = torch.arange(size[axis], device=pos.device).view(shape)
            inside &= (coord >= at) & (coord < at + window[axis])
        return inside.unsqueeze(1)

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        b, c = x.shape[:2]
        size = tuple(int(d) for d in x.shape[2:])  # (H, W), or (T, H, W) for a video
        nd = len(size)
        window, _ = self.sides(size)
        dev = x.device
        starts = [s.to(dev) for s in self._positions(size)]
        base = broadcast_to_input("baseline", self.baseline, x)
        forward = BatchedForward(self.model, x, self.optimize)
        outputs, targets = first_pass(forward, x, target, topk)
        fx = row_scores(targets, outputs, torch.arange(b, device=dev))  # (B, K)
        k = targets.k
        total = torch.zeros(b, k, *size, device=dev)
        count = torch.zeros(b, k, *size, device=dev)
        n_pos = math.prod(len(s) for s in starts)
        n_rows = b * n_pos
        bad, bs = 0, batch_for(x, self.batch_size)
        with (
            progress_bar(self.progress, n_rows, "occlusion", transient=True) as bar,
            torch.inference_mode(),
        ):
            for start in range(0, n_rows, bs):
                idx = torch.arange(start, min(start + bs, n_rows), device=dev)
                img, pos = idx // n_pos, idx % n_pos
                inside = self._inside(pos, starts, window, size)  # (n, 1, *size)
                occluded = torch.where(inside, base[img], x[img])
                scores = row_scores(targets, forward(occluded), img)
                drop = fx[img] - scores
                finite = torch.isfinite(drop)
                bad += int((~finite).any(dim=1).sum())
                drop = torch.where(finite, drop, torch.zeros_like(drop))
                cover = inside.float()  # (n, 1, *size)
                per = (len(idx), k, *[1] * nd)
                total.index_add_(0, img, drop.view(per) * cover)
                count.index_add_(0, img, finite.float().view(per) * cover)
                bar.advance(len(idx))
        warn_nonfinite(self.name, bad, n_rows, "occluded inputs")
        attr = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
        raw = attr.unsqueeze(2).expand(b, k, c, *size).clone()
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

    Video input (B, C, T, H, W): the masks are 3-D, drawn the same way over (t, h, w) (a
    coarse grid of cells of ``cell_frames`` frames by ``cell_size`` pixels, upsampled
    trilinearly and cropped at a random shift in time and space), so the map (B, T, H, W)
    says when as well as where. (2-D masks shared by every frame would only say where; masks
    drawn for each frame independently would break the smoothness in time that a cell
    gives.)

    Args:
        model: the network.
        n_masks: number of masks N (the paper uses 4000 for ImageNet CNNs).
        cell_size: cell size in pixels; default ``ceil(max(H, W) / 7)`` (the image covered
            by a 7x7 grid, the paper's grid size).
        cell_frames: for a video, cell length in frames; default ``ceil(T / 7)`` (the
            clip covered by 7 cells, as each image side).
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
        cell_frames: int | None = None,
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
        self.cell_frames = check_optional_int("cell_frames", cell_frames)
        self.p = check_float(
            "p (the keep probability)", p, minimum=0.0, strict_minimum=True, maximum=1.0
        )
        self.seed = check_int("seed", seed, minimum=0)
        self.probabilities = bool(probabilities)

    def masks(self, size: tuple[int, ...], device: torch.device | str = "cpu") -> Iterator[Tensor]:
        """The masks, (n, H, W) (video: (n, T, H, W)) float32 blocks in [0, 1], drawn from a
        generator seeded anew."""
        cell = self.cell_size or math.ceil(max(size[-2:]) / 7)
        cells = (cell, cell)
        if len(size) == 3:
            cells = (self.cell_frames or math.ceil(size[0] / 7), cell, cell)
        grid = [math.ceil(d / c) + 1 for d, c in zip(size, cells)]  # one cell more per axis
        mode = "trilinear" if len(size) == 3 else "bilinear"
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        ranges = [torch.arange(d, device=device) for d in size]
        for start in range(0, self.n_masks, self.mask_block):
            n = self.mask_block
            drawn = (torch.rand(n, 1, *grid, generator=gen, device=device) < self.p).float()
            up = F.interpolate(
                drawn, size=[g * c for g, c in zip(grid, cells)], mode=mode, align_corners=False
            )[:, 0]
            shifts = [torch.randint(0, c, (n,), generator=gen, device=device) for c in cells]
            index: list[Tensor] = [torch.arange(n, device=device).view(n, *[1] * len(size))]
            for axis, (shift, r) in enumerate(zip(shifts, ranges)):
                shape = [n] + [1] * len(size)
                shape[axis + 1] = size[axis]
                index.append((shift[:, None] + r).view(shape))
            yield up[tuple(index)][: min(n, self.n_masks - start)]

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        b, c = x.shape[:2]
        size = tuple(int(d) for d in x.shape[2:])  # (H, W), or (T, H, W) for a video
        dev = x.device
        forward = BatchedForward(self.model, x, self.optimize)
        outputs, targets = first_pass(forward, x, target, topk)
        k = targets.k
        total = torch.zeros(b, k, *size, device=dev)
        valid = torch.zeros(b, k, device=dev)
        softmax = self.probabilities and targets.fn is None
        ones = [1] * len(size)
        bad, bs = 0, batch_for(x, self.batch_size)
        with (
            progress_bar(self.progress, b * self.n_masks, "rise", transient=True) as bar,
            torch.inference_mode(),
        ):
            for masks in self.masks(size, dev):
                n_rows = b * masks.shape[0]
                for start in range(0, n_rows, bs):
                    idx = torch.arange(start, min(start + bs, n_rows), device=dev)
                    img, m = idx % b, idx // b
                    mk = masks[m].unsqueeze(1)  # (n, 1, *size)
                    out = forward(x[img] * mk.to(x.dtype))
                    scores = row_scores(targets, out, img, softmax=softmax)
                    finite = torch.isfinite(scores)
                    bad += int((~finite).any(dim=1).sum())
                    scores = torch.where(finite, scores, torch.zeros_like(scores))
                    total.index_add_(0, img, scores.view(len(idx), k, *ones) * mk)
                    valid.index_add_(0, img, finite.float())
                    bar.advance(len(idx))
        warn_nonfinite(self.name, bad, b * self.n_masks, "masked inputs")
        norm = (valid * self.p).clamp(min=torch.finfo(torch.float32).tiny)
        sal = total / norm.view(b, k, *ones)
        raw = sal.unsqueeze(2).expand(b, k, c, *size).clone()
        return pixel_explanation(raw, sal, targets, outputs, self.name)
