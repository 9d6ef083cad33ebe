"""Image parameterizations for activation maximization.

A parameterization owns leaf tensors that the optimizer changes and turns them into images in
display space, (B, C, H, W) with values in (0, 1), through a sigmoid:

- :class:`PixelImage`: one free value per pixel.
- :class:`FourierImage`: the image's 2-D Fourier spectrum, scaled so that every frequency
  starts with energy proportional to :math:`1/f^{d}` (natural images have such a spectrum), which
  decorrelates the pixels and makes gradient steps act on all scales alike (Olah et al., 2017,
  "Feature Visualization", Distill; Mordvintsev et al., 2018, "Differentiable Image
  Parameterizations").
- colour decorrelation (``decorrelate=True``, RGB only): the three channels are optimized in a
  decorrelated colour basis and mapped back by the square root of the colour covariance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlens.errors import InputError

# Square root of the ImageNet RGB colour covariance (columns: the decorrelated axes), the
# published value of Olah et al. (2017). `color_correlation_sqrt` computes the same from data.
IMAGENET_COLOR_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)


def color_correlation_sqrt(images: Tensor) -> Tensor:
    """Square root of the colour covariance of ``images`` (N, 3, H, W) in display space.

    $$\\Sigma = U \\Lambda U^\\top, \\qquad M = U \\Lambda^{1/2}$$

    so that a decorrelated colour vector :math:`u` (unit variance per axis) maps to
    :math:`M u` with covariance :math:`\\Sigma`.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"images must be (N, 3, H, W) RGB, got {tuple(images.shape)}")
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double()
    cov = torch.cov(pixels)
    evals, evecs = torch.linalg.eigh(cov)
    order = evals.argsort(descending=True)
    return (evecs[:, order] * evals[order].clamp_min(0).sqrt()).float()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding (``sigma`` in pixels).

    The kernel radius is ``ceil(3 sigma)``, cut to what the image size allows.
    """
    radius = min(math.ceil(3 * sigma), x.shape[2] - 1, x.shape[3] - 1)
    if sigma <= 0 or radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class ImageParam:
    """Base class: ``params`` (leaf tensors to optimize) and ``image()`` in display space."""

    def __init__(self, shape: tuple[int, int, int, int], decorrelate: bool | Tensor = False):
        self.shape = shape
        c = shape[1]
        if isinstance(decorrelate, Tensor):
            if c != 3 or decorrelate.shape != (3, 3):
                raise InputError("a colour matrix needs RGB images and a (3, 3) matrix")
            matrix = decorrelate.float()
        elif decorrelate and c == 3:
            matrix = IMAGENET_COLOR_SQRT
        else:
            matrix = None
        if matrix is not None:
            matrix = matrix / matrix.norm(dim=0).max()
        self.color = matrix
        self.params: list[Tensor] = []

    def _to_rgb(self, lin: Tensor) -> Tensor:
        if self.color is None:
            return lin
        return torch.einsum("ij,bjhw->bihw", self.color.to(lin.device), lin)

    def _from_rgb(self, rgb: Tensor) -> Tensor:
        if self.color is None:
            return rgb
        inv = torch.linalg.pinv(self.color.to(rgb.device))
        return torch.einsum("ij,bjhw->bihw", inv, rgb)

    def linear(self) -> Tensor:
        """The image before colour mapping and sigmoid."""
        raise NotImplementedError  # pragma: no cover

    def image(self) -> Tensor:
        """The images in display space, (B, C, H, W) in (0, 1)."""
        return torch.sigmoid(self._to_rgb(self.linear()))

    def blur_(self, sigma: float) -> None:
        """Blur the current images in place (a smoothness prior applied every few steps)."""
        raise NotImplementedError  # pragma: no cover


class PixelImage(ImageParam):
    """One free parameter per pixel: $$x = \\sigma(M\\,p)$$ (M the colour matrix or identity).

    Args:
        shape: (B, C, H, W).
        generator: the random source of the initial values (small Gaussian noise).
        std: standard deviation of the initial parameters.
        init: optional start images in display space, (B, C, H, W) in [0, 1].
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        *,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        std: float = 0.01,
        decorrelate: bool | Tensor = False,
        init: Tensor | None = None,
    ):
        super().__init__(shape, decorrelate)
        if init is not None:
            rgb = torch.logit(init.float().clamp(1e-3, 1 - 1e-3))
            p = self._from_rgb(rgb.to(device)).clone()
        else:
            p = (torch.randn(shape, generator=generator) * std).to(device)
        self.pixels = p.requires_grad_(True)
        self.params = [self.pixels]

    def linear(self) -> Tensor:
        return self.pixels

    @torch.no_grad()
    def blur_(self, sigma: float) -> None:
        self.pixels.copy_(gaussian_blur(self.pixels, sigma))


class FourierImage(ImageParam):
    """Image parameterized by its spectrum with a :math:`1/f^{d}` scale.

    $$x = \\sigma\\Big(M \\cdot \\mathcal{F}^{-1}\\big[s(f) \\odot \\hat p\\big]\\Big),
      \\qquad s(f) = \\frac{1}{\\max(f, 1/\\max(H, W))^{d}}$$

    with :math:`\\hat p` the optimized complex spectrum (its real and imaginary parts), the
    inverse transform orthonormal, and :math:`d` = ``decay``.

    Args:
        shape: (B, C, H, W).
        generator: the random source of the initial spectrum.
        decay: the exponent :math:`d` of the frequency decay (1 is natural-image-like).
        std: standard deviation of the initial spectrum values.
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        *,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        decay: float = 1.0,
        std: float = 0.01,
        decorrelate: bool | Tensor = False,
    ):
        super().__init__(shape, decorrelate)
        b, c, h, w = shape
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        self.freq = torch.sqrt(fy**2 + fx**2).to(device)  # cycles per pixel
        scale = 1.0 / self.freq.clamp_min(1.0 / max(h, w)) ** decay
        # Keep the image's overall scale independent of its size: unit total gain.
        self.scale = (scale * math.sqrt(h * w) / scale.norm()).to(device)
        spec = torch.randn((b, c, h, w // 2 + 1, 2), generator=generator) * std
        self.spectrum = spec.to(device).requires_grad_(True)
        self.params = [self.spectrum]

    def linear(self) -> Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        h, w = self.shape[2:]
        return torch.fft.irfft2(spec, s=(h, w), norm="ortho")

    @torch.no_grad()
    def blur_(self, sigma: float) -> None:
        # A Gaussian blur multiplies the spectrum by exp(-2 pi^2 sigma^2 f^2).
        gain = torch.exp(-2 * math.pi**2 * sigma**2 * self.freq**2)
        self.spectrum.mul_(gain[..., None])


PARAMS = {"pixel": PixelImage, "fft": FourierImage}
