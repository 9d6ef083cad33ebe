"""Smoothed Score-CAMs: SS-CAM (noisy masks) and IS-CAM (masks scaled along a path).

Both subclass :class:`~cnnlens.methods.score_cam.ScoreCAM` (its options, layer handling,
per-call weight cache and fast forward path) and replace only how a channel's score is
measured: the mean of ``n_samples`` masked forwards instead of one. Rows (image, channel,
sample) are packed into forwards of at most ``batch_size`` inputs.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.checks import check_float, check_int
from cnnlens.core.layers import LayersLike
from cnnlens.core.progress import progress_bar
from cnnlens.core.registry import register
from cnnlens.core.targets import Targets
from cnnlens.methods.perturbation import Runner, batch_for, row_scores, warn_nonfinite
from cnnlens.methods.score_cam import ScoreCAM, _top_channels

__all__ = ["ISCAM", "SSCAM"]

_TINY = torch.finfo(torch.float32).tiny


class _SampledScoreCAM(ScoreCAM):
    """Score-CAM whose channel score is the mean over ``n_samples`` variants of the masked
    input; subclasses say what variant ``s`` of ``x * H^k`` is (:meth:`variant`)."""

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        n_samples: int = 10,
        batch_size: int | None = None,
        top_channels: int | None = None,
        progress: bool = False,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(
            model,
            layer,
            batch_size=batch_size,
            top_channels=top_channels,
            progress=progress,
            optimize=optimize,
            eval_mode=eval_mode,
        )
        self.n_samples = check_int("n_samples", n_samples)

    def variant(self, x: Tensor, masks: Tensor, img: Tensor, ch: Tensor, sample: Tensor) -> Tensor:
        """Inputs (n, C, H, W) for rows of images ``x`` (batch indices ``img``), masks
        (n, 1, H, W) in [0, 1], channels ``ch`` and sample numbers ``sample`` (0-based)."""
        raise NotImplementedError

    def channel_scores(self, acts: Tensor, ctx: dict[str, Any]) -> Tensor:
        """Channel weights (B, C, K): softmax over channels of the mean sampled score."""
        x: Tensor = ctx["x"]
        targets: Targets = ctx["targets"]
        b, c = acts.shape[:2]
        size = (int(x.shape[-2]), int(x.shape[-1]))
        todo = _top_channels(acts, self.top_channels).nonzero()  # (n, 2): image, channel
        n_s = self.n_samples
        total = torch.zeros(b, c, targets.k, device=x.device)
        valid = torch.zeros(b, c, targets.k, device=x.device)
        runner = self._runner or Runner(self.model, x, self.optimize)
        runner.check(x, ctx["outputs"])
        n_rows, bad, bs = len(todo) * n_s, 0, batch_for(x, self.batch_size)
        with (
            progress_bar(
                self.progress, n_rows, f"{self.name} {ctx['layer']}", transient=True
            ) as bar,
            torch.inference_mode(),
        ):
            for start in range(0, n_rows, bs):
                idx = torch.arange(start, min(start + bs, n_rows), device=x.device)
                img, ch = todo[idx // n_s].unbind(1)
                masks = F.interpolate(
                    acts[img, ch].unsqueeze(1), size=size, mode="bilinear", align_corners=False
                )
                lo = masks.amin(dim=(2, 3), keepdim=True)
                hi = masks.amax(dim=(2, 3), keepdim=True)
                masks = (masks - lo) / (hi - lo).clamp(min=_TINY)
                s = row_scores(
                    targets, runner(self.variant(x[img], masks, img, ch, idx % n_s)), img
                )
                finite = torch.isfinite(s)
                bad += int((~finite).any(dim=1).sum())
                total.index_put_((img, ch), torch.where(finite, s, 0.0), accumulate=True)
                valid.index_put_((img, ch), finite.float(), accumulate=True)
                bar.advance(len(idx))
        warn_nonfinite(self.name, bad, n_rows, "masked inputs")
        # the baseline score f(X_b) is the same for every channel of an image: the softmax
        # over channels does not see it, so it is not computed
        mean = torch.where(valid > 0, total / valid.clamp(min=1), -math.inf)
        return torch.nan_to_num(torch.softmax(mean, dim=1), nan=0.0)


@register("sscam")
class SSCAM(_SampledScoreCAM):
    """SS-CAM, smoothed Score-CAM (Wang, Naidu et al., 2020, arXiv:2006.14255), noise on the
    masks (the paper's first variant, as torchcam):

    $$s_k = \\frac1N \\sum_{i=1}^N f_c\\big(X \\odot (H^k + \\delta_i)\\big), \\quad
    \\delta_i \\sim \\mathcal N(0, \\sigma^2), \\qquad
    M = \\mathrm{ReLU}\\Big(\\sum_k \\mathrm{softmax}(s)_k A^k\\Big)$$

    ``H^k`` is the channel's map upsampled to the input and min-max normalized, as in
    :class:`~cnnlens.methods.score_cam.ScoreCAM` (torchcam normalizes before upsampling:
    the same map when the layer has the input's resolution). The noise of (channel ``k``,
    sample ``i``) is drawn from a local generator seeded with ``seed``, ``k`` and ``i`` (the
    global RNG is untouched), so it is the same whatever the batch and ``batch_size``.

    Args:
        n_samples: noisy copies per channel (torchcam's default 35).
        std: the noise's standard deviation (torchcam's default 2.0).
        seed: seed of the noise.
        layer, batch_size, top_channels, progress, optimize, eval_mode: see
            :class:`~cnnlens.methods.score_cam.ScoreCAM`.

    Cost: ``n_samples`` forwards per channel and image.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_samples": 4, "batch_size": 256, "top_channels": 32},
        "tiny": {"n_samples": 2, "batch_size": 250, "top_channels": 8},
    }

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        n_samples: int = 35,
        std: float = 2.0,
        seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(model, layer, n_samples=n_samples, **options)
        self.std = check_float("std", std, minimum=0.0)
        self.seed = check_int("seed", seed, minimum=0)

    def noise(
        self, img: Tensor, ch: Tensor, sample: Tensor, shape: tuple[int, int], device: Any
    ) -> Tensor:
        """Standard normal noise (n, 1, H, W), one draw per (channel, sample) row (the same
        for every image)."""
        gen = torch.Generator(device=device)
        out = torch.empty(len(ch), 1, *shape, device=device)
        for row, (k, i) in enumerate(zip(ch.tolist(), sample.tolist())):
            gen.manual_seed(self.seed * 1_000_003 + i * 65_537 + k)
            out[row] = torch.randn(1, *shape, generator=gen, device=device)
        return out

    def variant(self, x: Tensor, masks: Tensor, img: Tensor, ch: Tensor, sample: Tensor) -> Tensor:
        delta = self.std * self.noise(img, ch, sample, tuple(masks.shape[-2:]), masks.device)
        return x * (masks + delta).to(x.dtype)


@register("iscam")
class ISCAM(_SampledScoreCAM):
    """IS-CAM, integrated Score-CAM (Naidu et al., 2020, arXiv:2010.03023): the channel
    score is integrated along the straight path from the zero baseline to the masked input,

    $$s_k = \\frac1N \\sum_{i=1}^N f_c\\Big(X \\odot \\frac{i}{N} H^k\\Big), \\qquad
    M = \\mathrm{ReLU}\\Big(\\sum_k \\mathrm{softmax}(s)_k A^k\\Big)$$

    (a Riemann sum of the path integral). torchcam's ``ISCAM`` scales the i-th copy by the
    running sum $\\sum_{j \\le i} j/N$ instead of $i/N$, so its copies leave the path for
    $i > 1$ (up to $(N+1)/2$ times the masked input); tests/test_cam_extra.py shows both.

    Args:
        n_samples: points N on the path (torchcam's default 10).
        layer, batch_size, top_channels, progress, optimize, eval_mode: see
            :class:`~cnnlens.methods.score_cam.ScoreCAM`.

    Cost: ``n_samples`` forwards per channel and image.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_samples": 4, "batch_size": 256, "top_channels": 32},
        "tiny": {"n_samples": 2, "batch_size": 250, "top_channels": 8},
    }

    def scales(self, sample: Tensor) -> Tensor:
        """The path point of each sample number: ``(i + 1) / N``."""
        return (sample.float() + 1.0) / self.n_samples

    def variant(self, x: Tensor, masks: Tensor, img: Tensor, ch: Tensor, sample: Tensor) -> Tensor:
        return x * (masks * self.scales(sample).view(-1, 1, 1, 1)).to(x.dtype)
