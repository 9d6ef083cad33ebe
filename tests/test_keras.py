"""Keras 3 models on the torch backend (issue 12, item 5), with the seed tutorial's layers.

Oracle: Grad-CAM computed directly with torch autograd on the Keras layer's output.
Needs the ``keras`` extra (installed by ``make test``); skipped without it.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest
import torch

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - another backend was set first
    pytest.skip("Keras runs on another backend than torch", allow_module_level=True)

import cnnlens  # noqa: E402
from cnnlens.errors import LayerNotFoundError, ModelError  # noqa: E402


def gradcam_by_autograd(model, layer, x: torch.Tensor, target: list[int]) -> torch.Tensor:
    """Grad-CAM (B, h, w) at a Keras layer: NHWC activations, weights the spatial mean of the
    gradient of the target score."""
    got = {}
    handle = layer.register_forward_hook(lambda m, i, o: got.setdefault("a", o))
    try:
        y = model(x)
    finally:
        handle.remove()
    a = got["a"]
    (g,) = torch.autograd.grad(y[range(len(target)), target].sum(), a)
    return (g.mean((1, 2), keepdim=True) * a).sum(-1).detach()


def state(model) -> tuple:
    return (
        [layer.trainable for layer in model.layers],
        [p.requires_grad for p in model.parameters()],
        sum(len(m._forward_hooks) for m in [model, *model.layers]),
    )


@pytest.mark.parametrize(
    ("app", "layer", "size"),
    [
        ("VGG16", "block5_conv3", 32),
        pytest.param("ResNet50", "conv5_block3_out", 64, marks=pytest.mark.slow),
    ],
)
def test_keras_applications_at_the_seed_layers(app: str, layer: str, size: int) -> None:
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, app)(weights=None, input_shape=(size, size, 3), classes=5)
    x = torch.randn(2, size, size, 3, generator=torch.Generator().manual_seed(1))
    before = state(model)
    exp = cnnlens.explain(model, x, "gradcam", layer=layer, target=[1, 3])
    assert exp.maps.shape == (2, size, size) and exp.layer == layer
    assert state(model) == before
    ref = gradcam_by_autograd(model, model.get_layer(layer), x, [1, 3])
    torch.testing.assert_close(exp.raw, ref, rtol=1e-4, atol=1e-7 * float(ref.abs().max()))
    # the layer object, and the automatic choice
    same = cnnlens.explain(model, x, "gradcam", layer=model.get_layer(layer), target=[1, 3])
    torch.testing.assert_close(same.maps, exp.maps)
    assert cnnlens.explain(model, x, "eigencam").maps.shape == (2, size, size)


def test_keras_errors() -> None:
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=5)
    x = torch.randn(1, 32, 32, 3)
    with pytest.raises(LayerNotFoundError, match="block5_conv3"):
        cnnlens.explain(model, x, "gradcam", layer="block5_conv")
    with pytest.raises(ModelError, match="Keras models: its class weights"):
        cnnlens.explain(model, x, "cam")
    with pytest.raises(ModelError, match="Keras models: its bias terms"):
        cnnlens.explain(model, x, "fullgrad")
    assert cnnlens.explain(model, x, "gradcam").layer == "block5_conv3"
