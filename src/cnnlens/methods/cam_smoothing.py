"""Smoothing options any CAM method takes: ``eigen_smooth`` and ``aug_smooth``.

* ``eigen_smooth``: the map is the projection of the method's per-channel contributions
  (``w_k A^k`` for Grad-CAM, ``g ⊙ A`` for HiResCAM, ...) on their first principal
  component instead of their sum (pytorch-grad-cam's ``eigen_smooth``):

  $$M = \\tilde Z v_1, \\quad \\tilde Z = Z - \\bar Z, \\quad \\tilde Z = U \\Sigma V^\\top$$

  with ``Z`` the (hw, C) matrix of contributions. The SVD's sign is arbitrary; the map is
  flipped when its most negative value is larger in magnitude than its largest (the sign
  correction of :class:`~cnnlens.methods.cam.EigenCAM`; pytorch-grad-cam keeps LAPACK's sign).
* ``aug_smooth``: test-time augmentation. The method runs on transformed copies of the input
  (horizontal flip x pixel-value factors, as pytorch-grad-cam's default
  ``HorizontalFlip() x Multiply([0.9, 1, 1.1])``; optionally spatial rescales), each map is
  mapped back to the input's frame (flipped back, resized back) and the normalized maps are
  averaged, then normalized again:

  $$M = \\mathrm{norm}\\Big(\\frac{1}{|T|}\\sum_{t \\in T} t^{-1}\\big(M(t(x))\\big)\\Big)$$

  The classes explained are resolved once on the untransformed input and the same classes are
  explained on every copy (pytorch-grad-cam re-picks the top class of each copy when no
  target is given). ``raw`` is the average before the last normalization, at input size.

Both are reached through :func:`smooth_cam` (``cnnlens.explain(..., aug_smooth=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from cnnlens.core.checks import check_float
from cnnlens.core.explanation import Explanation
from cnnlens.core.outputs import OutputLike
from cnnlens.core.targets import TargetLike
from cnnlens.errors import InputError
from cnnlens.methods.base import BaseCAM, Explainer, normalize_maps, upsample
from cnnlens.methods.engine import first_component

__all__ = ["SMOOTHING_OPTIONS", "SmoothedCAM", "first_component", "smooth_cam"]

#: the option names :func:`cnnlens.explain` hands to :func:`smooth_cam`
SMOOTHING_OPTIONS = ("aug_smooth", "eigen_smooth", "aug_factors", "aug_flips", "aug_scales")


class SmoothedCAM(Explainer):
    """A CAM method with ``eigen_smooth`` and/or ``aug_smooth`` (see the module).

    Args:
        method: a :class:`~cnnlens.methods.base.BaseCAM` instance.
        aug_smooth: average the maps over the augmented copies.
        eigen_smooth: first principal component of the contributions instead of their sum.
        aug_factors: pixel-value factors of the copies (pytorch-grad-cam: 0.9, 1, 1.1).
        aug_flips: with the horizontally flipped copies too.
        aug_scales: spatial size factors of the copies (1.0: as given); maps are resized
            back bilinearly.

    Example:
        >>> SmoothedCAM(GradCAM(model), aug_smooth=True)(x, target=3).maps  # doctest: +SKIP
    """

    uses_layer = True

    def __init__(
        self,
        method: BaseCAM,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        aug_factors: Sequence[float] = (0.9, 1.0, 1.1),
        aug_flips: bool = True,
        aug_scales: Sequence[float] = (1.0,),
    ) -> None:
        if not isinstance(method, BaseCAM):
            raise InputError(
                "aug_smooth and eigen_smooth apply to CAM methods (a layer's map), got "
                f"{type(method).__name__}"
            )
        super().__init__(method.model, eval_mode=method.eval_mode)
        self.method = method
        self.name = method.name
        self.aug_smooth = bool(aug_smooth)
        self.eigen_smooth = bool(eigen_smooth)
        self.factors = [
            check_float("aug_factors", f, minimum=0.0, strict_minimum=True) for f in aug_factors
        ]
        self.scales = [
            check_float("aug_scales", s, minimum=0.0, strict_minimum=True) for s in aug_scales
        ]
        if not self.factors or not self.scales:
            raise InputError("aug_factors and aug_scales must each hold at least one number")
        self.flips = [False, True] if aug_flips else [False]

    def __call__(
        self,
        x: Tensor,
        target: TargetLike = None,
        *,
        topk: int | None = None,
        output: OutputLike = None,
    ) -> Explanation:
        if not self.eigen_smooth:
            return self._augmented(x, target, topk, output)
        used = [0]

        def reduce(contrib: Tensor) -> Tensor:
            used[0] += 1
            return first_component(contrib)

        self.method.reduce_channels = reduce  # an instance attribute for this call only
        try:
            exp = self._augmented(x, target, topk, output)
        finally:
            del self.method.reduce_channels
        if not used[0]:
            raise InputError(
                f"eigen_smooth does not apply to {self.method.name!r}, whose map is not a sum "
                "of channel contributions"
            )
        return exp

    def _augmented(
        self, x: Tensor, target: TargetLike, topk: int | None, output: OutputLike
    ) -> Explanation:
        first = self.method(x, target, topk=topk, output=output)
        if not self.aug_smooth:
            return first
        # the classes of the untransformed input; a (B, K) tensor keeps the K axis
        fixed: Any = (
            target if callable(target) and not isinstance(target, Tensor) else first.targets
        )
        size = tuple(first.maps.shape[-2:])
        total = torch.zeros_like(first.maps)
        last = self.method.channels_last_input  # a Keras model's (B, H, W, C) images
        for scale in self.scales:
            for flip in self.flips:
                for factor in self.factors:
                    xt = self._transform(x, scale, flip, factor, last)
                    maps = self.method(xt, fixed, output=output).maps
                    if flip:
                        maps = maps.flip(-1)
                    total += upsample(maps, size)  # type: ignore[arg-type]
        mean = total / (len(self.scales) * len(self.flips) * len(self.factors))
        return Explanation(
            maps=normalize_maps(mean),
            raw=mean,
            targets=first.targets,
            scores=first.scores,
            method=first.method,
            layer=first.layer,
            extras={"aug_smooth": len(self.scales) * len(self.flips) * len(self.factors)},
        )

    @staticmethod
    def _transform(
        x: Tensor, scale: float, flip: bool, factor: float, channels_last: bool = False
    ) -> Tensor:
        xt = x if x.dim() == 4 else x.unsqueeze(0)
        if channels_last:
            xt = xt.permute(0, 3, 1, 2)
        if scale != 1.0:
            h, w = xt.shape[-2:]
            xt = upsample(xt, (max(1, round(h * scale)), max(1, round(w * scale))))
        if flip:
            xt = xt.flip(-1)
        xt = xt * factor if factor != 1.0 else xt
        return xt.permute(0, 2, 3, 1) if channels_last else xt


def smooth_cam(method: Explainer, **options: Any) -> Explainer:
    """``method`` wrapped in :class:`SmoothedCAM` when a smoothing option asks for it."""
    unknown = set(options) - set(SMOOTHING_OPTIONS)
    if unknown:
        raise InputError(f"unknown smoothing options {sorted(unknown)}; known: {SMOOTHING_OPTIONS}")
    if not options.get("aug_smooth") and not options.get("eigen_smooth"):
        return method
    return SmoothedCAM(method, **options)  # type: ignore[arg-type]
