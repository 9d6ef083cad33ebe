"""SmoothGrad, SmoothGrad-squared and VarGrad: a wrapper around any gradient method."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cnnlens.core.checks import check_choice, check_float, check_int
from cnnlens.core.explanation import Explanation
from cnnlens.core.progress import progress_bar
from cnnlens.core.registry import check_options, get_method, register
from cnnlens.core.targets import TargetLike
from cnnlens.errors import InputError
from cnnlens.methods.base import Explainer, GradientMethod
from cnnlens.methods.engine import (
    BatchedForward,
    check_reduce,
    first_pass,
    pixel_explanation,
    reduce_channels,
)

__all__ = ["NOISE_KINDS", "SmoothGrad"]

NOISE_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")


@register("smoothgrad")
class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov et al., 2017, arXiv:1706.03825) and its variants around any
    gradient method ``A``: the attribution averaged over noisy copies of the input.

    $$\\hat a(x) = \\frac{1}{n}\\sum_{i=1}^{n} A\\big(x + \\epsilon_i\\big), \\quad
    \\epsilon_i \\sim \\mathcal N\\big(0, \\sigma^2\\big), \\quad
    \\sigma = \\text{noise}\\cdot(x_{\\max} - x_{\\min})$$

    ``kind="smoothgrad_sq"`` averages the squared attributions, and ``kind="vargrad"``
    (Adebayo et al., 2018) takes their variance $\\frac1n\\sum A_i^2 - \\hat a^2$.

    The classes explained are those of the clean input (its top class for ``target=None``).
    The noise is drawn on the input's device from a local generator seeded with ``seed``
    (the global RNG is untouched), one (C, H, W) draw per sample in sample order, and
    sample ``i`` uses the same draw for every image scaled by that image's sigma, so the
    result does not depend on ``batch_size`` or on which images share the batch. Noisy
    inputs are passed to the base method ``batch_size`` at a time.

    Args:
        method: a gradient method instance (``Saliency(model)``), or the model itself when
            ``base`` names the method (as ``cnnlens.explain`` does).
        base: registry name of the gradient method built when ``method`` is a model
            (default ``"saliency"``); further keyword options go to its constructor.
        n_samples: number of noisy samples.
        noise: noise level as a fraction of each image's value range (>= 0; the paper
            recommends 0.1-0.2).
        kind: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
        seed: seed of the noise generator.
        batch_size: noisy inputs per call to the base method.
        reduce: channel reduction of the map (default: the base method's).
        progress: show a rich progress bar.
        eval_mode: see :class:`~cnnlens.methods.base.Explainer`.

    Example:
        >>> SmoothGrad(Saliency(model), n_samples=25)(x, target=3).maps      # doctest: +SKIP
        >>> cnnlens.explain(model, x, "smoothgrad", base="integrated_gradients", n_steps=16)
    """

    family: ClassVar[str] = "gradient"

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "light": {"n_samples": 8, "batch_size": 64},
        "tiny": {"n_samples": 2, "batch_size": 64},
    }

    def __init__(
        self,
        method: GradientMethod | nn.Module,
        *,
        base: str | None = None,
        n_samples: int = 25,
        noise: float = 0.15,
        kind: str = "smoothgrad",
        seed: int = 0,
        batch_size: int = 16,
        reduce: str | None = None,
        progress: bool = False,
        eval_mode: bool = True,
        **base_options: Any,
    ) -> None:
        if isinstance(method, GradientMethod):
            if base is not None or base_options:
                raise InputError(
                    "base and base options are for SmoothGrad(model, base=...); got a "
                    f"{type(method).__name__} instance, so configure that instance instead"
                )
            inner = method
        elif isinstance(method, nn.Module):
            cls = get_method(base or "saliency")
            if not (isinstance(cls, type) and issubclass(cls, GradientMethod)):
                raise InputError(
                    f"base must name a gradient method (saliency, inputxgradient, "
                    f"integrated_gradients, guided_backprop, deconvnet, guided_gradcam); "
                    f"got {base!r}"
                )
            check_options(cls, base_options)
            inner = cls(method, eval_mode=eval_mode, **base_options)
        else:
            raise InputError(
                "method must be a gradient method such as Saliency(model), or a model with "
                f"base=...; got {type(method).__name__}"
            )
        super().__init__(inner.model, eval_mode=eval_mode)
        self.channels_last_input = inner.channels_last_input  # a Keras model's images
        self.method = inner
        self.n_samples = check_int("n_samples", n_samples)
        self.noise = check_float("noise (a fraction of the input range)", noise, minimum=0.0)
        self.kind = check_choice("kind", kind, NOISE_KINDS)
        self.seed = check_int("seed", seed, minimum=0)
        self.batch_size = check_int("batch_size", batch_size)
        self.reduce = check_reduce(reduce, inner.reduce)
        self.progress = bool(progress)

    @classmethod
    def takes_layer(cls, options: dict[str, Any]) -> bool:
        base = options.get("base")
        return isinstance(base, str) and get_method(base).uses_layer

    def explain_batch(self, x: Tensor, target: TargetLike, topk: int | None) -> Explanation:
        b = x.shape[0]
        dev = x.device
        outputs, targets = first_pass(BatchedForward(self.model, x, False), x, target, topk)
        spread = x.flatten(1).amax(1) - x.flatten(1).amin(1)
        sigma = self.noise * spread.view(b, *[1] * (x.dim() - 1))
        gen = torch.Generator(device=dev)
        gen.manual_seed(self.seed)
        total = torch.zeros((b, targets.k, *x.shape[1:]), device=dev)
        total_sq = torch.zeros_like(total) if self.kind != "smoothgrad" else None
        n_rows = self.n_samples * b  # sample-major: row r is sample r // b of image r % b
        drawn: dict[int, Tensor] = {}  # the noise of the samples in the current chunk
        next_draw = 0
        with progress_bar(self.progress, n_rows, self.name, transient=True) as bar:
            for start in range(0, n_rows, self.batch_size):
                idx = torch.arange(start, min(start + self.batch_size, n_rows), device=dev)
                sample, rows = idx // b, idx % b
                first, last = int(sample[0]), int(sample[-1])
                for s in range(next_draw, last + 1):
                    drawn[s] = torch.randn(
                        x.shape[1:], generator=gen, device=dev, dtype=torch.float32
                    ).to(x.dtype)
                next_draw = max(next_draw, last + 1)
                for s in [s for s in drawn if s < first]:
                    del drawn[s]
                eps = torch.stack([drawn[s] for s in sample.tolist()])
                noisy = x[rows] + sigma[rows] * eps
                attr, _ = self.method.attribute(noisy, targets, rows)
                attr = attr.float()
                total.index_add_(0, rows, attr)
                if total_sq is not None:
                    total_sq.index_add_(0, rows, attr * attr)
                bar.advance(len(idx))
        mean = total / self.n_samples
        if self.kind == "smoothgrad":
            raw = mean
        elif self.kind == "smoothgrad_sq":
            raw = total_sq / self.n_samples
        else:
            raw = (total_sq / self.n_samples - mean * mean).clamp(min=0)
        maps = reduce_channels(raw, self.reduce, dim=2)
        extras = {"base": self.method.name, "kind": self.kind, "n_samples": self.n_samples}
        exp = pixel_explanation(raw, maps, targets, outputs, self.name, extras)
        gradcam = getattr(self.method, "gradcam", None)  # guided Grad-CAM's layer(s)
        if gradcam is not None:
            exp.layer = "+".join(name for name, _ in gradcam.layers_for(x))
        return exp

    def __repr__(self) -> str:
        return f"SmoothGrad({self.method!r}, n_samples={self.n_samples}, kind={self.kind!r})"
