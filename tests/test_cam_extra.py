"""The newer CAMs (Eigen-Grad-CAM, Grad-CAM element-wise, KPCA-CAM, Shapley-CAM, Finer-CAM,
FullGrad, SS-CAM, IS-CAM) and the CAM smoothing options against pytorch-grad-cam and torchcam.

Random-weight torchvision resnet18, vgg11's feature stack (torchvision's ``make_layers``
with a GAP + linear head instead of the 120M-parameter classifier, to keep the tests fast)
and the seed ``gap-cnn``, at 64x64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import (
    KPCA_CAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ShapleyCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

import cnnlens
from cnnlens.methods.base import normalize_maps, upsample
from conftest import inputs, pearson, torchvision_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gapcnn() -> torch.nn.Module:
    from cnnlens.models import create

    torch.manual_seed(0)
    model = create("gap-cnn", num_classes=10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so its biases matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    return model


def _vgg11() -> torch.nn.Module:
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    head = [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(512, 10)]
    return torch.nn.Sequential(features, *head).eval()


# model -> (builder, layer explained)
NETS = {
    "resnet18": (lambda: torchvision_net("resnet18"), "layer3"),
    "vgg11": (_vgg11, "0.15"),
    "gap-cnn": (_gapcnn, "features.block4"),
}


@pytest.fixture(scope="module", params=list(NETS))
def net(request):
    build, layer = NETS[request.param]
    model = build()
    x = inputs(2, 64)
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    return request.param, model, layer, x, targets


def _peer(cls, model, layer, x, targets, **kw):
    try:
        with cls(model=model, target_layers=[model.get_submodule(layer)], **kw) as peer:
            return torch.from_numpy(peer(input_tensor=x, targets=targets))
    finally:  # the peer backpropagates into the parameters of the session-shared nets
        model.zero_grad(set_to_none=True)


def _maps_from_raw(raw: torch.Tensor, size: int) -> torch.Tensor:
    return normalize_maps(upsample(F.relu(raw), (size, size)))


def _same_up_to_sign(raw: torch.Tensor, ref: torch.Tensor, size: int, atol: float) -> None:
    """The peer keeps an arbitrary SVD/eigenvector sign: ours matches with one of the two."""
    for i in range(raw.shape[0]):
        plus, minus = _maps_from_raw(raw[i], size), _maps_from_raw(-raw[i], size)
        err = min(float((plus - ref[i]).abs().max()), float((minus - ref[i]).abs().max()))
        assert err <= atol, f"image {i}: max difference {err:.2e} with either sign"


CASES = {
    "gradcam_elementwise": (GradCAMElementWise, {}),
    "shapleycam": (ShapleyCAM, {"score": "logit"}),
    "finercam": (FinerCAM, {}),
}


@pytest.mark.parametrize("method", list(CASES))
def test_maps_equal_pytorch_grad_cam(net, method: str) -> None:
    _, model, layer, x, targets = net
    cls, opts = CASES[method]
    exp = cnnlens.explain(model, x, method, layer=layer, **opts)
    if method == "finercam":  # the peer picks the top class and its three closest classes
        ref = _peer(cls, model, layer, x, None)
    else:
        ref = _peer(cls, model, layer, x, [ClassifierOutputTarget(t) for t in targets])
    assert exp.targets.tolist() == targets
    np.testing.assert_allclose(exp.maps.numpy(), ref.numpy(), atol=2e-3)


def test_shapley_cam_rest_equals_peer_and_differs_from_gradcam(net) -> None:
    """The paper's ReST score: its Hessian term is not zero, so the weights move."""
    _, model, layer, x, targets = net
    exp = cnnlens.explain(model, x, "shapleycam", layer=layer, target=targets)
    ref = _peer(ShapleyCAM, model, layer, x, [ClassifierOutputReST(t) for t in targets])
    np.testing.assert_allclose(exp.maps.numpy(), ref.numpy(), atol=2e-3)
    logit = cnnlens.explain(model, x, "shapleycam", layer=layer, target=targets, score="logit")
    grad = cnnlens.explain(model, x, "gradcam", layer=layer, target=targets)
    torch.testing.assert_close(logit.raw, grad.raw, rtol=1e-4, atol=1e-6)  # H = 0 for ReLU nets
    assert not torch.allclose(exp.raw, grad.raw, rtol=1e-3, atol=1e-6)


def test_finer_cam_with_alpha_zero_is_gradcam(net) -> None:
    _, model, layer, x, targets = net
    fin = cnnlens.explain(model, x, "finercam", layer=layer, target=targets, alpha=0.0)
    grad = cnnlens.explain(model, x, "gradcam", layer=layer, target=targets)
    torch.testing.assert_close(fin.raw, grad.raw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("base", "peer"), [("gradcam++", GradCAMPlusPlus), ("layercam", LayerCAM)])
def test_finer_cam_on_another_base_equals_peer(net, base: str, peer) -> None:
    """pytorch-grad-cam's FinerCAM(base_method=...) on the same layer: the same maps; with
    alpha=0 the map is the base method's own."""
    _, model, layer, x, targets = net
    exp = cnnlens.explain(model, x, "finercam", layer=layer, base=base)
    try:
        with FinerCAM(model, [model.get_submodule(layer)], base_method=peer) as cam:
            ref = torch.from_numpy(cam(input_tensor=x, targets=None))
    finally:
        model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(exp.maps.numpy(), ref.numpy(), atol=2e-3)
    fin = cnnlens.explain(model, x, "finercam", layer=layer, target=targets, base=base, alpha=0)
    own = cnnlens.explain(model, x, base, layer=layer, target=targets)
    torch.testing.assert_close(fin.raw, own.raw, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(exp.raw, own.raw, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("base", ["scorecam", "shapleycam", "cam", "eigencam", "saliency", 3])
def test_finer_cam_refuses_a_base_that_is_not_a_gradient_cam(base) -> None:
    model = _gapcnn()
    with pytest.raises(cnnlens.errors.InputError, match="base must be"):
        cnnlens.explain(model, inputs(1, 32), "finercam", base=base)


@pytest.mark.parametrize(
    ("method", "peer"), [("eigengradcam", EigenGradCAM), ("kpcacam", KPCA_CAM)]
)
def test_projection_cams_equal_peer_up_to_sign(net, method: str, peer) -> None:
    _, model, layer, x, targets = net
    exp = cnnlens.explain(model, x, method, layer=layer, target=targets)
    ref = _peer(peer, model, layer, x, [ClassifierOutputTarget(t) for t in targets])
    # the peer's kernel PCA runs in float32 on a kernel near tanh(1) everywhere, whose
    # centering cancels most digits; cnnlens works in float64
    _same_up_to_sign(exp.raw, ref, 64, atol=2e-3 if method == "eigengradcam" else 1e-2)


def test_kpca_cam_rbf_kernel_equals_sklearn(net) -> None:
    _, model, layer, x, _ = net
    exp = cnnlens.explain(model, x, "kpcacam", layer=layer, kernel="rbf", gamma=0.01)
    ref = _peer(KPCA_CAM, model, layer, x, None, kernel="rbf", gamma=0.01)
    _same_up_to_sign(exp.raw, ref, 64, atol=2e-3)


def test_kpca_cam_large_map_uses_lobpcg_and_equals_sklearn() -> None:
    """1024 positions (32x32, > 100): the leading eigenpair by LOBPCG, scikit-learn by ARPACK."""
    model, x = _gapcnn(), inputs(1, 32)
    exp = cnnlens.explain(model, x, "kpcacam", layer="features.block1")
    ref = _peer(KPCA_CAM, model, "features.block1", x, None)
    _same_up_to_sign(exp.raw, ref, 32, atol=2e-3)


# ------------------------------------------------------------------------------------------
# FullGrad
# ------------------------------------------------------------------------------------------


def test_fullgrad_is_complete(net) -> None:
    """f(x) = x . grad_x f + sum over biases b . grad_b f, exactly, for these ReLU nets."""
    _, model, _, x, targets = net
    input_term, bias_terms, resolved = cnnlens.methods.FullGrad(model).decompose(x)
    total = input_term.flatten(1).sum(1) + sum(t.flatten(1).sum(1) for t in bias_terms)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(total, logits[torch.arange(2), targets], rtol=1e-4, atol=1e-4)
    assert resolved.public().tolist() == targets


def _psi(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """abs, then min-max to [0, 1] over each image's tensor (the paper), or over each channel
    with the peer's 1e-7 added to the divisor (bias terms can be that small)."""
    t = t.abs()
    dims = (2, 3) if per_channel else (1, 2, 3)
    t = t - t.amin(dim=dims, keepdim=True)
    top = t.amax(dim=dims, keepdim=True)
    return t / (top + 1e-7) if per_channel else t / top.clamp(min=1e-30)


def test_fullgrad_follows_the_paper_and_shows_the_peer_difference(net) -> None:
    """From the same terms: the paper's psi (one rescale per layer tensor) gives our map;
    pytorch-grad-cam's (one rescale per channel) gives the peer's map; the two differ."""
    _, model, _, x, targets = net
    exp = cnnlens.explain(model, x, "fullgrad", target=targets)
    input_term, bias_terms, _ = cnnlens.methods.FullGrad(model).decompose(x, targets)
    spatial = [t for t in bias_terms if t.dim() == 4]

    def assemble(per_channel: bool) -> torch.Tensor:
        total = _psi(input_term, per_channel).sum(1)
        for t in spatial:
            total = total + upsample(_psi(t, per_channel).sum(1), (64, 64))
        return normalize_maps(total)

    torch.testing.assert_close(exp.maps, assemble(False), rtol=1e-3, atol=1e-3)
    with FullGrad(model=model, target_layers=[]) as peer:
        ref = torch.from_numpy(peer(x, [ClassifierOutputTarget(t) for t in targets]))
    # the peer resizes each channel (cv2) before the sum; ours sums first: same to ~1e-3
    torch.testing.assert_close(assemble(True), ref, rtol=0, atol=5e-3)
    for i in range(2):
        assert pearson(exp.maps[i], ref[i]) < 0.999  # a real difference, not rounding


# ------------------------------------------------------------------------------------------
# Smoothing options
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "peer"), [("gradcam", GradCAM), ("hirescam", HiResCAM)])
def test_eigen_smooth_equals_peer_up_to_sign(net, method: str, peer) -> None:
    _, model, layer, x, targets = net
    exp = cnnlens.explain(model, x, method, layer=layer, target=targets, eigen_smooth=True)
    with peer(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        ref = cam(x, [ClassifierOutputTarget(t) for t in targets], eigen_smooth=True)
    _same_up_to_sign(exp.raw, torch.from_numpy(ref), 64, atol=2e-3)


def test_aug_smooth_equals_peer(net) -> None:
    _, model, layer, x, targets = net
    exp = cnnlens.explain(model, x, "gradcam", layer=layer, target=targets, aug_smooth=True)
    with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        ref = cam(x, [ClassifierOutputTarget(t) for t in targets], aug_smooth=True)
    # the peer averages without normalizing the mean again
    np.testing.assert_allclose(exp.maps.numpy(), normalize_maps(torch.from_numpy(ref)), atol=3e-3)
    assert exp.extras["aug_smooth"] == 6


def test_smoothing_errors_and_spatial_scales() -> None:
    model, x = _gapcnn(), inputs(2, 32)
    with pytest.raises(cnnlens.errors.InputError, match="eigen_smooth does not apply"):
        cnnlens.explain(model, x, "eigencam", eigen_smooth=True)
    with pytest.raises(cnnlens.errors.InputError, match="CAM methods"):
        cnnlens.explain(model, x, "saliency", aug_smooth=True)
    exp = cnnlens.explain(model, x, "gradcam", aug_smooth=True, aug_scales=(1.0, 1.5), topk=2)
    assert exp.maps.shape == (2, 2, 32, 32) and exp.extras["aug_smooth"] == 12
    # the smoothing leaves the method as it was
    plain = cnnlens.methods.GradCAM(model)
    before = plain(x).maps
    cnnlens.methods.cam_smoothing.SmoothedCAM(plain, eigen_smooth=True)(x)
    torch.testing.assert_close(plain(x).maps, before)


def test_flip_invariant_model_gives_the_plain_map_under_flips() -> None:
    """A model whose score is flip-symmetric: averaging the flipped-back maps of a
    symmetric Grad-CAM gives Grad-CAM of the symmetrized input (hand reference)."""
    model = _gapcnn()
    x = inputs(1, 32)
    x = (x + x.flip(-1)) / 2  # a mirror-symmetric image: its flipped copy is itself
    plain = cnnlens.explain(model, x, "gradcam", target=1)
    smooth = cnnlens.explain(model, x, "gradcam", target=1, aug_smooth=True, aug_factors=(1.0,))
    want = normalize_maps((plain.maps + plain.maps.flip(-1)) / 2)
    torch.testing.assert_close(smooth.maps, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# SS-CAM and IS-CAM against torchcam (the same noise, handed to both)
# ------------------------------------------------------------------------------------------

# model -> (builder, layer): layers whose maps are 32x32 (the input's size) or 2x2 (every
# value a corner of the upsampled map), where torchcam's normalize-then-upsample and
# cnnlens' upsample-then-normalize give the same masks
# (resnet18: one image, 256 channels x n_samples forwards per run; marked slow)
SCORE_NETS = {
    "gap-cnn": (_gapcnn, "features.block1", 2),
    "resnet18": (NETS["resnet18"][0], "layer3", 1),
}
SCORE_PARAMS = [
    pytest.param("gap-cnn"),
    pytest.param("resnet18", marks=pytest.mark.slow),
]


def _torchcam(cls, model, layer, x, targets, noise=None, **kw):
    with cls(model, target_layer=layer, batch_size=64, input_shape=(3, 32, 32), **kw) as cam:
        if noise is not None:
            cam._distrib = noise
        with torch.no_grad():
            out = model(x)
        try:
            return cam(class_idx=targets, scores=out)[0]
        finally:
            model.zero_grad(set_to_none=True)


class _SharedNoise:
    """Stands in for torchcam's noise distribution: hands out the pre-drawn samples."""

    def __init__(self, draws: torch.Tensor, std: float) -> None:
        self.draws, self.std, self.i = draws, std, 0

    def sample(self, size: torch.Size) -> torch.Tensor:
        out = self.draws[self.i] * self.std
        assert out.shape == size
        self.i += 1
        return out


def _channels(model: torch.nn.Module, layer: str, x: torch.Tensor) -> int:
    acts = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return int(acts[0].shape[1])


@pytest.mark.parametrize("name", SCORE_PARAMS)
def test_sscam_equals_torchcam_with_shared_noise(name: str) -> None:
    """torchcam draws (B, C, H, W) noise per sample from the global RNG; cnnlens one (H, W)
    draw per (channel, sample) from its own generator. The same pre-drawn noise is handed
    to both (torchcam's distribution object, cnnlens' ``noise`` method replaced)."""
    from torchcam.methods import SSCAM

    build, layer, b = SCORE_NETS[name]
    model, x, n = build(), inputs(b, 32), 2
    targets = model(x).argmax(1).tolist()
    c = _channels(model, layer, x)
    draws = torch.randn(n, b, c, 32, 32, generator=torch.Generator().manual_seed(3))
    ours = cnnlens.methods.SSCAM(model, layer=layer, n_samples=n, std=2.0, batch_size=64)
    ours.noise = lambda img, ch, sample, shape, device: draws[sample, img, ch].unsqueeze(1)
    exp = ours(x, targets)
    ref = _torchcam(SSCAM, model, layer, x, targets, _SharedNoise(draws, 2.0), num_samples=n)
    torch.testing.assert_close(
        _maps_from_raw(exp.raw, 32), upsample(ref, (32, 32)), atol=1e-4, rtol=0
    )
    if b == 1:
        return
    # its own noise: seeded, independent of the batch
    a = cnnlens.explain(model, x, "sscam", layer=layer, n_samples=n, target=targets)
    b = cnnlens.explain(model, x[1:], "sscam", layer=layer, n_samples=n, target=targets[1:])
    torch.testing.assert_close(a.raw[1:], b.raw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", SCORE_PARAMS)
def test_iscam_equals_torchcam_on_its_path(name: str) -> None:
    """torchcam scales the i-th copy by the running sum of j/N (j <= i), off the path for
    i > 1; with that schedule handed to cnnlens, the maps are the same."""
    from torchcam.methods import ISCAM

    build, layer, b = SCORE_NETS[name]
    model, x, n = build(), inputs(b, 32), 3
    targets = model(x).argmax(1).tolist()
    ref = upsample(_torchcam(ISCAM, model, layer, x, targets, num_samples=n), (32, 32))
    ours = cnnlens.methods.ISCAM(model, layer=layer, n_samples=n, batch_size=64)
    running = torch.cumsum(torch.arange(1, n + 1) / n, 0)
    ours.scales = lambda sample: running[sample]
    torch.testing.assert_close(_maps_from_raw(ours(x, targets).raw, 32), ref, atol=1e-4, rtol=0)


def test_iscam_follows_the_paper() -> None:
    """Hand reference of the paper's IS-CAM: s_k = mean_i f(x * (i/N) H^k), softmax."""
    model, x, n = _gapcnn(), inputs(1, 32), 3
    layer = "features.block1"
    exp = cnnlens.explain(model, x, "iscam", layer=layer, n_samples=n, target=4)
    acts = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.no_grad():
        model(x)
        handle.remove()
        a = acts[0][0]  # (C, 32, 32): the input's size, no upsampling
        lo, hi = a.amin((1, 2), keepdim=True), a.amax((1, 2), keepdim=True)
        masks = torch.where(hi > lo, (a - lo) / (hi - lo).clamp(min=1e-30), 0.0)
        s = torch.stack([model(x * (i / n) * masks[:, None])[:, 4] for i in range(1, n + 1)]).mean(
            0
        )
    want = (torch.softmax(s, 0)[:, None, None] * a).sum(0)
    torch.testing.assert_close(exp.raw[0], want, rtol=1e-4, atol=1e-6)
