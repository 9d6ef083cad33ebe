"""Superpixel methods: KernelSHAP and LIME (a surrogate fitted to masked forwards), XRAI
(integrated gradients ranked over regions).

An image is cut into superpixels (SLIC, quickshift or Felzenszwalb from scikit-image, a
square grid, or a segment map the user gives); a coalition ``z`` in {0, 1}^M keeps the
superpixels with ``z_j = 1`` and replaces the others by the baseline. The masked inputs of
every image are packed into forwards of at most ``batch_size`` inputs. scikit-image is
imported only when a scikit-image segmentation is asked for (``pip install
'cnnlens[superpixel]'``); the segmentation is the one step that leaves torch (a numpy
image per call), the rest stays on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import grad_enabled
from cnnlens.core.checks import check_choice, check_flag, check_float, check_int, check_optional_int
from cnnlens.core.explanation import Explanation
from cnnlens.core.progress import progress_bar
from cnnlens.core.registry import register
from cnnlens.core.targets import TargetLike, Targets
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

__all__ = ["LIME", "XRAI", "KernelSHAP", "segment_images"]

SEGMENTERS = ("slic", "quickshift", "felzenszwalb", "grid")


def _relabel(seg: Tensor) -> Tensor:
    """Labels of each (H, W) map made consecutive from 0."""
    return torch.stack([torch.unique(s, return_inverse=True)[1] for s in seg]).long()


def segment_images(
    x: Tensor, segments: str | Tensor = "slic", *, n_segments: int = 50, **options: Any
) -> Tensor:
    """Superpixel labels (B, H, W), consecutive from 0 in each image.

    Args:
        x: images (B, C, H, W); each is rescaled to [0, 1] for the segmenter.
        segments: ``"slic"``, ``"quickshift"``, ``"felzenszwalb"`` (scikit-image), ``"grid"``
            (square cells, about ``n_segments`` of them), or an integer tensor (H, W) or
            (B, H, W) of labels.
        n_segments: the number of superpixels asked of SLIC and the grid.
        **options: passed on to the scikit-image function (e.g. ``compactness`` for SLIC).
    """
    b, c, h, w = x.shape
    if isinstance(segments, Tensor):
        if segments.is_floating_point() or segments.dim() not in (2, 3):
            raise InputError(
                "segments must be an integer tensor (H, W) or (B, H, W) of labels, got "
                f"dtype {segments.dtype} and shape {tuple(segments.shape)}"
            )
        seg = segments if segments.dim() == 3 else segments.unsqueeze(0)
        if seg.shape[-2:] != (h, w) or seg.shape[0] not in (1, b):
            raise InputError(
                f"segments has shape {tuple(segments.shape)}; expected ({h}, {w}) or "
                f"({b}, {h}, {w}) to match x"
            )
        return _relabel(seg.to(x.device).expand(b, h, w))
    check_choice("segments", segments, SEGMENTERS)
    if segments == "grid":
        cell = max(1, round(math.sqrt(h * w / n_segments)))
        rows = torch.arange(h, device=x.device) // cell
        cols = torch.arange(w, device=x.device) // cell
        grid = rows[:, None] * (int(cols.max()) + 1) + cols[None, :]
        return grid.expand(b, h, w).clone()
    try:
        import skimage.segmentation as sks
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InputError(
            f"segments={segments!r} needs scikit-image (pip install 'cnnlens[superpixel]'); "
            "or give segments='grid' or a label tensor"
        ) from err
    flat = x.detach().float().flatten(1)
    lo, hi = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
    imgs = ((x.detach().float() - lo) / (hi - lo).clamp(min=1e-12)).permute(0, 2, 3, 1)
    out = []
    for img in imgs.cpu().double().numpy():
        if segments == "slic":
            axis = None if c == 1 else -1
            img_in = img[..., 0] if c == 1 else img
            opts = {"n_segments": n_segments, "compactness": 10.0, "start_label": 0, **options}
            labels = sks.slic(img_in, channel_axis=axis, **opts)
        elif segments == "quickshift":
            rgb = img.repeat(3, axis=-1) if c == 1 else img[..., :3]
            opts = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2, **options}  # lime's
            labels = sks.quickshift(rgb, **opts)
        else:
            img_in = img[..., 0] if c == 1 else img
            labels = sks.felzenszwalb(img_in, channel_axis=None if c == 1 else -1, **options)
        out.append(torch.as_tensor(labels, dtype=torch.long))
    seg = _relabel(torch.stack(out).to(x.device))
    single = (seg.flatten(1).amax(1) == 0).nonzero().flatten().tolist()
    if single:
        raise InputError(
            f"segments={segments!r} found a single superpixel in image(s) {single} (pure "
            "noise or a flat image?), so no region can be told from another; give "
            "segments='grid', a label tensor, or other segment_options"
        )
    return seg


class SurrogateMethod(Explainer):
    """Base of KernelSHAP and LIME: coalitions of superpixels, batched masked forwards, a
    weighted linear fit per image and target.

    Subclasses give :meth:`coalitions` (the sampled ``z`` and their weights) and
    :meth:`fit` (the coefficients).

    Args:
        model: the network; it is never changed.
        segments: see :func:`segment_images`.
        n_segments: superpixels asked of SLIC and the grid.
        n_samples: model evaluations per image, the forward of ``x`` itself included.
        baseline: the value of a removed superpixel: a number or a tensor broadcastable to
            the input (e.g. per-channel means, a blurred image).
        seed: seed of the coalition generator (a local generator per image; the global RNG
            is untouched, and an image's coalitions do not depend on the batch).
        segment_options: passed on to the scikit-image segmenter.
        batch_size, progress, optimize, eval_mode: see
            :class:`~cnnlens.methods.perturbation.PerturbationMethod`.
    """

    family: ClassVar[str] = "perturbation"

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_samples": 200, "n_segments": 32, "batch_size": 250},
        "tiny": {"n_samples": 32, "segments": "grid", "n_segments": 16, "batch_size": 250},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        segments: str | Tensor = "slic",
        n_segments: int = 50,
        n_samples: int = 500,
        baseline: float | Tensor = 0.0,
        seed: int = 0,
        segment_options: dict[str, Any] | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        if not isinstance(segments, Tensor):
            check_choice("segments", segments, SEGMENTERS)
        self.segments = segments
        self.n_segments = check_int("n_segments", n_segments)
        self.n_samples = check_int("n_samples", n_samples, minimum=3)
        self.baseline = baseline
        self.seed = check_int("seed", seed, minimum=0)
        self.segment_options = dict(segment_options or {})
        self.batch_size = check_optional_int("batch_size", batch_size)
        self.progress = bool(progress)
        self.optimize = check_flag("optimize", optimize)

    def coalitions(self, m: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Coalitions (n, m) in {0, 1} and their weights (n,) for an image of m superpixels."""
        raise NotImplementedError

    def fit(self, z: Tensor, w: Tensor, y: Tensor, fx: Tensor, fb: Tensor | None) -> Tensor:
        """Coefficients (m, K) from coalitions z (n, m), weights (n,), scores y (n, K), the
        image's scores fx (K,) and the baseline's fb (K,) (float64, CPU)."""
        raise NotImplementedError

    needs_baseline_score: ClassVar[bool] = False

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        b = x.shape[0]
        seg = segment_images(x, self.segments, n_segments=self.n_segments, **self.segment_options)
        base = broadcast_to_input("baseline", self.baseline, x)
        runner = BatchedForward(self.model, x, self.optimize)
        outputs, targets = first_pass(runner, x, target, topk)
        fx = row_scores(targets, outputs, torch.arange(b, device=x.device))  # (B, K)
        zs, ws = [], []
        for i in range(b):
            gen = torch.Generator().manual_seed(self.seed)
            z, w = self.coalitions(int(seg[i].max()) + 1, gen)
            if self.needs_baseline_score:  # one all-zero row: f(baseline)
                z = torch.cat([torch.zeros(1, z.shape[1]), z])
                w = torch.cat([torch.zeros(1), w])
            zs.append(z)
            ws.append(w)
        ys = self._masked_scores(x, base, seg, zs, targets, runner)
        coef = torch.zeros(b, targets.k, int(seg.max()) + 1, dtype=torch.float64)
        for i in range(b):
            z, w, y = zs[i].double(), ws[i].double(), ys[i].double()
            fb = None
            if self.needs_baseline_score:
                fb, z, w, y = y[0], z[1:], w[1:], y[1:]
            c = self.fit(z, w, y, fx[i].detach().cpu().double(), fb)  # (m, K)
            coef[i, :, : c.shape[0]] = c.T
        coef = coef.to(device=x.device, dtype=torch.float32)
        index = seg[:, None].expand(-1, targets.k, -1, -1).flatten(2)
        attr = coef.gather(2, index).view(b, targets.k, *x.shape[-2:])
        raw = attr.unsqueeze(2).expand(-1, -1, x.shape[1], -1, -1).clone()
        exp = pixel_explanation(raw, attr, targets, outputs, self.name)
        exp.extras.update(segments=seg, coalitions=zs, coefficients=coef)
        return exp

    def _masked_scores(
        self,
        x: Tensor,
        base: Tensor,
        seg: Tensor,
        zs: list[Tensor],
        targets: Targets,
        runner: BatchedForward,
    ) -> list[Tensor]:
        """Scores (n_i, K) of every image's coalitions, in batched forwards."""
        dev = x.device
        m_max = max(z.shape[1] for z in zs)
        rows = torch.cat([F.pad(z, (0, m_max - z.shape[1])) for z in zs]).to(dev)
        img_of = torch.cat([torch.full((len(z),), i) for i, z in enumerate(zs)]).to(dev)
        n_rows, bad, bs = len(rows), 0, batch_for(x, self.batch_size)
        scores = torch.zeros(n_rows, targets.k, device=dev)
        flat_seg = seg.flatten(1)
        with (
            progress_bar(self.progress, n_rows, self.name, transient=True) as bar,
            torch.inference_mode(),
        ):
            for start in range(0, n_rows, bs):
                sl = slice(start, min(start + bs, n_rows))
                img = img_of[sl]
                keep = rows[sl].gather(1, flat_seg[img]).view(len(img), 1, *x.shape[-2:])
                s = row_scores(targets, runner(torch.where(keep > 0, x[img], base[img])), img)
                finite = torch.isfinite(s)
                bad += int((~finite).any(dim=1).sum())
                scores[sl] = torch.where(finite, s, 0.0)
                bar.advance(sl.stop - start)
        warn_nonfinite(self.name, bad, n_rows, "masked inputs")
        return list(scores.cpu().split([len(z) for z in zs]))


def _shapley_kernel(m: int, size: Tensor) -> Tensor:
    """The Shapley kernel weight of coalitions of ``size`` players out of ``m``."""
    size = size.double()
    binom = torch.exp(
        torch.lgamma(torch.tensor(m + 1.0)) - torch.lgamma(size + 1) - torch.lgamma(m - size + 1)
    )
    return (m - 1) / (binom * size * (m - size))


@register("kernelshap")
class KernelSHAP(SurrogateMethod):
    """KernelSHAP (Lundberg & Lee, 2017, arXiv:1705.07874) over superpixels: the Shapley
    values of the superpixels, estimated by a weighted linear regression with the
    efficiency constraint solved exactly.

    $$\\min_{\\phi}\\sum_{z} \\pi(z)\\Big(f(h(z)) - f(b) - z^\\top\\phi\\Big)^2
    \\ \\text{s.t.}\\ \\sum_j \\phi_j = f(x) - f(b), \\qquad
    \\pi(z) = \\frac{M - 1}{\\binom{M}{|z|}\\,|z|\\,(M - |z|)}$$

    with ``h(z)`` the image with the superpixels of ``z`` kept and the others set to the
    baseline. When the ``2^M - 2`` proper coalitions fit in the budget they are all
    evaluated with weights ``pi(z)`` and the result is the exact Shapley values; otherwise
    ``n_samples - 2`` coalitions are drawn as in captum's ``KernelShap`` (a size ``k`` with
    probability proportional to ``(M-1)/(k(M-k))``, then ``k`` superpixels uniformly) with
    weight 1. captum imposes the constraint approximately (weight 1e6 on the full and empty
    coalitions); cnnlens eliminates one coefficient, so attributions sum to
    ``f(x) - f(b)`` to float rounding.

    Cost: ``n_samples`` forwards per image (the forward of ``x`` and of the baseline
    included). Options: see :class:`SurrogateMethod`.

    Example:
        >>> KernelSHAP(model, n_samples=300, segments="slic")(x, target=3).maps  # doctest: +SKIP
    """

    needs_baseline_score: ClassVar[bool] = True

    def coalitions(self, m: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        budget = self.n_samples - 2
        if m == 1:
            return torch.zeros(0, 1), torch.zeros(0)
        if m < 30 and 2**m - 2 <= budget:  # every proper coalition: exact Shapley values
            codes = torch.arange(1, 2**m - 1)
            z = ((codes[:, None] >> torch.arange(m)) & 1).float()
            return z, _shapley_kernel(m, z.sum(1)).float()
        k = torch.arange(1, m, dtype=torch.float64)
        p = (m - 1) / (k * (m - k))
        sizes = torch.multinomial(p / p.sum(), budget, replacement=True, generator=gen) + 1
        order = torch.rand(budget, m, generator=gen).argsort(dim=1)
        z = (order.argsort(dim=1) < sizes[:, None]).float()  # the first `size` of a shuffle
        return z, torch.ones(budget)

    def fit(self, z: Tensor, w: Tensor, y: Tensor, fx: Tensor, fb: Tensor | None) -> Tensor:
        assert fb is not None
        total = fx - fb  # (K,)
        m = z.shape[1]
        if m == 1 or len(z) == 0:
            return total.expand(m, -1) / m
        a = z[:, :-1] - z[:, -1:]  # phi_M = total - sum of the others
        r = (y - fb) - z[:, -1:] * total
        sw = w.sqrt()[:, None]
        sol = torch.linalg.lstsq(sw * a, sw * r, driver="gelsd").solution  # (m - 1, K)
        return torch.cat([sol, (total - sol.sum(0))[None]])


@register("lime")
class LIME(SurrogateMethod):
    """LIME (Ribeiro, Singh & Guestrin, 2016, arXiv:1602.04938) over superpixels: a weighted
    ridge regression of the target score on random coalitions, as the ``lime`` package's
    image explainer does.

    $$\\min_{c, c_0}\\sum_{z} \\pi(z)\\big(f(h(z)) - c_0 - z^\\top c\\big)^2 +
    \\alpha\\|c\\|^2, \\qquad \\pi(z) = \\sqrt{\\exp\\big(-d(z, 1)^2/\\sigma^2\\big)}$$

    ``z`` is drawn with each superpixel kept with probability 1/2 (captum's default
    sampling); ``d`` is the cosine distance between ``z`` and the all-ones coalition and
    ``sigma`` the kernel width (the ``lime`` package's 0.25). Differences to ``lime``: the
    score is the model's raw target score (a logit for a classifier; ``lime`` uses
    probabilities), all superpixels keep their coefficient (no feature selection), and no
    all-ones sample is prepended. captum's ``Lime`` defaults differ again (Lasso, a kernel
    on the distance between inputs); tests/test_superpixel.py gives captum these choices.

    Args:
        kernel_width: sigma.
        alpha: ridge penalty (the ``lime`` package's 1.0).
        Others: see :class:`SurrogateMethod`.

    Cost: ``n_samples`` forwards per image (the forward of ``x`` included).
    """

    def __init__(
        self, model: nn.Module, *, kernel_width: float = 0.25, alpha: float = 1.0, **options: Any
    ) -> None:
        super().__init__(model, **options)
        self.kernel_width = check_float(
            "kernel_width", kernel_width, minimum=0.0, strict_minimum=True
        )
        self.alpha = check_float("alpha", alpha, minimum=0.0)

    def coalitions(self, m: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        n = self.n_samples - 1
        z = (torch.rand(n, m, generator=gen) < 0.5).float()
        return z, self.similarity(z)

    def similarity(self, z: Tensor) -> Tensor:
        """The kernel weight of coalitions z (n, m)."""
        cos = z.sum(1) / (z.norm(dim=1) * math.sqrt(z.shape[1])).clamp(min=1e-12)
        d = 1.0 - cos
        return torch.exp(-(d**2) / self.kernel_width**2).sqrt()

    def fit(self, z: Tensor, w: Tensor, y: Tensor, fx: Tensor, fb: Tensor | None) -> Tensor:
        wsum = w.sum().clamp(min=1e-300)
        zc = z - (w[:, None] * z).sum(0) / wsum
        yc = y - (w[:, None] * y).sum(0) / wsum
        gram = zc.T @ (w[:, None] * zc) + self.alpha * torch.eye(z.shape[1], dtype=z.dtype)
        return torch.linalg.lstsq(gram, zc.T @ (w[:, None] * yc), driver="gelsd").solution


@register("xrai")
class XRAI(Explainer):
    """XRAI (Kapishnikov et al., 2019, arXiv:1906.02825): integrated gradients summed over
    regions, regions ranked greedily by attribution density.

    1. Integrated gradients from each baseline (the paper: a black and a white image; here
       by default each image's lowest and highest value, its black and white after
       normalization), averaged and summed over channels: ``a`` (H, W).
    2. Regions: Felzenszwalb segmentations of the image at several ``scales`` (the paper's
       over-segmentation), each segment dilated by ``dilation`` pixels; or a user-given
       label map (B, H, W) or (H, W) (then dilated too).
    3. Starting from an empty selection, the region whose *new* pixels have the largest
       mean attribution is added, until the selection covers a fraction
       ``area_threshold`` of the image (1: every pixel); each pixel's value is the gain of
       the region that first covered it:

    $$g(R) = \\frac{1}{|R \\setminus S|}\\sum_{p \\in R \\setminus S} a_p,
    \\qquad S \\leftarrow S \\cup \\arg\\max_R g(R)$$

    The pixels left uncovered form one last region (their mean attribution). Segments of
    fewer than ``min_segment_size`` pixels are no candidates (the paper's Felzenszwalb
    minimum size, 150 pixels at 224 x 224, scaled to the image by default), and a region
    that adds fewer than ``min_pixels`` new pixels is skipped. Differences to the paper's
    reference code: its ``min_pixel_diff`` of 50 pixels is ``min_pixels=1`` here, IG by the
    midpoint rule in ``n_steps`` (batched), segmentation at the input's size (the reference
    resizes to 224), and the map min-max normalized as every cnnlens map.
    ``raw`` holds the gains, the same value on every channel; ``extras["ig"]`` the
    channel-summed integrated gradients (B[, K], H, W).

    Args:
        model: the network.
        segments: ``"felzenszwalb"`` (multi-scale), any name of :func:`segment_images`, or a
            label tensor.
        scales: the Felzenszwalb scales.
        dilation: pixels each region grows by.
        min_pixels: a region adding fewer new pixels is skipped.
        area_threshold: the fraction of the image the ranked regions cover, in (0, 1]; the
            rest is one region.
        min_segment_size: the fewest pixels of a candidate segment before dilation (None:
            150 x H x W / 224^2, the paper's at any size); Felzenszwalb's ``min_size``.
        baselines: IG baselines: ``"min"``/``"max"`` (each image's extreme value), numbers,
            or tensors broadcastable to the input.
        n_steps: IG steps per baseline.
        batch_size, optimize, eval_mode: see
            :class:`~cnnlens.methods.perturbation.PerturbationMethod`.

    Cost: ``n_steps x len(baselines)`` forward+backward passes per image, then a greedy
    ranking in O(regions x pixels).
    """

    family: ClassVar[str] = "gradient"

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_steps": 16, "batch_size": 64},
        "tiny": {"n_steps": 4, "segments": "grid", "batch_size": 64},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        segments: str | Tensor = "felzenszwalb",
        scales: Sequence[float] = (50, 100, 150, 250, 500, 1200),
        dilation: int = 5,
        min_pixels: int = 1,
        area_threshold: float = 1.0,
        min_segment_size: int | None = None,
        baselines: Sequence[Any] = ("min", "max"),
        n_steps: int = 32,
        batch_size: int | None = None,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        if not isinstance(segments, Tensor):
            check_choice("segments", segments, SEGMENTERS)
        self.segments = segments
        self.scales = [check_float("scales", s, minimum=0.0, strict_minimum=True) for s in scales]
        self.dilation = check_int("dilation", dilation, minimum=0)
        self.min_pixels = check_int("min_pixels", min_pixels)
        self.area_threshold = check_float(
            "area_threshold", area_threshold, minimum=0.0, strict_minimum=True, maximum=1.0
        )
        self.min_segment_size = (
            None if min_segment_size is None else check_int("min_segment_size", min_segment_size)
        )
        if not baselines:
            raise InputError("baselines must hold at least one baseline")
        self.baselines = list(baselines)
        self.n_steps = check_int("n_steps", n_steps)
        self.batch_size = check_optional_int("batch_size", batch_size)
        self.optimize = check_flag("optimize", optimize)

    def _baseline(self, value: Any, x: Tensor) -> Tensor:
        if isinstance(value, str):
            check_choice("baselines", value, ("min", "max"))
            flat = x.flatten(1)
            ext = flat.amin(1) if value == "min" else flat.amax(1)
            return ext.view(-1, 1, 1, 1).expand_as(x)
        return broadcast_to_input("baselines", value, x)

    def integrated_gradients(self, x: Tensor, targets: Targets, runner: BatchedForward) -> Tensor:
        """Channel-summed IG (B, K, H, W), averaged over the baselines."""
        b, k = x.shape[0], targets.k
        ig = torch.zeros(b, k, *x.shape[-2:], device=x.device)
        alphas = (torch.arange(self.n_steps, device=x.device, dtype=x.dtype) + 0.5) / self.n_steps
        bs, n_rows = batch_for(x, self.batch_size), b * self.n_steps
        for value in self.baselines:
            base = self._baseline(value, x)
            grads = torch.zeros(b, k, *x.shape[1:], device=x.device)
            for start in range(0, n_rows, bs):
                idx = torch.arange(start, min(start + bs, n_rows), device=x.device)
                img, a = idx // self.n_steps, alphas[idx % self.n_steps].view(-1, 1, 1, 1)
                with grad_enabled():
                    leaf, out = runner.forward(
                        base[img] + a * (x[img] - base[img]), requires_grad=True
                    )
                    s = row_scores(targets, out, img)
                    for kk in range(k):
                        (g,) = torch.autograd.grad(s[:, kk].sum(), leaf, retain_graph=kk < k - 1)
                        grads[:, kk].index_add_(0, img, g.float())
            diff = (x - base).float()[:, None]
            ig += (diff * grads / self.n_steps).sum(dim=2)
        return ig / len(self.baselines)

    def regions(self, x: Tensor) -> list[Tensor]:
        """Per image, the candidate regions (R, H, W) bool: the segments of at least
        ``min_segment_size`` pixels, dilated."""
        h, w = x.shape[-2:]
        least = self.min_segment_size
        if least is None:
            least = round(150 * h * w / 224**2)
        if isinstance(self.segments, Tensor) or self.segments != "felzenszwalb":
            maps = [segment_images(x, self.segments)]
        else:
            maps = [segment_images(x, "felzenszwalb", scale=s, min_size=least) for s in self.scales]
        out = []
        for i in range(x.shape[0]):
            masks = torch.cat([F.one_hot(m[i]).permute(2, 0, 1) for m in maps]).float()
            masks = masks[masks.flatten(1).sum(1) >= least]
            if self.dilation:
                size = 2 * self.dilation + 1
                masks = F.max_pool2d(masks[:, None], size, stride=1, padding=self.dilation)[:, 0]
            out.append(masks > 0)
        return out

    def rank(self, attr: Tensor, masks: Tensor) -> Tensor:
        """The XRAI map (H, W) of one attribution map and its candidate regions: running sums
        of each region's uncovered attribution and area, updated where pixels get covered."""
        flat = masks.flatten(1)  # (R, P)
        a = attr.flatten()
        gain_sum = (flat.float() * a).sum(1)
        area = flat.sum(1).float()
        alive = torch.ones(len(flat), dtype=torch.bool, device=attr.device)
        covered = torch.zeros_like(a, dtype=torch.bool)
        out = torch.zeros_like(a)
        goal = self.area_threshold * a.numel()
        while not bool(covered.all()) and float(covered.sum()) < goal:
            ok = alive & (area >= self.min_pixels)
            if not bool(ok.any()):
                break
            gain = torch.where(ok, gain_sum / area.clamp(min=1), -math.inf)
            best = int(gain.argmax())
            new = flat[best] & ~covered
            out[new] = gain[best]
            covered |= new
            alive[best] = False
            cols = new.nonzero().squeeze(1)
            hit = flat[:, cols].float()  # (R, |new|): the regions losing these pixels
            gain_sum -= hit @ a[cols]
            area -= hit.sum(1)
        rest = ~covered
        if bool(rest.any()):
            out[rest] = a[rest].mean()
        return out.view_as(attr)

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        runner = BatchedForward(self.model, x, self.optimize)
        outputs, targets = first_pass(runner, x, target, topk)
        ig = self.integrated_gradients(x, targets, runner)
        regions = self.regions(x)
        gains = torch.stack(
            [
                torch.stack([self.rank(ig[i, kk], regions[i]) for kk in range(targets.k)])
                for i in range(x.shape[0])
            ]
        )
        raw = gains.unsqueeze(2).expand(-1, -1, x.shape[1], -1, -1).clone()
        exp = pixel_explanation(raw, gains, targets, outputs, self.name)
        exp.extras["ig"] = ig[:, 0] if targets.per_image else ig
        return exp
