"""Random transformations applied to the image before every forward pass.

Optimizing an image that must keep exciting the network while it is padded, shifted, scaled
and rotated a little each step suppresses the high-frequency patterns a network also
responds to ("transformation robustness", Olah et al., 2017; Mordvintsev et al., 2015).

Each transform is a callable ``t(images, generator) -> images`` on display-space tensors
(B, C, H, W); randomness comes only from the given :class:`torch.Generator`, one draw per step
shared by the batch, so a run is reproducible from its seed and the global RNG is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Transform = Callable[[Tensor, torch.Generator], Tensor]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


@dataclass(frozen=True)
class Pad:
    """Pad every side by ``pixels`` with a constant (mid-grey by default) or by reflection."""

    pixels: int
    mode: str = "constant"
    value: float = 0.5

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.pixels <= 0:
            return x
        p = (self.pixels,) * 4
        if self.mode == "constant":
            return F.pad(x, p, mode="constant", value=self.value)
        return F.pad(x, p, mode=self.mode)


@dataclass(frozen=True)
class Jitter:
    """Random crop that removes ``pixels`` rows and columns in all: a shift of 0..pixels."""

    pixels: int

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        d = min(self.pixels, x.shape[2] - 1, x.shape[3] - 1)
        if d <= 0:
            return x
        oy, ox = (int(v) for v in torch.randint(0, d + 1, (2,), generator=generator))
        return x[:, :, oy : oy + x.shape[2] - d, ox : ox + x.shape[3] - d]


@dataclass(frozen=True)
class RandomScale:
    """Resize by a factor drawn uniformly from [low, high] (bilinear)."""

    low: float = 0.95
    high: float = 1.05

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        s = _uniform(generator, self.low, self.high)
        size = (max(1, round(x.shape[2] * s)), max(1, round(x.shape[3] * s)))
        if size == tuple(x.shape[2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class RandomRotate:
    """Rotate about the centre by an angle drawn uniformly from [-degrees, degrees]
    (bilinear, border pixels repeated)."""

    degrees: float = 5.0

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.degrees <= 0:
            return x
        a = math.radians(_uniform(generator, -self.degrees, self.degrees))
        h, w = x.shape[2:]
        # affine_grid works in normalized coordinates; correct for a non-square aspect.
        theta = torch.tensor(
            [[math.cos(a), -math.sin(a) * h / w, 0.0], [math.sin(a) * w / h, math.cos(a), 0.0]],
            dtype=x.dtype,
            device=x.device,
        )
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def standard_transforms(size: int) -> Compose:
    """The default robustness transforms for images of side ``size``.

    Pad, jitter, scale by ±5 %, rotate by ±5°, jitter again; the shifts scale with the image
    (for 224 pixels: pad 12, jitter 8 then 4; for 28: pad 2, jitter 1 then 1).
    """
    pad = max(1, round(size * 12 / 224))
    jitter = max(1, round(size * 8 / 224))
    return Compose(
        [
            Pad(pad),
            Jitter(jitter),
            RandomScale(0.95, 1.05),
            RandomRotate(5.0),
            Jitter(max(1, jitter // 2)),
        ]
    )
