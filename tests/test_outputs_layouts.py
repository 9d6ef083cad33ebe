"""Issue 12: scores from any output (``output=``), activation layouts, layer names, guards.

Tiny hand-made models: each non-tensor output wraps the same classifier, so every method
must give the maps of the plain classifier.
"""

from __future__ import annotations

import dataclasses
from collections import namedtuple

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.core.layouts import decide_layout
from cnnlens.core.registry import preset_options
from cnnlens.errors import InputError, LayerNotFoundError, ModelError, TargetError
from conftest import assert_unchanged, hook_count, make_model, snapshot

TINY = preset_options(cnnlens.list_methods(), "tiny")
Pair = namedtuple("Pair", ["feats", "scores"])


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: torch.Tensor


class Wrapped(nn.Module):
    """The tiny classifier ``net`` with its logits returned inside another structure."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x: torch.Tensor) -> object:
        y = self.net(x)
        if self.kind == "tuple":
            return (x.mean(), y)
        if self.kind == "namedtuple":
            return Pair(x.mean((2, 3)), y)
        if self.kind == "dict":
            return {"out": y, "aux": y * 2}
        return Out(logits=y, hidden=x.mean((2, 3)))


# the output= each wrapping needs (None: automatic)
CHOICE = {"tuple": 1, "namedtuple": "scores", "dict": None, "object": None}
RECORDED = {"tuple": "1", "namedtuple": "scores", "dict": "out", "object": "logits"}


@pytest.mark.parametrize("method", cnnlens.list_methods())
def test_every_method_reads_a_wrapped_output(method: str, images: torch.Tensor) -> None:
    base = make_model("gap").eval()
    ref = cnnlens.explain(base, images, method, target=[0, 1, 2], **TINY.get(method, {}))
    kinds = ["object"] if method in {"scorecam", "ablationcam", "occlusion", "rise"} else CHOICE
    for kind in kinds:
        model = Wrapped(base, kind)
        before = snapshot(model)
        exp = cnnlens.explain(
            model, images, method, target=[0, 1, 2], output=CHOICE[kind], **TINY.get(method, {})
        )
        torch.testing.assert_close(exp.maps, ref.maps, atol=1e-5, rtol=1e-4)
        assert exp.output == {"tuple": "1", "namedtuple": "scores"}.get(
            kind, "logits" if kind == "object" else "out"
        )
        assert_unchanged(model, before)


def test_topk_int_and_detached_scores_on_an_object_output(images: torch.Tensor) -> None:
    base = make_model("gap").eval()
    model = Wrapped(base, "object")
    exp = cnnlens.explain(model, images, "gradcam", topk=2)
    ref = cnnlens.explain(base, images, "gradcam", topk=2)
    torch.testing.assert_close(exp.maps, ref.maps)
    assert exp.maps.shape == (3, 2, 32, 32)
    assert isinstance(exp.scores, Out) and not exp.scores.logits.requires_grad
    one = cnnlens.explain(model, images, "saliency", target=3)
    assert one.targets.tolist() == [3, 3, 3] and not one.scores.hidden.requires_grad
    with pytest.raises(TargetError, match="out of range"):
        cnnlens.explain(model, images, "gradcam", target=99)


def test_output_callable_key_and_errors(images: torch.Tensor) -> None:
    base = make_model("gap").eval()
    model = Wrapped(base, "dict")
    ref = cnnlens.explain(base, images, "gradcam", target=1)
    half = cnnlens.explain(model, images, "gradcam", target=1, output=lambda o: o["aux"] / 2)
    torch.testing.assert_close(half.maps, ref.maps)
    assert half.output.startswith("callable")
    aux = cnnlens.explain(model, images, "gradcam", target=1, output="aux")
    torch.testing.assert_close(aux.maps, ref.maps)
    # a callable target gets the selected output when output= is given
    fn = cnnlens.explain(model, images, "gradcam", target=lambda y: y[:, 1], output="aux")
    torch.testing.assert_close(fn.maps, ref.maps)
    with pytest.raises(TargetError, match=r"fields 0, 1.*output="):
        cnnlens.explain(Wrapped(base, "tuple"), images, "gradcam")
    with pytest.raises(TargetError, match=r"choose one of: 0, 1"):
        cnnlens.explain(Wrapped(base, "tuple"), images, "gradcam", output=5)
    with pytest.raises(TargetError, match=r"shape \(3, 3, 32, 32\)"):
        cnnlens.explain(Wrapped(base, "tuple"), images, "saliency", output=lambda o: o[0] + images)
    assert hook_count(model) == 0


def test_rise_on_a_single_output_model_uses_the_sigmoid(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1))
    model(images)
    model.eval()
    exp = cnnlens.explain(model, images, "rise", target=0, n_masks=64, seed=0)
    assert float(exp.maps.amax()) == 1.0  # not the constant map of a softmax over one unit
    assert float(exp.raw.flatten(1).std(1).min()) > 0


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


class ChannelsLastNet(nn.Module):
    """A conv net whose ``block`` returns (B, h, w, C), as Swin and ConvNeXt blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, stride=4, padding=1)
        self.block = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), Permute(0, 2, 3, 1))
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(torch.relu(self.conv(x)))
        return self.fc(h.mean((1, 2)))


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def test_nhwc_layer_is_read_as_nhwc(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    for method in ["gradcam", "eigencam", "ablationcam", "scorecam"]:
        kw = TINY.get(method, {})
        exp = cnnlens.explain(model, images, method, layer="block", target=1, **kw)
        ref = cnnlens.explain(model, images, method, layer="block.0", target=1, **kw)
        torch.testing.assert_close(exp.maps, ref.maps, atol=1e-5, rtol=1e-4)
    auto = cnnlens.explain(model, images, "gradcam", target=1)
    assert auto.layer == "block"
    with pytest.raises(LayerNotFoundError, match="layout="):
        cnnlens.explain(model, images, "gradcam", layer="block", layout="tokens")
    assert hook_count(model) == 0


def test_decide_layout_refuses_what_it_cannot_read() -> None:
    x = torch.zeros(2, 3, 64, 64)
    assert decide_layout(torch.zeros(2, 8, 8, 96), x, "a").kind == "nhwc"
    assert decide_layout(torch.zeros(2, 96, 8, 8), x, "a").kind == "nchw"
    tok = decide_layout(torch.zeros(2, 17, 32), x, "a")
    assert (tok.kind, tok.prefix, tok.grid) == ("tokens", 1, (4, 4))
    with pytest.raises(LayerNotFoundError, match="batch is not the input's"):
        decide_layout(torch.zeros(150, 8, 4, 4), x, "roi_heads")
    with pytest.raises(LayerNotFoundError, match="layout='nchw' or layout='nhwc'"):
        decide_layout(torch.zeros(2, 3, 100, 5), x, "odd")
    with pytest.raises(LayerNotFoundError, match=r"no patch grid.*tokens:p"):
        decide_layout(torch.zeros(2, 50, 32), x, "t")
    with pytest.raises(LayerNotFoundError, match=r"several grids.*tokens:p"):
        decide_layout(torch.zeros(2, 4, 32), x, "t")  # 2x2 patches, or 3 tokens and 1x1
    assert decide_layout(torch.zeros(2, 21, 32), x, "t", "tokens:5").prefix == 5


class RoiNet(nn.Module):
    """A backbone then a head that runs on a different batch (regions), like ROI pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 3, padding=1)
        self.roi = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.backbone(x))
        regions = self.roi(f.repeat(5, 1, 1, 1)[:, :, :8, :8])  # 5 regions per image
        return self.fc(regions.mean((2, 3))).view(5, x.shape[0], 4).mean(0)


def test_automatic_layer_skips_other_batches_and_unused_layers(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = RoiNet().eval()
    assert cnnlens.explain(model, images, "gradcam").layer == "backbone"
    with pytest.raises(LayerNotFoundError, match="batch is not the input's"):
        cnnlens.explain(model, images, "gradcam", layer="roi")
    # a layer the score does not read: a warning that names it, not a silent empty map
    base = make_model("gap").eval()
    model = Wrapped(base, "dict")
    with pytest.warns(RuntimeWarning, match="does not depend on layer"):
        cnnlens.explain(
            model, images, "gradcam", layer="net.features.0", target=lambda o: o["out"][:, 0] * 0
        )


# ---------------------------------------------------------------------------------------------
# Layer names
# ---------------------------------------------------------------------------------------------


class Compiled(nn.Module):
    """Stands for torch.compile's OptimizedModule: the model under ``_orig_mod``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._orig_mod = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._orig_mod(x)


def test_layer_names_as_users_type_them(images: torch.Tensor) -> None:
    base = make_model("gap").eval()
    names = [n for n, _ in base.named_modules() if n.startswith("features.")]
    last = max(int(n.split(".")[1]) for n in names)
    ref = cnnlens.explain(base, images, "gradcam", layer=f"features.{last}")
    for model, layer in [
        (base, "features[-1]"),
        (base, base.features[-1]),
        (Compiled(base), "features[-1]"),
        (nn.DataParallel(base), f"features.{last}"),
        (nn.DataParallel(base), f"module.features[{last}]"),
    ]:
        exp = cnnlens.explain(model, images, "gradcam", layer=layer)
        torch.testing.assert_close(exp.maps, ref.maps)
    with pytest.raises(LayerNotFoundError, match=r"candidates: .*features\.") as err:
        cnnlens.explain(Compiled(base), images, "gradcam", layer="featurez.1")
    assert "_orig_mod" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Guards
# ---------------------------------------------------------------------------------------------


def test_guards(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    gelu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(3))
    gelu(images)
    for method in ["guided_backprop", "deconvnet"]:
        with pytest.warns(RuntimeWarning, match="no ReLU"):
            cnnlens.explain(gelu.eval(), images, method)
    base = make_model("gap").eval()
    script = torch.jit.trace(base, images)
    with pytest.raises(ModelError, match=r"TorchScript.*saliency"):
        cnnlens.explain(script, images, "gradcam")
    assert cnnlens.explain(script, images, "saliency").maps.shape == (3, 32, 32)
    with pytest.raises(InputError, match="NHWC"):
        cnnlens.explain(base, images.permute(0, 2, 3, 1), "saliency")
    half = make_model("gap").to(torch.bfloat16).eval()
    exp = cnnlens.explain(half, images.to(torch.bfloat16), "cam")
    assert exp.maps.shape == (3, 32, 32) and float(exp.maps.amax()) == 1.0
