"""Extremal perturbations (Fong, Patrick & Vedaldi, 2019, arXiv:1910.08485): the smooth mask
of a given area that keeps the target score highest."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import grad_enabled
from cnnlens.core.checks import check_choice, check_flag, check_float, check_int
from cnnlens.core.explanation import Explanation
from cnnlens.core.registry import register
from cnnlens.core.targets import TargetLike
from cnnlens.errors import InputError
from cnnlens.methods.base import Explainer
from cnnlens.methods.engine import (
    BatchedForward,
    broadcast_to_input,
    first_pass,
    pixel_explanation,
    row_scores,
)

__all__ = ["ExtremalPerturbation", "SmoothMask"]


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (reflect padding) of (B, C, H, W) images."""
    radius = max(1, min(math.ceil(3 * sigma), min(x.shape[-2:]) - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    out = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="reflect"),
        k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
        groups=c,
    )
    return F.conv2d(
        F.pad(out, (0, 0, radius, radius), mode="reflect"),
        k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
        groups=c,
    )


def _adam_step(
    param: Tensor, grad: Tensor, moments: tuple[Tensor, Tensor], t: int, lr: float
) -> None:
    """One Adam step (Kingma & Ba, 2015; betas 0.9, 0.999), in place. Written out because
    ``torch.optim`` imports torch._dynamo, which costs seconds on the first call."""
    m, v = moments
    m.mul_(0.9).add_(grad, alpha=0.1)
    v.mul_(0.999).addcmul_(grad, grad, value=0.001)
    m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
    param.sub_(lr * m_hat / (v_hat.sqrt() + 1e-8))


class SmoothMask:
    """The smooth mask of Fong, Patrick & Vedaldi (2019, Sec. 3.3): a parameter $\\bar m$ on
    a grid of ``step`` pixels, turned into a pixel mask by a smooth max-convolution,

    $$m(u) = \\operatorname{smax}_{v;\\,T}\\ k_\\sigma(u - c_v)\\,\\bar m_v, \\qquad
    \\operatorname{smax}_T(g) = \\frac{\\sum_v g_v e^{g_v / T}}{\\sum_v e^{g_v / T}},$$

    with $c_v$ the centre of grid cell $v$ and the kernel $k_\\sigma(z) =
    \\exp(-2\\max(0, \\|z\\|/\\sigma - \\tfrac12)^2)$ (flat within $\\sigma/2$, so a block of
    ones stays near one between the grid points: at least 0.98 with $T = 1/20$),
    truncated beyond ``ceil(sigma / step) + 1`` cells. $T \\to 0$ is the max-convolution,
    under which an isolated parameter makes a blob of radius about $\\sigma$: no mask is
    sharper than the kernel, whatever the parameters.
    Values stay in [0, 1] for parameters in [0, 1].

    Args:
        size: the mask's (H, W).
        step: grid cell in pixels.
        sigma: the kernel's radius in pixels.
        temperature: $T$ (1/20, the paper's).
        device: where the fixed weights live.
    """

    def __init__(
        self,
        size: tuple[int, int],
        step: int,
        sigma: float,
        temperature: float = 1 / 20,
        device: torch.device | None = None,
    ) -> None:
        self.size, self.step, self.temperature = size, step, temperature
        self.grid = (math.ceil(size[0] / step), math.ceil(size[1] / step))
        self.radius = math.ceil(sigma / step) + 1
        r = self.radius
        offsets = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
        # (2r+1, H): distance along one axis from each pixel to the centre of the cell d away
        dy = self._axis(size[0], offsets)
        dx = self._axis(size[1], offsets)
        dist = (dy[:, None, :, None].pow(2) + dx[None, :, None, :].pow(2)).sqrt()
        weight = torch.exp(-2 * (dist / sigma - 0.5).clamp(min=0).pow(2))
        self.weight = weight.reshape((2 * r + 1) ** 2, *size)  # (offsets, H, W)

    def _axis(self, n: int, offsets: Tensor) -> Tensor:
        pos = torch.arange(n, device=offsets.device, dtype=torch.float32)
        cell = torch.div(pos, self.step, rounding_mode="floor")
        centre = (cell[None] + offsets[:, None] + 0.5) * self.step - 0.5
        return pos[None] - centre

    def __call__(self, param: Tensor) -> Tensor:
        """Masks (N, 1, H, W) of parameters (N, 1, gh, gw)."""
        n, r = param.shape[0], self.radius
        near = F.unfold(param, 2 * r + 1, padding=r)  # (N, offsets, gh * gw): zero outside
        near = near.view(n, -1, *self.grid)
        near = near.repeat_interleave(self.step, 2).repeat_interleave(self.step, 3)
        g = near[:, :, : self.size[0], : self.size[1]] * self.weight
        return (g * torch.softmax(g / self.temperature, dim=1)).sum(1, keepdim=True)


@register("extremal")
class ExtremalPerturbation(Explainer):
    """Extremal perturbations (Fong, Patrick & Vedaldi, ICCV 2019, arXiv:1910.08485), the
    "preservation" game: for each area ``a`` the mask ``m`` in [0, 1] that keeps the score
    highest while covering a fraction ``a`` of the image,

    $$m_a = \\arg\\max_m\\ f_c\\big(m \\odot x + (1 - m) \\odot \\tilde x\\big) -
    \\lambda\\,\\big\\|\\mathrm{sort}(m) - r_a\\big\\|^2$$

    with ``x~`` the perturbed image (Gaussian blur of ``sigma``, the paper's choice, or the
    ``baseline`` with ``perturbation="fade"``), ``r_a`` the sorted mask of area ``a`` (a
    fraction ``1 - a`` of zeros then ones) and ``lambda`` grown geometrically from
    ``area_weight`` to ``area_weight * area_growth`` over the iterations, so the area
    constraint is soft at first and nearly hard at the end (the paper's schedule). The
    area term is the paper's ranked-vector constraint: sorting makes it a function of the
    mask's values only, not of where they sit, and it is zero only for a mask whose values
    are ``1 - a`` zeros and ``a`` ones. The mask is the paper's smooth max-convolution of a
    parameter on a grid of ``step`` pixels (:class:`SmoothMask`, kernel radius
    ``smoothness``, temperature 1/20), so no mask is sharper than the kernel. Adam with
    learning rate ``lr``, the parameters projected on [0, 1] after each step. The map is
    the mean of the masks over ``areas``; ``extras["masks"]`` holds each (B[, K], A, H, W)
    and ``extras["areas"]`` their areas.

    Differences to the paper: the perturbed image is $m \\odot x + (1 - m) \\odot \\tilde x$
    with one blurred (or faded) $\\tilde x$, where the paper blends a pyramid of blurs whose
    strength follows the mask; the optimizer is Adam and the default ``n_iter`` is 300 (the
    paper: 800 steps).

    Args:
        areas: target areas in (0, 1).
        n_iter: optimization steps (the masks of all images, classes and areas are
            optimized together, one forward and backward per step).
        step: mask grid cell in pixels (None: about 1/32 of the larger side, the paper's 7
            pixels at 224).
        smoothness: the kernel radius $\\sigma$ in pixels (None: ``3 * step``, the paper's
            21 pixels at 224).
        perturbation: ``"blur"`` or ``"fade"``.
        sigma: blur radius in pixels (None: 1/20 of the larger side).
        baseline: the fade target (a number or a tensor broadcastable to the input).
        area_weight, area_growth, lr: the optimization's schedule.
        optimize, eval_mode: see :class:`~cnnlens.methods.perturbation.PerturbationMethod`.

    Cost: ``n_iter`` forward+backward passes of (B x K x len(areas)) images.
    """

    family: ClassVar[str] = "perturbation"

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_iter": 100, "areas": (0.1,)},
        "tiny": {"n_iter": 10, "areas": (0.1,)},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        areas: Sequence[float] = (0.05, 0.1, 0.2),
        n_iter: int = 300,
        step: int | None = None,
        smoothness: float | None = None,
        perturbation: str = "blur",
        sigma: float | None = None,
        baseline: float | Tensor = 0.0,
        area_weight: float = 1.0,
        area_growth: float = 30.0,
        lr: float = 0.05,
        optimize: bool | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        self.areas = [
            check_float("areas", a, minimum=0.0, strict_minimum=True, maximum=1.0) for a in areas
        ]
        if not self.areas:
            raise InputError("areas must hold at least one area in (0, 1]")
        self.n_iter = check_int("n_iter", n_iter)
        self.step = None if step is None else check_int("step", step)
        self.smoothness = (
            None
            if smoothness is None
            else check_float("smoothness", smoothness, minimum=0.0, strict_minimum=True)
        )
        self.perturbation = check_choice("perturbation", perturbation, ("blur", "fade"))
        self.sigma = (
            None if sigma is None else check_float("sigma", sigma, minimum=0.0, strict_minimum=True)
        )
        self.baseline = baseline
        self.area_weight = check_float("area_weight", area_weight, minimum=0.0)
        self.area_growth = check_float("area_growth", area_growth, minimum=1.0)
        self.lr = check_float("lr", lr, minimum=0.0, strict_minimum=True)
        self.optimize = check_flag("optimize", optimize)

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        b, _, h, w = x.shape
        runner = BatchedForward(self.model, x, self.optimize)
        outputs, targets = first_pass(runner, x, target, topk)
        k, n_a = targets.k, len(self.areas)
        if self.perturbation == "blur":
            far = _blur(x, self.sigma or max(h, w) / 20)
        else:
            far = broadcast_to_input("baseline", self.baseline, x)
        step = self.step or max(1, round(max(h, w) / 32))
        smooth = SmoothMask((h, w), step, self.smoothness or 3.0 * step, device=x.device)
        # one row per (image, class, area)
        img = torch.arange(b, device=x.device).repeat_interleave(k * n_a)
        cls = torch.arange(k, device=x.device).repeat_interleave(n_a).repeat(b)
        area = torch.tensor(self.areas, device=x.device).repeat(b * k)
        n_px = h * w
        ranks = torch.arange(n_px, device=x.device).float()[None]
        template = (ranks >= (1.0 - area[:, None]) * n_px).float()  # sorted ascending
        param = torch.full((len(img), 1, *smooth.grid), 0.5, device=x.device)
        moments = torch.zeros_like(param), torch.zeros_like(param)
        with grad_enabled():
            param.requires_grad_(True)
            for t in range(self.n_iter):
                mask = smooth(param).to(x.dtype)
                # the model itself: the graph must reach the mask (the runner feeds leaves)
                out = self.model(mask * x[img] + (1 - mask) * far[img])
                score = row_scores(targets, out, img).gather(1, cls[:, None])[:, 0]
                lam = self.area_weight * self.area_growth ** (t / max(1, self.n_iter - 1))
                gap = (mask.flatten(1).sort(dim=1).values - template).pow(2).mean(1)
                (grad,) = torch.autograd.grad((-score + lam * gap).sum(), param)
                with torch.no_grad():
                    _adam_step(param, grad, moments, t + 1, self.lr)
                    param.clamp_(0.0, 1.0)  # projected onto [0, 1], as the paper's code
        with torch.no_grad():
            masks = smooth(param.detach().clamp(0, 1))
        masks = masks.view(b, k, n_a, h, w)
        mean = masks.mean(dim=2)
        raw = mean.unsqueeze(2).expand(-1, -1, x.shape[1], -1, -1).clone()
        exp = pixel_explanation(raw, mean, targets, outputs, self.name)
        exp.extras.update(masks=masks[:, 0] if targets.per_image else masks, areas=list(self.areas))
        return exp
