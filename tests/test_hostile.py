"""Hostile arguments to ``cnnlens.explain`` (issue 17, item 3): each is refused before or
instead of a raw torch/Python exception, with a CnnlensError subclass whose one-line message
names the argument; the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.errors import (
    CnnlensError,
    InputError,
    LayerNotFoundError,
    MethodNotFoundError,
    ModelError,
    TargetError,
)
from conftest import assert_unchanged, inputs, make_model, snapshot, torchvision_net


class NoGradNet(nn.Module):
    """Its forward runs under torch.no_grad(): nothing to differentiate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fc(self.conv(x).mean((2, 3)))


class InPlaceNet(NoGradNet):
    """Its forward scales its input in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return self.fc(self.conv(x).mean((2, 3)))


def _resnet() -> nn.Module:
    return torchvision_net("resnet18")


CASES = {
    # id: (model factory, x, method, keyword arguments, error type, words the message holds)
    "1-channel": (_resnet, inputs(1, 32)[:, :1], "gradcam", {}, InputError, "3-channel"),
    "4-channel": (
        _resnet,
        torch.randn(1, 4, 32, 32),
        "saliency",
        {},
        InputError,
        "got 4 channels in x",
    ),
    "too-small": (
        lambda: make_model("functional"),
        inputs(1, 2),
        "saliency",
        {},
        InputError,
        "input is too small",
    ),
    "too-small-cam": (
        lambda: make_model("functional"),
        inputs(1, 2),
        "gradcam",
        {"layer": "conv1"},
        InputError,
        "input is too small",
    ),
    "layer-int": (_resnet, inputs(1, 32), "gradcam", {"layer": 123}, LayerNotFoundError, "layer"),
    "method-none": (_resnet, inputs(1, 32), None, {}, MethodNotFoundError, "method"),
    "target-2**63": (_resnet, inputs(1, 32), "gradcam", {"target": 2**63}, TargetError, "target"),
    "unknown-option": (
        _resnet,
        inputs(1, 32),
        "gradcam",
        {"foo": 1},
        InputError,
        "method 'gradcam' takes no option 'foo'; its options: optimize",
    ),
    "device-option": (
        _resnet,
        inputs(1, 32),
        "gradcam",
        {"device": "cuda"},
        InputError,
        "no option 'device'",
    ),
    "no-grad-forward-cam": (NoGradNet, inputs(1, 8), "gradcam", {}, ModelError, "no_grad"),
    "no-grad-forward-pixels": (NoGradNet, inputs(1, 8), "saliency", {}, ModelError, "autograd"),
    "in-place-cam": (InPlaceNet, inputs(1, 8), "gradcam", {}, ModelError, "input in place"),
    "in-place-pixels": (InPlaceNet, inputs(1, 8), "saliency", {}, ModelError, "input in place"),
    "in-place-occlusion": (
        InPlaceNet,
        inputs(1, 8),
        "occlusion",
        {"window": 4, "stride": 4},
        ModelError,
        "input in place",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_argument_gets_one_line_naming_it(case):
    factory, x, method, kwargs, error, words = CASES[case]
    model = factory()
    before = snapshot(model)
    with pytest.raises(error) as info:
        cnnlens.explain(model, x.clone(), method, **kwargs)
    assert isinstance(info.value, CnnlensError)
    message = str(info.value)
    assert "\n" not in message
    assert words in message
    assert_unchanged(model, before)


def test_smoothgrad_and_unknown_method_options_still_checked():
    model = make_model("gap")
    with pytest.raises(InputError, match="foo"):
        cnnlens.explain(model, inputs(1, 16), "smoothgrad", foo=1)
    with pytest.raises(InputError, match="'scorecam' takes no option 'n_steps'"):
        cnnlens.explain(model, inputs(1, 16), "scorecam", n_steps=3)
