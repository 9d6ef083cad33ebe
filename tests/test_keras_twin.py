"""Keras models with every method (issue 12, items 1 and 5): the same small CNN built in Keras
and in torch with the same weights (Keras kernels HWIO copied as OIHW) gives equal logits and
equal maps from every registered method that takes Keras models; the others refuse them with
one line. Keras images are (B, H, W, C), the torch twin's (B, C, H, W).

Needs the ``keras`` extra (installed by ``make test``); skipped without it.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest
import torch
from torch import nn

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - another backend was set first
    pytest.skip("Keras runs on another backend than torch", allow_module_level=True)

import cnnlens  # noqa: E402
from cnnlens.core.registry import get_method, preset_options  # noqa: E402
from cnnlens.errors import InputError, ModelError  # noqa: E402
from cnnlens.methods import Occlusion, Saliency, SmoothGrad  # noqa: E402

SIZE = 32
#: the Keras layer and the torch twin's layer with the same output (Keras's Conv2D applies
#: its ReLU inside the layer)
LAYERS = {"keras": "c2", "torch": "r2"}
#: methods that refuse a Keras model (their reason is on the class: ``keras_refusal``)
REFUSED = sorted(n for n in cnnlens.list_methods() if get_method(n).keras_refusal)
#: shapleycam needs a plain NCHW layer (second derivatives); a Keras layer is NHWC
NCHW_ONLY = {"shapleycam"}
#: an optimized mask amplifies float rounding: the torch twin's own maps move by about 0.012
#: between contiguous and channels-last inputs
ATOL = {"extremal": 0.05}


def keras_cnn():
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.MaxPooling2D(name="p1")(h)
    h = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, keras.layers.Dense(5, name="fc")(h))


def torch_twin(km) -> nn.Module:
    """The Keras CNN rebuilt in torch, its weights copied across."""
    tm = nn.Sequential()
    tm.add_module("c1", nn.Conv2d(3, 8, 3, padding=1))
    tm.add_module("r1", nn.ReLU())
    tm.add_module("p1", nn.MaxPool2d(2))
    tm.add_module("c2", nn.Conv2d(8, 16, 3))
    tm.add_module("r2", nn.ReLU())
    tm.add_module("gap", nn.AdaptiveAvgPool2d(1))
    tm.add_module("flat", nn.Flatten())
    tm.add_module("fc", nn.Linear(16, 5))
    with torch.no_grad():
        for name in ("c1", "c2"):
            conv = getattr(tm, name)
            conv.weight.copy_(km.get_layer(name).kernel.value.permute(3, 2, 0, 1))  # HWIO->OIHW
            conv.bias.copy_(km.get_layer(name).bias.value)
        tm.fc.weight.copy_(km.get_layer("fc").kernel.value.T)
        tm.fc.bias.copy_(km.get_layer("fc").bias.value)
    return tm.eval()


@pytest.fixture(scope="module")
def twins():
    km = keras_cnn()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return km, torch_twin(km), x, x.permute(0, 2, 3, 1).contiguous()


def keras_state(model) -> tuple:
    return (
        [layer.trainable for layer in model.layers],
        [p.requires_grad for p in model.parameters()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in [model, *model.layers]),
        model.training,
    )


def test_the_twins_give_equal_logits(twins) -> None:
    km, tm, x, xk = twins
    with torch.no_grad():
        torch.testing.assert_close(km(xk), tm(x), rtol=1e-5, atol=1e-6)


def test_gradcam_and_saliency_equal_between_keras_and_torch(twins) -> None:
    km, tm, x, xk = twins
    k = cnnlens.explain(km, xk, "gradcam", layer=LAYERS["keras"], target=[1, 3])
    t = cnnlens.explain(tm, x, "gradcam", layer=LAYERS["torch"], target=[1, 3])
    assert k.maps.shape == (2, SIZE, SIZE) and k.layer == "c2"
    torch.testing.assert_close(k.raw, t.raw, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(k.maps, t.maps, rtol=1e-4, atol=1e-5)
    k = cnnlens.explain(km, xk, "saliency", target=[1, 3])
    t = cnnlens.explain(tm, x, "saliency", target=[1, 3])
    assert k.maps.shape == (2, SIZE, SIZE) and k.raw.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(k.maps, t.maps, rtol=1e-4, atol=1e-5)
    # and by hand on the Keras model: the gradient of the scores with respect to its NHWC input
    leaf = xk.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(km(leaf)[[0, 1], [1, 3]].sum(), leaf)
    torch.testing.assert_close(k.raw, g.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", cnnlens.list_methods())
def test_every_method_on_keras_equals_the_torch_twin(twins, method: str) -> None:
    km, tm, x, xk = twins
    cls = get_method(method)
    opts = preset_options([method], "tiny").get(method, {})
    if method in REFUSED:
        with pytest.raises(ModelError, match=f"{method} does not take Keras models: "):
            cnnlens.explain(km, xk, method, **opts)
        return
    layer = {"layer": LAYERS["keras"]} if cls.uses_layer else {}
    if method in NCHW_ONLY:
        with pytest.raises(InputError, match="NCHW"):
            cnnlens.explain(km, xk, method, **layer, **opts)
        return
    before = keras_state(km)
    with torch.random.fork_rng():
        k = cnnlens.explain(km, xk, method, target=[1, 3], **layer, **opts)
    assert keras_state(km) == before
    twin_layer = {"layer": LAYERS["torch"]} if cls.uses_layer else {}
    with torch.random.fork_rng():
        t = cnnlens.explain(tm, x, method, target=[1, 3], **twin_layer, **opts)
    assert k.maps.shape == t.maps.shape == (2, SIZE, SIZE)
    assert k.raw.shape == t.raw.shape  # pixel methods: (B, C, H, W) as for any model
    torch.testing.assert_close(k.maps, t.maps, rtol=1e-4, atol=ATOL.get(method, 1e-5))
    torch.testing.assert_close(k.inputs, x)  # drawn as (B, C, H, W)


def test_keras_classes_wrappers_and_single_images(twins) -> None:
    km, tm, x, xk = twins
    # method classes take the Keras model and its NHWC images as well
    sg = SmoothGrad(Saliency(km), n_samples=3, seed=1)(xk, target=2)
    ref = SmoothGrad(Saliency(tm), n_samples=3, seed=1)(x, target=2)
    torch.testing.assert_close(sg.maps, ref.maps, rtol=1e-4, atol=1e-5)
    occ = Occlusion(km, window=8, stride=8)(xk[0], target=2)  # one (H, W, C) image
    ref = Occlusion(tm, window=8, stride=8)(x[0], target=2)
    assert occ.maps.shape == (1, SIZE, SIZE)
    torch.testing.assert_close(occ.maps, ref.maps, rtol=1e-4, atol=1e-5)
    # aug_smooth transforms the Keras images in their own layout
    k = cnnlens.explain(km, xk, "gradcam", layer="c2", target=1, aug_smooth=True, aug_flips=True)
    t = cnnlens.explain(tm, x, "gradcam", layer="r2", target=1, aug_smooth=True, aug_flips=True)
    torch.testing.assert_close(k.maps, t.maps, rtol=1e-4, atol=1e-5)


def test_keras_input_errors(twins) -> None:
    km, _, _, xk = twins
    with pytest.raises(InputError, match=r"\(B, H, W, C\).*Keras video"):
        cnnlens.explain(km, xk.unsqueeze(1), "saliency")
    with pytest.raises(InputError, match=r"\(B, H, W, C\)"):
        cnnlens.explain(km, xk.numpy(), "occlusion")


@pytest.mark.parametrize(
    "method",
    ["saliency", "inputxgradient", "integrated_gradients", "smoothgrad", "occlusion", "rise"],
)
def test_nhwc_images_given_to_a_torch_model_are_refused(twins, method: str) -> None:
    _, tm, _, xk = twins
    opts = preset_options([method], "tiny").get(method, {})
    with pytest.raises(InputError, match=r"NHWC .*permute\(0, 3, 1, 2\)"):
        cnnlens.explain(tm, xk[:1], method, **opts)
