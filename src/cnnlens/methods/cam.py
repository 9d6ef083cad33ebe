"""Class activation maps: CAM and the Grad-CAM family.

Each method only says how it turns a layer's activations ``A`` (B, C, h, w) and the gradient
of the target score ``dy/dA`` into a map; hooks, targets, upsampling and normalization live
once in :class:`cnnlens.methods.base.BaseCAM`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from cnnlens.core.checks import check_optional_int
from cnnlens.core.explanation import Explanation
from cnnlens.core.layers import LayersLike
from cnnlens.core.registry import register
from cnnlens.core.targets import TargetLike
from cnnlens.errors import InputError, ModelError
from cnnlens.methods.base import BaseCAM, CAMContext

_EPS = 1e-7


@register("cam")
class CAM(BaseCAM):
    """Class Activation Mapping (Zhou et al., 2016, arXiv:1512.04150).

    For a network whose chosen layer feeds global average pooling and one linear layer,

    $$M^c_{ij} = \\sum_k w^c_k A^k_{ij}$$

    with ``w^c`` the linear layer's weights of class ``c``. The pooling is checked on the real
    forward pass (the linear layer's input must equal the spatial mean of the activations,
    or of their ReLU when the forward applies one between the layer and the pooling, as
    torchvision's DenseNet does: then ``A`` is the ReLU'd activations); a model without that
    head raises :class:`ModelError`.

    Args:
        top_channels: keep only the ``k`` channels with the largest mean activation per image.

    Example:
        >>> CAM(model)(x, target=3).maps            # doctest: +SKIP
    """

    needs_grad: ClassVar[bool] = False
    keras_refusal: ClassVar[str] = (
        "its class weights are read from a torch nn.Linear head; use gradcam, which equals "
        "CAM on a global-average-pooling and Dense head"
    )

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        top_channels: int | None = None,
        optimize: bool | None = None,
        eval_mode: bool = True,
        layout: str | None = None,
    ):
        super().__init__(model, layer, optimize=optimize, eval_mode=eval_mode, layout=layout)
        self.top_channels = check_optional_int("top_channels", top_channels)
        self._linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not self._linears:
            raise ModelError(
                "cam needs global average pooling followed by one linear layer, but the model "
                f"{type(model).__name__} has no nn.Linear; use gradcam instead"
            )

    def extra_modules(self) -> list[tuple[str, nn.Module]]:
        return self._linears

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        weight, acts = self._head_weight(acts, ctx)
        k = ctx.k
        cls = ctx.targets.indices[:, k].to(acts.device)
        if bool((cls < 0).any()):
            raise InputError("cam needs class indices as target, not a callable")
        w = weight[cls]  # (B, C)
        if self.top_channels is not None and self.top_channels < acts.shape[1]:
            keep = acts.mean(dim=(2, 3)).topk(self.top_channels, dim=1).indices
            w = torch.zeros_like(w).scatter(1, keep, w.gather(1, keep))
        return self.reduce_channels(w[:, :, None, None] * acts)

    def _head_weight(self, acts: Tensor, ctx: CAMContext) -> tuple[Tensor, Tensor]:
        """The weight of the linear layer that takes the spatial mean of ``acts`` (of the
        linear layers that ran, the one whose input is that mean, whatever their order) and
        the activations it pools: ``acts``, or ``ReLU(acts)`` when a functional ReLU sits
        between the layer and the pooling (torchvision's DenseNet:
        ``F.relu(features)`` then pooling), so the map is built from what the pooling saw."""
        cap = ctx.capture
        ran = [(name, m) for name, m in self._linears if name in cap.inputs]
        for seen in (acts, acts.clamp(min=0)):
            pooled = seen.mean(dim=(2, 3))
            for name, module in ran:
                # a half-precision model rounds the pooled features: tolerance by its dtype
                rel = max(1e-3, 8 * torch.finfo(cap.inputs[name].dtype).eps)
                tol = rel * (pooled.abs().max() + 1.0)
                feats = cap.inputs[name].detach().float()
                if feats.shape[0] != acts.shape[0] or feats[0].numel() != pooled.shape[1]:
                    continue
                if bool(((feats.reshape(pooled.shape) - pooled).abs() <= tol).all()):
                    return module.weight.detach().float(), seen
        names = ", ".join(repr(n) for n, _ in ran) or "none ran"
        raise ModelError(
            f"cam needs layer {ctx.layer!r} to feed global average pooling and then one "
            f"linear layer, but no linear layer takes the spatial mean of that layer (linear "
            f"layers: {names}); use gradcam, or pick the last convolutional layer"
        )


@register("gradcam")
class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al., 2017, arXiv:1610.02391).

    $$w^c_k = \\frac{1}{Z}\\sum_{i,j} \\frac{\\partial y^c}{\\partial A^k_{ij}}, \\qquad
    M^c = \\mathrm{ReLU}\\Big(\\sum_k w^c_k A^k\\Big)$$

    Example:
        >>> GradCAM(model, layer="layer4")(x, target=[281, 243]).maps   # doctest: +SKIP
    """

    def channel_weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        return grads.mean(dim=(2, 3), keepdim=True)


@register("gradcam++")
class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al., 2018, arXiv:1710.11063), Eq. 19 with the
    exponential-score closed form for the higher-order terms.

    $$\\alpha^{kc}_{ij} = \\frac{g^2_{ij}}{2 g^2_{ij} + \\sum_{ab} A^k_{ab}\\, g^3_{ij}},
    \\qquad w^c_k = \\sum_{ij} \\alpha^{kc}_{ij}\\,\\mathrm{ReLU}(g_{ij})$$

    where ``g = dy^c/dA^k``; ``alpha`` is zero where the gradient is zero.
    """

    def channel_weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        g2 = grads.pow(2)
        g3 = g2 * grads
        total = acts.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + total * g3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (alpha * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)


@register("xgradcam")
class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al., 2020, arXiv:2008.02312).

    $$w^c_k = \\sum_{ij} \\frac{A^k_{ij}}{\\sum_{ab} A^k_{ab}}
    \\frac{\\partial y^c}{\\partial A^k_{ij}}$$
    """

    def channel_weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        total = acts.sum(dim=(2, 3), keepdim=True)
        return (grads * acts).sum(dim=(2, 3), keepdim=True) / (total + _EPS)


@register("hirescam")
class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin, 2020, arXiv:2011.08891): the element-wise product of
    gradients and activations, summed over channels (no spatial averaging).

    $$M^c_{ij} = \\sum_k \\frac{\\partial y^c}{\\partial A^k_{ij}} A^k_{ij}$$
    """

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        return self.reduce_channels(grads * acts)


@register("layercam")
class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al., 2021, IEEE TIP 30:5875): spatial weights from the positive
    gradients, suited to shallow layers.

    $$M^c_{ij} = \\sum_k \\mathrm{ReLU}\\Big(\\frac{\\partial y^c}{\\partial A^k_{ij}}\\Big)
    A^k_{ij}$$
    """

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        return self.reduce_channels(grads.clamp(min=0) * acts)


@register("eigencam")
class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin, 2020, arXiv:2008.00299): the projection of the
    activations on their first principal component; class-agnostic and gradient-free.

    $$M = (\\tilde A V_1)\\ \\text{reshaped to}\\ (h, w), \\quad
    \\tilde A = A^\\top - \\bar A, \\ \\tilde A = U \\Sigma V^\\top$$

    The SVD's sign is arbitrary; with ``sign_correction`` (default) the map is flipped when
    its most negative value is larger in magnitude than its largest (Chung & Ying, 2025).
    """

    needs_grad: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        sign_correction: bool = True,
        optimize: bool | None = None,
        eval_mode: bool = True,
        layout: str | None = None,
    ):
        super().__init__(model, layer, optimize=optimize, eval_mode=eval_mode, layout=layout)
        self.sign_correction = sign_correction
        self._cache: dict[str, Tensor] = {}

    def cam(self, acts: Tensor, grads: Tensor | None, ctx: CAMContext) -> Tensor:
        if ctx.k > 0 and ctx.layer in self._cache:  # class-agnostic: same map for all K
            return self._cache[ctx.layer]
        b, c, h, w = acts.shape
        flat = acts.reshape(b, c, h * w).transpose(1, 2).double()  # (B, hw, C)
        flat = flat - flat.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(flat, full_matrices=False)
        proj = (flat @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)  # (B, hw)
        if self.sign_correction:
            flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
            proj = torch.where(flip[:, None], -proj, proj)
        out = proj.reshape(b, h, w).float()
        self._cache[ctx.layer] = out
        return out

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        try:
            return super().explain_batch(x, target, topk)
        finally:
            self._cache.clear()  # one SVD per layer and batch; nothing kept after the call
