"""Video explanations: overlays of a few frames of a clip, in one row of a figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from cnnlens.errors import InputError
from cnnlens.viz.figures import Panel, grid
from cnnlens.viz.overlay import overlay

__all__ = ["video_frames"]


def video_frames(
    video: Any,
    maps: Any,
    *,
    frames: int | Sequence[int] = 4,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    preset: Any = None,
    title: str | None = None,
) -> Figure:
    """Overlays of a video explanation on a few of its frames, one row.

    Args:
        video: one clip, a tensor (C, T, H, W) as fed to the model (without the batch axis).
        maps: its maps (T, H, W) in [0, 1] (``exp.maps[i]`` of a video explanation).
        frames: how many frames, evenly spaced, or the frame indices to show.
        cmap, alpha, preset: see :func:`~cnnlens.viz.overlay.overlay`.
        title: figure title.

    Example:
        >>> exp = cnnlens.explain(r3d, clips, "gradcam", layer="layer4")    # doctest: +SKIP
        >>> video_frames(clips[0], exp.maps[0], frames=4)
    """
    video = torch.as_tensor(video)
    maps = torch.as_tensor(maps)
    if video.dim() != 4 or maps.dim() != 3 or video.shape[1] != maps.shape[0]:
        raise InputError(
            f"video_frames takes one clip (C, T, H, W) and its maps (T, H, W); got "
            f"{tuple(video.shape)} and {tuple(maps.shape)}"
        )
    t = int(maps.shape[0])
    if isinstance(frames, int):
        if frames < 1:
            raise InputError(f"frames must be at least 1, got {frames}")
        picks = sorted({round(i * (t - 1) / max(frames - 1, 1)) for i in range(min(frames, t))})
    else:
        picks = [int(f) for f in frames]
        if not picks or any(not -t <= f < t for f in picks):
            raise InputError(f"frames must be indices in [0, {t}); got {picks}")
    cells = [
        Panel(overlay(video[:, f], maps[f], cmap=cmap, alpha=alpha, preset=preset)) for f in picks
    ]
    return grid([cells], col_labels=[f"frame {f % t}" for f in picks], title=title)
