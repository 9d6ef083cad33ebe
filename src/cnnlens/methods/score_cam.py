"""Gradient-free CAMs that weight channels by forward passes: Score-CAM and Ablation-CAM.

Both ask one question per (image, channel) of the chosen layer, in batched forwards of at
most ``batch_size`` inputs under ``torch.inference_mode``. The answers for all K explained
classes come from the same forwards: the weights of a layer are computed once per call and
reused for every class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import this_thread_only
from cnnlens.core.checks import check_float, check_int, check_optional_int
from cnnlens.core.explanation import Explanation
from cnnlens.core.layers import LayersLike, resolve_layer
from cnnlens.core.layouts import Layout
from cnnlens.core.progress import progress_bar
from cnnlens.core.registry import register
from cnnlens.core.targets import TargetLike, Targets
from cnnlens.methods.base import BaseCAM, CAMContext
from cnnlens.methods.engine import BatchedForward, batch_for, row_scores, warn_nonfinite

__all__ = ["ISCAM", "SSCAM", "AblationCAM", "ScoreCAM"]

_TINY = torch.finfo(torch.float32).tiny
_EPS = torch.finfo(torch.float32).eps


def _constant_channels(acts: Tensor) -> Tensor:
    """(B, C) mask of channels whose (h, w) map is constant (same test as ``normalize_maps``)."""
    flat = acts.flatten(2)
    lo, hi = flat.amin(2), flat.amax(2)
    return (hi - lo) <= _EPS * torch.maximum(hi.abs(), lo.abs()) + _TINY


def _top_channels(acts: Tensor, k: int | None) -> Tensor:
    """(B, C) mask of the ``k`` channels of largest spatial variance per image (all if None)."""
    b, c = acts.shape[:2]
    if k is None or k >= c:
        return torch.ones(b, c, dtype=torch.bool, device=acts.device)
    var = acts.flatten(2).var(dim=2, unbiased=False)
    keep = torch.zeros(b, c, dtype=torch.bool, device=acts.device)
    return keep.scatter_(1, var.topk(k, dim=1).indices, True)


class _ChannelWeights:
    """The channel weights (B, C, K) of each layer for one call: computed with the K
    targets' scores from one set of forwards at the first target, reused for the others."""

    def __init__(self) -> None:
        self.store: dict[str, Tensor] = {}

    def cam(
        self,
        acts: Tensor,
        ctx: CAMContext,
        compute: Callable[[Tensor, CAMContext], Tensor],
        reduce: Callable[[Tensor], Tensor] = lambda t: t.sum(dim=1),
    ) -> Tensor:
        name = ctx.layer
        if ctx.k == 0 or name not in self.store:
            self.store[name] = compute(acts, ctx)
        w = self.store[name][:, :, ctx.k]
        return reduce(w.to(acts.dtype)[:, :, None, None] * acts)


@register("scorecam")
class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al., 2020, arXiv:1910.01279).

    Each channel's map, upsampled to the input size and min-max normalized to ``H^k``,
    masks the input; the channel's weight is the softmax over channels of the increase in
    the class score over the baseline image $X_b = 0$:

    $$s_k = f_c(X \\odot H^k) - f_c(X_b), \\qquad
    \\alpha_k = \\frac{e^{s_k}}{\\sum_{k'} e^{s_{k'}}}, \\qquad
    M = \\mathrm{ReLU}\\Big(\\sum_k \\alpha_k A^k\\Big)$$

    A channel whose upsampled map is constant normalizes to ``H^k = 0`` (a constant map
    carries no location; this is also what a ``(A - min) / (max - min + eps)`` normalization
    gives), so its masked input *is* the baseline and $s_k = 0$ exactly: it needs no
    forward pass. It still takes part in the softmax with weight $e^0 / Z$ and adds the
    constant $\\alpha_k A^k$ to every pixel. Since the softmax only sees differences, the one
    forward of $X_b$ is made only when such channels exist.

    ``top_channels=k`` keeps the k channels of largest spatial activation variance per
    image (Faster Score-CAM); the others get weight 0. Channels whose masked score is not
    finite are left out of the softmax, with a warning.

    Args:
        model: the network.
        layer: see :class:`~cnnlens.methods.base.BaseCAM`.
        batch_size: masked inputs per forward (the memory bound); None: 8 on the CPU, 64 on
            an accelerator.
        top_channels: number of channels kept by activation variance (None: all).
        progress: show a rich progress bar.
        optimize: run the masked forwards on the fast CPU path (None: automatic; see
            :class:`~cnnlens.methods.engine.BatchedForward`); False runs the model as it is.
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.

    Example:
        >>> ScoreCAM(model, layer="layer4", batch_size=64)(x, topk=3).maps  # doctest: +SKIP
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"batch_size": 256},
        "tiny": {"batch_size": 250},
    }

    needs_grad: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        batch_size: int | None = None,
        top_channels: int | None = None,
        progress: bool = False,
        optimize: bool | None = None,
        eval_mode: bool = True,
        layout: str | None = None,
    ) -> None:
        super().__init__(model, layer, optimize=optimize, eval_mode=eval_mode, layout=layout)
        self.batch_size = check_optional_int("batch_size", batch_size)
        self.top_channels = check_optional_int("top_channels", top_channels)
        self.progress = bool(progress)
        self._weights = _ChannelWeights()
        self._forward_batches: BatchedForward | None = None

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        return self._weights.cam(acts, ctx, self.channel_scores, self.reduce_channels)

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        # The batched forward (its BatchNorm-folded copy) is made before the capture hooks exist.
        self._forward_batches = BatchedForward(self.model, x, self.optimize)
        try:
            return super().explain_batch(x, target, topk)
        finally:
            self._weights.store.clear()
            self._forward_batches = None

    def channel_scores(self, acts: Tensor, ctx: CAMContext) -> Tensor:
        """Channel weights (B, C, K) of one layer for all K targets."""
        x: Tensor = ctx.x
        targets: Targets = ctx.targets
        b, c = acts.shape[:2]
        size = tuple(int(s) for s in x.shape[2:])  # (H, W), or (T, H, W) for a video
        layout = ctx.layout or Layout("nchw", (acts.shape[2], acts.shape[3]))
        constant = _constant_channels(acts)
        selected = _top_channels(acts, self.top_channels)
        todo = (selected & ~constant).nonzero()  # (n, 2): image, channel
        # s_k = f(X * H^k) - f(X_b); -inf leaves a channel out of the softmax.
        scores = torch.full((b, c, targets.k), -math.inf, device=x.device)
        forward = self._forward_batches or BatchedForward(self.model, x, self.optimize)
        forward.check(x, ctx.outputs)
        n_rows, bad, bs = len(todo), 0, batch_for(x, self.batch_size)
        with (
            progress_bar(self.progress, n_rows, f"{self.name} {ctx.layer}", transient=True) as bar,
            torch.inference_mode(),
        ):
            for start in range(0, n_rows, bs):
                img, ch = todo[start : start + bs].unbind(1)
                masks = layout.to_input(acts[img, ch].unsqueeze(1), size)
                lo = masks.flatten(2).amin(2).view(-1, *[1] * (masks.dim() - 1))
                hi = masks.flatten(2).amax(2).view(-1, *[1] * (masks.dim() - 1))
                masks = (masks - lo) / (hi - lo).clamp(min=_TINY)
                s = row_scores(targets, forward(x[img] * masks.to(x.dtype)), img)
                bad += int((~torch.isfinite(s)).any(dim=1).sum())
                scores[img, ch] = torch.where(torch.isfinite(s), s, -math.inf)
                bar.advance(len(img))
            flat = selected & constant
            if bool(flat.any()):
                scores = scores - self._baseline_scores(forward, x, targets)[:, None, :]
                scores[flat] = 0.0
        warn_nonfinite(self.name, bad, n_rows, "masked inputs")
        scores = scores.clone()
        weights = torch.softmax(scores, dim=1)
        return torch.nan_to_num(weights, nan=0.0)  # all channels left out: weights 0

    def _baseline_scores(self, forward: BatchedForward, x: Tensor, targets: Targets) -> Tensor:
        """f_c(X_b) for every image and target, (B, K): one forward of a zero image when the
        targets are class indices."""
        b = x.shape[0]
        rows = torch.arange(b, device=x.device)
        if targets.fn is None:
            logits = targets.logits(forward(torch.zeros_like(x[:1]))).float()
            return logits.expand(b, -1).gather(1, targets.indices.to(logits.device))
        return row_scores(targets, forward(torch.zeros_like(x)), rows)


@register("ablationcam")
class AblationCAM(BaseCAM):
    """Ablation-CAM (Desai & Ramaswamy, 2020, WACV): each channel is weighted by the
    relative drop of the class score when that channel of the layer is set to
    ``ablation_value`` (zero, as in the paper):

    $$w_k = \\frac{y_c - y_c^{(k)}}{|y_c|}, \\qquad M = \\mathrm{ReLU}\\Big(\\sum_k w_k
    A^k\\Big)$$

    The paper divides by $y_c$; dividing by $|y_c|$ gives the same map for a positive score
    and keeps the sign of every weight when the score is negative (with $|y_c|$ at zero the
    drop itself is used). A channel that already equals ``ablation_value`` everywhere (a
    dead ReLU channel) cannot change the output, so its weight is 0 with no forward pass.
    The ablated activations replace the layer's output through a forward hook that lives
    for the call; a module that runs several times per forward is ablated at its last run,
    the output the map is made of. ``top_channels`` and non-finite scores are handled as in
    :class:`ScoreCAM` (weight 0).

    Args:
        model: the network.
        layer: see :class:`~cnnlens.methods.base.BaseCAM`.
        ablation_value: the value an ablated channel is set to.
        batch_size, top_channels, progress, optimize, eval_mode: see
            :class:`ScoreCAM`.

    Example:
        >>> AblationCAM(model, layer="layer4")(x, target=3).maps         # doctest: +SKIP
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"batch_size": 256},
        "tiny": {"batch_size": 250},
    }

    needs_grad: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        ablation_value: float = 0.0,
        batch_size: int | None = None,
        top_channels: int | None = None,
        progress: bool = False,
        optimize: bool | None = None,
        eval_mode: bool = True,
        layout: str | None = None,
    ) -> None:
        super().__init__(model, layer, optimize=optimize, eval_mode=eval_mode, layout=layout)
        self.ablation_value = check_float("ablation_value", ablation_value)
        self.batch_size = check_optional_int("batch_size", batch_size)
        self.top_channels = check_optional_int("top_channels", top_channels)
        self.progress = bool(progress)
        self._weights = _ChannelWeights()

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        return self._weights.cam(acts, ctx, self.channel_scores, self.reduce_channels)

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        try:
            return super().explain_batch(x, target, topk)
        finally:
            self._weights.store.clear()

    def channel_scores(self, acts: Tensor, ctx: CAMContext) -> Tensor:
        """Channel weights (B, C, K) of one layer for all K targets."""
        x: Tensor = ctx.x
        targets: Targets = ctx.targets
        b, c = acts.shape[:2]
        module = self._module_of(ctx.layer)
        layout = ctx.layout or Layout("nchw", (acts.shape[2], acts.shape[3]))
        y = targets.scores(ctx.outputs).detach().float()  # (B, K)
        already = (acts == self.ablation_value).flatten(2).all(dim=2)
        selected = _top_channels(acts, self.top_channels)
        todo = (selected & ~already).nonzero()
        drops = torch.zeros(b, c, targets.k, device=x.device)
        original = acts  # float32 copy taken before any ablated forward
        # the ablation hook lives on the caller's layer, so no folded copy: channels-last only
        forward = BatchedForward(self.model, x, self.optimize, fold=False)
        state: dict[str, Any] = {"calls": 0, "last": self._calls_per_forward(module, forward, x)}

        def restart(_m: nn.Module, _args: object) -> None:
            state["calls"] = 0

        def ablate(_m: nn.Module, _i: object, out: object) -> object:
            state["calls"] += 1
            if state["calls"] != state["last"] or not isinstance(out, Tensor):
                return None  # an earlier call of a module run several times: unchanged
            return layout.write(state["acts"], out).to(out.dtype)

        n_rows, bad, bs = len(todo), 0, batch_for(x, self.batch_size)
        handles = [
            self.model.register_forward_pre_hook(this_thread_only(restart)),
            module.register_forward_hook(this_thread_only(ablate)),
        ]
        try:
            with (
                progress_bar(
                    self.progress, n_rows, f"{self.name} {ctx.layer}", transient=True
                ) as bar,
                torch.inference_mode(),
            ):
                for start in range(0, n_rows, bs):
                    img, ch = todo[start : start + bs].unbind(1)
                    ablated = original[img].clone()
                    ablated[torch.arange(len(img), device=ablated.device), ch] = self.ablation_value
                    state["acts"] = ablated
                    s = row_scores(targets, forward(x[img]), img)
                    finite = torch.isfinite(s)
                    bad += int((~finite).any(dim=1).sum())
                    drops[img, ch] = torch.where(finite, y[img] - s, torch.zeros_like(s))
                    bar.advance(len(img))
        finally:
            for handle in handles:
                handle.remove()
        warn_nonfinite(self.name, bad, n_rows, "ablated inputs")
        scale = torch.where(y.abs() > _TINY, y.abs(), torch.ones_like(y))
        return drops.clone() / scale[:, None, :]

    def _module_of(self, name: str) -> nn.Module:
        """The module of layer ``name`` (also a given module not registered in the model)."""
        for n, m in self._resolved or []:
            if n == name:
                return m
        return resolve_layer(self.model, name)[1]  # the automatic choice (a Keras name too)

    def _calls_per_forward(self, module: nn.Module, forward: BatchedForward, x: Tensor) -> int:
        """How many times ``module`` runs in one forward (one image, no graph)."""
        calls = [0]

        def restart(_m: nn.Module, _args: object) -> None:
            calls[0] = 0  # a forward retried in another memory format counts once

        def count(_m: nn.Module, _i: object, _o: object) -> None:
            calls[0] += 1

        handles = [
            self.model.register_forward_pre_hook(this_thread_only(restart)),
            module.register_forward_hook(this_thread_only(count)),
        ]
        try:
            with torch.inference_mode():
                forward(x[:1])
        finally:
            for handle in handles:
                handle.remove()
        return max(calls[0], 1)


# ---------------------------------------------------------------------------------------------
# Smoothed Score-CAMs: SS-CAM (noisy masks) and IS-CAM (masks scaled along a path). Both replace
# only how a channel's score is measured: the mean of ``n_samples`` masked forwards instead of
# one; rows (image, channel, sample) are packed into forwards of at most ``batch_size`` inputs.
# ---------------------------------------------------------------------------------------------

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

    def channel_scores(self, acts: Tensor, ctx: CAMContext) -> Tensor:
        """Channel weights (B, C, K): softmax over channels of the mean sampled score."""
        x: Tensor = ctx.x
        targets: Targets = ctx.targets
        b, c = acts.shape[:2]
        size = (int(x.shape[-2]), int(x.shape[-1]))
        todo = _top_channels(acts, self.top_channels).nonzero()  # (n, 2): image, channel
        n_s = self.n_samples
        total = torch.zeros(b, c, targets.k, device=x.device)
        valid = torch.zeros(b, c, targets.k, device=x.device)
        runner = self._forward_batches or BatchedForward(self.model, x, self.optimize)
        runner.check(x, ctx.outputs)
        n_rows, bad, bs = len(todo) * n_s, 0, batch_for(x, self.batch_size)
        with (
            progress_bar(self.progress, n_rows, f"{self.name} {ctx.layer}", transient=True) as bar,
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
