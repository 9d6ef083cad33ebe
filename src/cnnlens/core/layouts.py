"""How a layer's activation is laid out, and its reading as channel maps.

CAM methods work on maps (B, C, h, w). A layer's output can be:

* ``"nchw"``: (B, C, h, w), a CNN's convolution;
* ``"nhwc"``: (B, h, w, C), Swin and ConvNeXt blocks, Keras layers;
* ``"tokens"``: (B, N, C), a vision transformer's tokens, with ``p`` leading class or
  register tokens and ``N - p = h * w`` patches (the grid from N and the input size);
  ``"tokens:p"`` says ``p``;
* ``"ncthw"``: (B, C, t, h, w), a video (3-D) CNN.

:func:`decide_layout` reads the layout from the activation and the input (automatic where
only one reading fits) or checks the one the user gave (``layout=``); it raises
:class:`~cnnlens.errors.LayerNotFoundError` naming ``layout=`` rather than misreading.
A video map is handled as (B, C, t * h, w) by the CAM formulas (every spatial sum then runs
over time too) and unfolded to (B, t, h, w) by :meth:`Layout.unfold`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.errors import LayerNotFoundError

__all__ = ["LAYOUTS", "Layout", "decide_layout", "input_size", "parse_layout"]

LAYOUTS = ("nchw", "nhwc", "tokens", "ncthw")
_MAX_PREFIX = 8  # class + distillation + register tokens considered by the automatic grid
# modules whose output is (B, C, h, w) by construction in torch
_NCHW_MODULES = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.modules.batchnorm._BatchNorm,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


@dataclass(frozen=True)
class Layout:
    """A decided layout: ``kind`` of :data:`LAYOUTS`, ``prefix`` tokens before the grid,
    the map grid ``(h, w)`` and the number of frames ``t`` (video)."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0
    frames: int = 1

    def read(self, act: Tensor) -> Tensor:
        """The activation as channel maps (B, C, h, w) (video: (B, C, t * h, w))."""
        if self.kind == "nchw":
            return act
        if self.kind == "nhwc":
            return act.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            h, w = self.grid
            patches = act[:, self.prefix :]
            return patches.transpose(1, 2).reshape(act.shape[0], act.shape[2], h, w)
        b, c, t, h, w = act.shape
        return act.reshape(b, c, t * h, w)

    def write(self, maps: Tensor, like: Tensor) -> Tensor:
        """Channel maps (B, C, h, w) back in the layer's layout (the inverse of :meth:`read`;
        the class/register tokens taken from ``like``)."""
        if self.kind == "nchw":
            return maps
        if self.kind == "nhwc":
            return maps.permute(0, 2, 3, 1)
        if self.kind == "tokens":
            patches = maps.flatten(2).transpose(1, 2).to(like.dtype)
            return torch.cat([like[: maps.shape[0], : self.prefix], patches], dim=1)
        return maps.reshape(like.shape[0], like.shape[1], self.frames, -1, like.shape[-1])

    def unfold(self, maps: Tensor) -> Tensor:
        """Maps (..., t * h, w) of a video layer as (..., t, h, w); others unchanged."""
        if self.kind != "ncthw":
            return maps
        return maps.reshape(*maps.shape[:-2], self.frames, -1, maps.shape[-1])

    def to_input(self, maps: Tensor, size: tuple[int, ...]) -> Tensor:
        """Maps (n, m, h, w) (video (n, m, t * h, w)) resized to the input's spatial ``size``
        ((H, W) or (T, H, W)): bilinear, trilinear for a video."""
        if self.kind == "ncthw":
            vol = self.unfold(maps)
            if tuple(vol.shape[-3:]) == tuple(size):
                return vol
            return F.interpolate(vol, size=size, mode="trilinear", align_corners=False)
        if tuple(maps.shape[-2:]) == tuple(size):
            return maps
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def parse_layout(layout: str | None) -> tuple[str | None, int | None]:
    """``(kind, prefix)`` of a ``layout=`` value: None, one of :data:`LAYOUTS`, or
    ``"tokens:p"``."""
    if layout is None:
        return None, None
    if not isinstance(layout, str):
        raise LayerNotFoundError(
            f"layout must be one of {', '.join(LAYOUTS)} or 'tokens:p', got {type(layout).__name__}"
        )
    kind, _, rest = layout.strip().lower().partition(":")
    if kind not in LAYOUTS or (rest and (kind != "tokens" or not rest.isdigit())):
        raise LayerNotFoundError(
            f"layout must be one of {', '.join(LAYOUTS)} or 'tokens:p' (p leading class or "
            f"register tokens), got {layout!r}"
        )
    return kind, int(rest) if rest else None


def input_size(x: Tensor) -> tuple[int, int]:
    """The (H, W) of an input batch as the engine holds it: (B, C, H, W) or a video's
    (B, C, T, H, W) (a Keras model's (B, H, W, C) batch is made (B, C, H, W) on entry, see
    :mod:`cnnlens.core.keras`)."""
    return int(x.shape[-2]), int(x.shape[-1])


def _fits(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether a (h, w) grid is a downsampling of the input ``size`` with one factor."""
    hh, ww = size
    if not (1 <= h <= hh and 1 <= w <= ww):
        return False
    fh, fw = hh / h, ww / w
    return abs(fh - fw) <= 0.25 * max(fh, fw)


def _token_grids(n: int, size: tuple[int, int], prefix: int | None) -> list[tuple[int, int, int]]:
    """``(prefix, h, w)`` readings of ``n`` tokens as a patch grid of the input: equal patch
    sides that divide the input."""
    hh, ww = size
    out = []
    for p in range(_MAX_PREFIX + 1) if prefix is None else [prefix]:
        m = n - p
        for patch in range(1, min(hh, ww) + 1):
            if hh % patch == 0 and ww % patch == 0 and (hh // patch) * (ww // patch) == m:
                out.append((p, hh // patch, ww // patch))
                break
    return out


def decide_layout(
    act: Tensor,
    x: Tensor,
    name: str,
    layout: str | None = None,
    *,
    module: nn.Module | None = None,
    channels_last: bool = False,
    strict: bool = True,
) -> Layout | None:
    """The :class:`Layout` of layer ``name``'s activation ``act`` for input ``x``.

    Automatic (``layout`` None) when one reading fits: a 5-D output of a video input is
    ``ncthw``; a 4-D output is ``nchw`` or ``nhwc`` when only one of them is a downsampling
    of the input (both fit only when channels equal the grid's sides: then a torch layer of
    a known kind or a torch model is ``nchw``, a Keras one (``channels_last``: its layers
    output channels-last maps) ``nhwc``);
    3-D output is ``tokens`` when one prefix of at most 8 tokens leaves a patch grid.

    Raises:
        LayerNotFoundError: the batch differs from x's (the layer runs on regions, not
            images), or no reading or several fit (the message names ``layout=``); with
            ``strict=False`` None is returned instead.
    """
    kind, prefix = parse_layout(layout)
    video = x.dim() == 5
    size = input_size(x)
    shape = tuple(act.shape)

    def fail(why: str) -> None:
        if strict:
            raise LayerNotFoundError(f"layer {name!r} outputs shape {shape}: {why}")

    if act.shape[0] != x.shape[0]:
        fail(
            f"its batch is not the input's ({x.shape[0]}), so it does not map images (it runs "
            "on regions or proposals); choose a layer of the backbone"
        )
        return None
    want = {"nchw": 4, "nhwc": 4, "tokens": 3, "ncthw": 5}
    if kind is not None and act.dim() != want[kind]:
        fail(f"layout={layout!r} needs a {want[kind]}-D output")
        return None
    if act.dim() == 5 or kind == "ncthw":
        if not video:
            fail("a 5-D (video) activation but the input is not a video (B, C, T, H, W)")
            return None
        return Layout("ncthw", (shape[3], shape[4]), frames=shape[2])
    if video:
        fail("the input is a video (B, C, T, H, W) but the layer is not 5-D (B, C, t, h, w)")
        return None
    if act.dim() == 4:
        return _four_d(act, name, kind, size, module, channels_last, fail)
    if act.dim() == 3:
        grids = _token_grids(shape[1], size, prefix)
        if len(grids) == 1:
            p, h, w = grids[0]
            return Layout("tokens", (h, w), prefix=p)
        fail(
            (
                "its tokens fit no patch grid of the input"
                if not grids
                else "its tokens fit several grids ("
                + ", ".join(f"{p} leading tokens" for p, _, _ in grids)
                + ")"
            )
            + "; say layout='tokens:p' with p the number of class/register tokens"
        )
        return None
    fail(
        "not a (B, C, h, w) map, (B, h, w, C) map or (B, N, C) tokens; choose a "
        "convolutional, transformer-block or normalization layer"
    )
    return None


def _four_d(act, name, kind, size, module, channels_last, fail) -> Layout | None:
    """The 4-D case of :func:`decide_layout`."""
    _, d1, d2, d3 = act.shape
    if kind == "nchw":
        return Layout("nchw", (d2, d3))
    if kind == "nhwc":
        return Layout("nhwc", (d1, d2))
    nchw, nhwc = _fits(d2, d3, size), _fits(d1, d2, size)
    if nchw and nhwc:
        if channels_last and not isinstance(module, _NCHW_MODULES):
            return Layout("nhwc", (d1, d2))
        return Layout("nchw", (d2, d3))
    if nchw:
        return Layout("nchw", (d2, d3))
    if nhwc:
        return Layout("nhwc", (d1, d2))
    fail(
        f"neither (B, C, h, w) nor (B, h, w, C) is a downsampling of the input {size}; say "
        "layout='nchw' or layout='nhwc'"
    )
    return None
