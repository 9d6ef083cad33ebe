"""ROAD: RemOve And Debias (Rong et al., ICML 2022, arXiv:2202.00449).

* :func:`road`: the target's probability as the most (``morf``) or least (``lerf``)
  relevant pixels are removed and filled by :func:`noisy_linear_impute`;
* :func:`road_combined`: half the gap between the two orders.

Batched like the other faithfulness metrics (:mod:`cnnlens.metrics.faithfulness`), on the
model's device, frozen and without autograd.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.errors import InputError
from cnnlens.metrics._common import (
    Activation,
    batched_target_probs,
    check_fractions,
    check_images,
    frozen_eval,
    order_ranks,
)
from cnnlens.metrics.faithfulness import CurveResult, _on, _original, _pairs, _prepare
from cnnlens.metrics.registry import MetricInputs, register_metric

__all__ = ["ROAD_FRACTIONS", "noisy_linear_impute", "road", "road_combined"]

ROAD_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# ROAD's noisy linear imputation (Rong et al. 2022) weighs the four direct neighbours by
# 1/6 and the four diagonal ones by 1/12.


def _stencil(v: Tensor) -> Tensor:
    """$W * v$: the 8-neighbour weights (1/6 direct, 1/12 diagonal), zeros outside."""
    p = F.pad(v, (1, 1, 1, 1))
    direct = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    diagonal = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return direct / 6 + diagonal / 12


def _prolong_axis(c: Tensor, dim: int) -> Tensor:
    """Cell-centred linear interpolation doubling axis ``dim`` (weights 3/4 and 1/4)."""
    n = c.shape[dim]
    zero = torch.zeros_like(c.narrow(dim, 0, 1))
    prev = torch.cat([zero, c.narrow(dim, 0, n - 1)], dim=dim)
    nxt = torch.cat([c.narrow(dim, 1, n - 1), zero], dim=dim)
    even, odd = 0.75 * c + 0.25 * prev, 0.75 * c + 0.25 * nxt
    shape = list(c.shape)
    shape[dim] = 2 * n
    return torch.stack([even, odd], dim=dim + 1).reshape(shape)


def _restrict_axis(f: Tensor, dim: int) -> Tensor:
    """The adjoint of :func:`_prolong_axis` (axis ``dim`` of even length halves)."""
    even = f.narrow(dim, 0, f.shape[dim] // 2 * 2)
    n = even.shape[dim] // 2
    pairs = even.unflatten(dim, (n, 2))
    e, o = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    zero = torch.zeros_like(e.narrow(dim, 0, 1))
    o_prev = torch.cat([zero, o.narrow(dim, 0, n - 1)], dim=dim)
    e_next = torch.cat([e.narrow(dim, 1, n - 1), zero], dim=dim)
    return 0.75 * (e + o) + 0.25 * (o_prev + e_next)


class _Laplacian:
    """The masked imputation operator at one grid level, for N systems (N, 1, H, W).

    ``apply(v) = m * (d * v - W * (m * v))``: $m$ marks the unknown (removed) pixels, $W$ is
    the 8-neighbour stencil with zeros outside the image, $d = W * 1$ the in-image weight
    sum. Symmetric positive definite on the unknown pixels when every hole touches a known
    pixel.
    """

    def __init__(self, mask: Tensor):
        self.m = mask
        h, w = mask.shape[-2:]
        self.diag = _stencil(torch.ones(1, 1, h, w, device=mask.device, dtype=mask.dtype))
        self.inv_diag = 1 / self.diag

    def apply(self, v: Tensor) -> Tensor:
        return self.m * (self.diag * v - _stencil(self.m * v))

    def coarser(self) -> _Laplacian:
        """The next level: a coarse pixel is unknown when its 2 x 2 fine pixels all are."""
        h, w = self.m.shape[-2:]
        m = F.pad(self.m, (0, w % 2, 0, h % 2))  # the padding counts as known
        return _Laplacian(
            m[..., 0::2, 0::2] * m[..., 1::2, 0::2] * m[..., 0::2, 1::2] * m[..., 1::2, 1::2]
        )


class _Multigrid:
    """A symmetric V-cycle (Jacobi smoothing, bilinear transfer, rediscretized coarse
    operators): a symmetric positive definite preconditioner for conjugate gradients."""

    def __init__(self, mask: Tensor, smooth: int = 2, coarse_sweeps: int = 10):
        self.levels = [_Laplacian(mask)]
        while min(self.levels[-1].m.shape[-2:]) >= 6 and len(self.levels) < 12:
            self.levels.append(self.levels[-1].coarser())
        self.smooth = smooth
        self.coarse_sweeps = coarse_sweeps

    @staticmethod
    def _jacobi(op: _Laplacian, r: Tensor, x: Tensor | None, sweeps: int) -> Tensor:
        if x is None:  # the first sweep from zero
            x, sweeps = op.inv_diag * r, sweeps - 1
        for _ in range(sweeps):
            x = x + op.inv_diag * (r - op.apply(x))
        return x

    def __call__(self, r: Tensor, level: int = 0) -> Tensor:
        op = self.levels[level]
        if level == len(self.levels) - 1:
            return self._jacobi(op, r, None, self.coarse_sweeps)
        x = self._jacobi(op, r, None, self.smooth)
        coarse = self.levels[level + 1]
        h, w = r.shape[-2:]
        res = F.pad(r - op.apply(x), (0, w % 2, 0, h % 2))
        rc = coarse.m * _restrict_axis(_restrict_axis(res, 2), 3)
        ec = self(rc, level + 1)
        up = _prolong_axis(_prolong_axis(ec, 2), 3)[..., :h, :w]
        return self._jacobi(op, r, x + op.m * up, self.smooth)


def _harmonic_fill(
    x: Tensor, missing: Tensor, tol: float, max_iter: int | None
) -> tuple[Tensor, bool]:
    """Solve the linear-imputation system for the missing pixels.

    Every missing pixel equals the weighted mean of its in-image neighbours, known or missing:
    a symmetric positive definite system (a weighted graph Laplacian with the known pixels as
    boundary), solved for all images and channels at once by conjugate gradients
    preconditioned with a geometric multigrid V-cycle (about ten iterations whatever the
    image size), in float64 on the CPU and float32 on accelerators.
    """
    b_, c, h, w = x.shape
    dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    m = missing.to(dtype).unsqueeze(1).repeat_interleave(c, dim=0)  # (B*C, 1, H, W)
    xs = x.to(dtype).reshape(b_ * c, 1, h, w)
    precond = _Multigrid(m)
    op = precond.levels[0]
    rhs = m * _stencil((1 - m) * xs)
    tiny = torch.finfo(dtype).tiny
    sol = torch.zeros_like(xs)
    r = rhs.clone()
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
    limit = (tol * rhs.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    converged = False
    for _ in range(max_iter if max_iter is not None else 200):
        ap = op.apply(p)
        pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=tiny), 0.0)
        sol = sol + alpha * p
        r = r - alpha * ap
        if bool((r.flatten(1).norm(dim=1).view(-1, 1, 1, 1) <= limit).all()):
            converged = True
            break
        z = precond(r)
        rz_new = (r * z).sum(dim=(1, 2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=tiny), 0.0)
        p = z + beta * p
        rz = rz_new
    filled = torch.where(m > 0, sol, xs).reshape(b_, c, h, w)
    return filled, converged


def noisy_linear_impute(
    x: Tensor,
    missing: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> Tensor:
    """Noisy linear imputation of ROAD (Rong et al., ICML 2022, arXiv:2202.00449).

    Each missing pixel $i$ becomes the weighted mean of its in-image neighbours $N(i)$
    (weight $1/6$ for the direct and $1/12$ for the diagonal ones), whether those are known
    or imputed themselves, plus Gaussian noise:

    $$\\Big(\\sum_{j \\in N(i)} w_{ij}\\Big) x_i - \\sum_{j \\in N(i)} w_{ij} x_j = 0
    \\quad \\forall i \\text{ missing}, \\qquad \\tilde x_i = x_i + \\sigma \\varepsilon_i,
    \\; \\varepsilon_i \\sim \\mathcal N(0, 1)$$

    solved per channel (see :func:`_harmonic_fill`). Known pixels are returned unchanged.

    Args:
        x: images (B, C, H, W) or (C, H, W).
        missing: bool (B, H, W) or (H, W): True where a pixel is removed and imputed.
        noise: $\\sigma$, in the input's units (0 disables the noise).
        generator: a CPU generator for the noise (the noise is drawn on the CPU so that a
            seed gives the same numbers on every device).
        tol: relative residual at which the solver stops.
        max_iter: most solver iterations; default 200 (about ten are typical).

    Returns:
        The imputed images, same shape, dtype and device as ``x``.
    """
    single = x.dim() == 3
    x = check_images(x)
    if not isinstance(missing, Tensor):
        raise InputError(f"missing must be a bool tensor (B, H, W), got {type(missing).__name__}")
    if missing.dim() == 2:
        missing = missing.unsqueeze(0)
    if missing.dim() != 3 or tuple(missing.shape[1:]) != tuple(x.shape[-2:]):
        raise InputError(
            f"missing must have the images' size (B, {x.shape[-2]}, {x.shape[-1]}), got "
            f"{tuple(missing.shape)}"
        )
    missing = missing.to(x.device).bool().expand(x.shape[0], -1, -1)
    filled, converged = _harmonic_fill(x, missing, tol, max_iter)
    if not converged:
        warnings.warn(
            "noisy_linear_impute: the solver stopped at max_iter before reaching tol; "
            "the imputed values are approximate",
            stacklevel=2,
        )
    if noise:
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        filled = filled + missing.unsqueeze(1).to(filled.dtype) * noise * eps.to(filled.dtype)
    out = filled.to(x.dtype)
    return out[0] if single else out


def road(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    *,
    target: object = None,
    order: str = "morf",
    fractions: Sequence[float] | Tensor = ROAD_FRACTIONS,
    noise: float = 0.01,
    seed: int = 0,
    activation: Activation = "softmax",
    batch_size: int = 64,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> CurveResult:
    """ROAD: RemOve And Debias (Rong et al., ICML 2022, arXiv:2202.00449).

    For each fraction $f$, the $\\lfloor fHW + 1/2 \\rfloor$ most relevant pixels
    (``order="morf"``) or least relevant pixels (``order="lerf"``) are removed and filled by
    :func:`noisy_linear_impute`, which leaks no information about the removed pixels'
    shape; the curve is the target's probability after each removal, and ``.mean`` summarises
    it (as pytorch-grad-cam's averaged ROAD does). For MoRF lower is better, for LeRF
    higher; :func:`road_combined` merges the two:

    $$\\mathrm{ROAD}_{\\mathrm{MoRF}} = \\frac{1}{|F|} \\sum_{f \\in F}
    p^c\\big(\\mathrm{impute}(x, \\mathrm{top}_f(M))\\big)$$

    The pixels removed are chosen by rank (a stable sort, so ties go in raster order), so
    each fraction removes exactly that share of the pixels. (pytorch-grad-cam thresholds at
    ``np.percentile`` instead; for maps without ties the two remove the same pixels when the
    fractions are the counts it removes.) Noise is drawn per (image, fraction) from a CPU
    generator seeded with ``seed``, so results do not depend on ``batch_size`` or device.

    Args:
        model: the classifier; used frozen and left unchanged.
        x: images (B, C, H, W) or (C, H, W).
        maps: (B, H, W) saliency maps.
        target: None (top class), an int, or one class per image.
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        fractions: shares of pixels removed, default 0.1, 0.2, ..., 0.9.
        noise: standard deviation of the imputation noise, in input units (0 disables it).
        seed: seed of the noise.
        activation: ``"softmax"``, ``"sigmoid"`` or None.
        batch_size: most imputed images per solve and forward pass.
        tol: relative residual of the imputation solver.
        max_iter: most solver iterations.

    Returns:
        The :class:`CurveResult` (name ``"road-morf"`` or ``"road-lerf"``).
    """
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', got {order!r}")
    x, maps, device = _prepare(model, x, maps, activation, batch_size)
    f = check_fractions(fractions)
    b, c, h, w = x.shape
    counts = torch.floor(f * (h * w) + 0.5).long().to(device)
    ranks = order_ranks(maps, descending=(order == "morf"))
    steps = f.numel()
    generator = torch.Generator().manual_seed(int(seed))
    not_converged = False

    with frozen_eval(model):
        targets, original = _original(model, x, target, activation, batch_size)

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            nonlocal not_converged
            for bi, si in _pairs(b, steps, batch_size):
                bi, si = bi.to(device), si.to(device)
                missing = (ranks[bi] < counts[si].unsqueeze(1)).view(-1, h, w)
                filled, ok = _harmonic_fill(x[bi], missing, tol, max_iter)
                not_converged |= not ok
                if noise:
                    eps = torch.stack(
                        [
                            torch.randn((c, h, w), generator=generator, dtype=torch.float64)
                            for _ in range(bi.numel())
                        ]
                    ).to(device, filled.dtype)
                    filled = filled + missing.unsqueeze(1).to(filled.dtype) * noise * eps
                yield filled.to(x.dtype), targets[bi]

        scores = batched_target_probs(model, batches(), activation).view(b, steps)
    if not_converged:
        warnings.warn(
            "road: the imputation solver stopped at max_iter before reaching tol; "
            "scores are approximate",
            stacklevel=2,
        )
    return CurveResult(f"road-{order}", f.cpu(), scores, original, targets)


def road_combined(morf: CurveResult, lerf: CurveResult) -> Tensor:
    """ROAD's combined score per image: half the gap between LeRF and MoRF, (B,).

    $$\\mathrm{ROAD} = \\tfrac12 \\big(\\overline{p}_{\\mathrm{LeRF}} -
    \\overline{p}_{\\mathrm{MoRF}}\\big)$$

    Higher is better (keeping the unimportant pixels matters little, removing the important
    ones a lot).
    """
    if morf.scores.shape != lerf.scores.shape:
        raise InputError(
            f"morf and lerf curves must have the same shape, got {tuple(morf.scores.shape)} "
            f"and {tuple(lerf.scores.shape)}"
        )
    return (lerf.mean - morf.mean) / 2


def _road_curve(inputs: MetricInputs, order: str, options: dict[str, object]) -> CurveResult:
    """ROAD's curve of one order, computed once per batch and options (the three ROAD
    scores share it)."""
    key = f"road-{order}-{sorted(options.items())!r}"
    if key not in inputs.cache:
        inputs.cache[key] = road(
            inputs.model,
            inputs.x,
            inputs.maps,
            order=order,
            **_on(inputs),
            **options,  # type: ignore[arg-type]
        )
    return inputs.cache[key]


@register_metric(
    "road_morf",
    family="faithfulness",
    higher_is_better=False,
    label="morf",
    summary="mean ROAD MoRF probability",
    option_group="road",
    options_of=road,
)
def _road_morf(inputs: MetricInputs, **options: object) -> Tensor:
    return _road_curve(inputs, "morf", options).mean


@register_metric(
    "road_lerf",
    family="faithfulness",
    higher_is_better=True,
    label="lerf",
    summary="mean ROAD LeRF probability",
    option_group="road",
    options_of=road,
)
def _road_lerf(inputs: MetricInputs, **options: object) -> Tensor:
    return _road_curve(inputs, "lerf", options).mean


@register_metric(
    "road",
    family="faithfulness",
    higher_is_better=True,
    label="road",
    summary="(LeRF - MoRF) / 2",
    option_group="road",
    options_of=road,
)
def _road(inputs: MetricInputs, **options: object) -> Tensor:
    return road_combined(_road_curve(inputs, "morf", options), _road_curve(inputs, "lerf", options))
