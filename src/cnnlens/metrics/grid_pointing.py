"""Grid pointing game: localization without masks, on mosaics of images of different classes.

Böhle et al. ("B-cos networks", CVPR 2022, arXiv:2205.10268) and Rao et al. ("Towards better
understanding attribution methods", CVPR 2022, arXiv:2205.10435) tile a $g \\times g$ grid
with images of *different* classes and explain the mosaic for the class of one cell; a map
that is right puts its positive mass into that cell:

$$\\mathrm{GPG} = \\frac{\\sum_{p \\in \\mathrm{cell}} \\Phi_p^+}{\\sum_p \\Phi_p^+}$$

:func:`make_mosaics` builds the mosaics from a labelled batch; :func:`grid_pointing_game`
scores maps of them. The registered scorer does both for each image of a batch: the image
goes into a random cell among other images of other classes, and the mosaic is explained
for the image's class. Chance level is $1/g^2$ (a constant map scores exactly that).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlens.errors import InputError
from cnnlens.metrics._common import check_images, check_maps
from cnnlens.metrics.registry import MetricInputs, register_metric

__all__ = ["cell_masks", "grid_pointing_game", "make_mosaics"]


def _check_grid(grid: int) -> None:
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise InputError(f"grid must be an integer >= 2 (cells per side), got {grid!r}")


def cell_masks(size: tuple[int, int], cells: Tensor, grid: int = 2) -> Tensor:
    """Bool masks (B, H, W), True on cell ``cells[b]`` (row-major: 0 top-left, then right)
    of a ``grid`` x ``grid`` split of an H x W mosaic (cell edges at ``round(k H / g)``)."""
    _check_grid(grid)
    h, w = size
    cells = torch.as_tensor(cells).long().flatten()
    if bool(((cells < 0) | (cells >= grid * grid)).any()):
        raise InputError(f"cells must lie in 0..{grid * grid - 1}, got {cells.tolist()[:10]}")
    rows = (torch.arange(h) * grid) // h  # the grid row of each pixel row
    cols = (torch.arange(w) * grid) // w
    row, col = cells // grid, cells % grid
    return (rows.view(1, -1, 1) == row.view(-1, 1, 1)) & (cols.view(1, 1, -1) == col.view(-1, 1, 1))


def grid_pointing_game(maps: Tensor, cells: Tensor, *, grid: int = 2) -> Tensor:
    """Grid pointing game (Böhle et al. 2022; Rao et al. 2022): the share of the map's
    positive mass inside the correct cell of a ``grid`` x ``grid`` mosaic.

    $$\\mathrm{GPG} = \\frac{\\sum_{p \\in \\mathrm{cell}} \\max(\\Phi_p, 0)}
    {\\sum_p \\max(\\Phi_p, 0)}$$

    Args:
        maps: (B, H, W) maps of the mosaics (any sign: only the positive part counts).
        cells: (B,) index of the explained class's cell, row-major.
        grid: cells per side.

    Returns:
        float (B,) in [0, 1]; a map with no positive value scores chance, $1/g^2$ (with a
        warning: it says nothing about where the class is).

    Example:
        >>> mosaics, cells, labels = make_mosaics(x, y)                   # doctest: +SKIP
        >>> maps = cnnlens.explain(model, mosaics, "gradcam", target=labels).maps
        >>> grid_pointing_game(maps, cells).mean()
    """
    maps = check_maps(maps)
    cells = torch.as_tensor(cells, device=maps.device).long().flatten()
    if cells.numel() != maps.shape[0]:
        raise InputError(f"cells must hold one cell per map ({maps.shape[0]}), got {cells.numel()}")
    inside = cell_masks(tuple(maps.shape[-2:]), cells.cpu(), grid).to(maps.device)
    pos = maps.double().clamp(min=0).flatten(1)
    total = pos.sum(dim=1)
    share = (pos * inside.flatten(1)).sum(dim=1) / total.clamp(min=1e-300)
    empty = total == 0
    if bool(empty.any()):
        warnings.warn(
            f"grid_pointing_game: map(s) {empty.nonzero().flatten().tolist()[:10]} have no "
            f"positive value; scored as chance (1/{grid * grid})",
            stacklevel=2,
        )
    return torch.where(empty, torch.full_like(share, 1.0 / grid**2), share).float()


def make_mosaics(
    x: Tensor,
    labels: Tensor,
    *,
    grid: int = 2,
    n: int | None = None,
    first: Tensor | None = None,
    seed: int = 0,
    resize: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mosaics of ``grid`` x ``grid`` images of pairwise different classes.

    Args:
        x: images (N, C, H, W).
        labels: (N,) class of each image.
        grid: cells per side.
        n: number of mosaics (default: one per image of ``first``, else N).
        first: (M,) image indices that must appear, one per mosaic, each in a random cell
            (default: random images).
        seed: seed of the cells and of the other images drawn.
        resize: shrink each mosaic to H x W (for models with a fixed input size); default
            keep the images' resolution (mosaics of gH x gW).

    Returns:
        mosaics (M, C, gH, gW) (or (M, C, H, W)), cells (M,) of the ``first`` image,
        that image's label (M,), and the indices (M, g*g) of the images in each cell.

    Raises:
        InputError: when there are fewer than g*g classes, or an image's class leaves no
            g*g - 1 images of other, pairwise different classes.
    """
    _check_grid(grid)
    x = check_images(x)
    labels = torch.as_tensor(labels).long().flatten().cpu()
    if labels.numel() != x.shape[0]:
        raise InputError(
            f"labels must hold one class per image ({x.shape[0]}), got {labels.numel()}"
        )
    k = grid * grid
    classes = labels.unique()
    if classes.numel() < k:
        raise InputError(
            f"a {grid}x{grid} mosaic needs images of {k} different classes; the batch has "
            f"{classes.numel()} ({classes.tolist()})"
        )
    g = torch.Generator().manual_seed(int(seed))
    if first is None:
        m = x.shape[0] if n is None else int(n)
        first = torch.randint(0, x.shape[0], (m,), generator=g)
    first = torch.as_tensor(first).long().flatten().cpu()
    members = torch.empty(first.numel(), k, dtype=torch.long)
    cells = torch.randint(0, k, (first.numel(),), generator=g)
    for i, idx in enumerate(first.tolist()):
        # k - 1 other classes at random, then one random image of each
        others = classes[classes != labels[idx]]
        chosen = others[torch.randperm(others.numel(), generator=g)[: k - 1]]
        picks = []
        for c in chosen.tolist():
            pool = (labels == c).nonzero().flatten()
            picks.append(int(pool[torch.randint(0, pool.numel(), (1,), generator=g)]))
        picks.insert(int(cells[i]), idx)
        members[i] = torch.tensor(picks)
    tiles = x[members.to(x.device)]  # (M, k, C, H, W)
    mm, _, c, h, w = tiles.shape
    mosaics = (
        tiles.view(mm, grid, grid, c, h, w)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(mm, c, grid * h, grid * w)
    )
    if resize:
        mosaics = F.interpolate(mosaics, size=(h, w), mode="bilinear", align_corners=False)
    return mosaics, cells, labels[first], members


@register_metric(
    "grid_pointing_game",
    family="localization",
    higher_is_better=True,
    label="grid-PG",
    summary="share of positive mass in the class's cell of a 2x2 mosaic",
    needs_explain=True,
)
def _grid_pointing_game(inputs: MetricInputs, grid: int = 2, **options: Any) -> Tensor:
    if inputs.explain is None or inputs.target is None:
        raise InputError("grid_pointing_game explains mosaics; it needs an explain fn and targets")
    target = inputs.target.cpu()
    classes = int(target.unique().numel())
    if classes < grid * grid:
        # a mosaic needs grid * grid images of different classes: this batch cannot be scored
        warnings.warn(
            f"grid_pointing_game: a {grid}x{grid} mosaic needs images of {grid * grid} "
            f"different classes; the batch has {classes}, so its images score NaN "
            "(use larger batches)",
            RuntimeWarning,
            stacklevel=2,
        )
        return torch.full((target.numel(),), float("nan"), device=inputs.x.device)
    first = torch.arange(target.numel())
    mosaics, cells, labels, _ = make_mosaics(
        inputs.x, target, grid=grid, first=first, seed=inputs.seed, **options
    )
    bs = inputs.batch_size
    maps = torch.cat(
        [
            inputs.explain(mosaics[s : s + bs], labels[s : s + bs].to(mosaics.device))
            for s in range(0, mosaics.shape[0], bs)
        ]
    )
    return grid_pointing_game(maps, cells, grid=grid)
