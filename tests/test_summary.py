"""cnnlens.summary and `cnnlens summary`: exact parameter and mult-add counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens import models
from cnnlens.errors import InputError
from cnnlens.summary import summary


def _meta(name: str, **kwargs: object) -> nn.Module:
    """Build on the meta device: shapes only, no memory, no random init cost."""
    with torch.device("meta"):
        return models.create(name, **kwargs)


# ------------------------------------------------------------------ hand-counted seeds


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def fc(fin: int, fout: int) -> int:
    return fin * fout + fout


HAND_PARAMS = {
    # conv(3->6, 5) + conv(6->16, 5) + fc 400-120-84-10
    "simplecnn": (3 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84)
    + (84 * 10 + 10),
    # three conv3x3 blocks 1-32-64-128 + fc 3200-625-10
    "mnist-cnn": (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 128 * 9 + 128)
    + (3200 * 625 + 625) + (625 * 10 + 10),
    # linear 784-512-100-10
    "mnist-dnn": (784 * 512 + 512) + (512 * 100 + 100) + (100 * 10 + 10),
    # four conv3x3 without bias + BatchNorm (weight and bias), fc 64 -> 5
    "gap-cnn": (3 * 16 * 9 + 2 * 16) + (16 * 32 * 9 + 2 * 32) + (32 * 64 * 9 + 2 * 64)
    + (64 * 64 * 9 + 2 * 64) + (64 * 5 + 5),
}  # fmt: skip

HAND_MULT_ADDS = {
    # out elements x (Cin * k * k) per conv, in x out per linear
    "simplecnn": 6 * 28 * 28 * (3 * 25) + 16 * 10 * 10 * (6 * 25) + 400 * 120 + 120 * 84 + 84 * 10,
    # 28 -> conv 28 -> pool(2, pad 1) 15 -> conv 15 -> 8 -> conv 8 -> 5
    "mnist-cnn": 32 * 28 * 28 * 9 + 64 * 15 * 15 * 32 * 9 + 128 * 8 * 8 * 64 * 9 + 3200 * 625
    + 625 * 10,
    "mnist-dnn": 784 * 512 + 512 * 100 + 100 * 10,
    # 64x64: block1 at 64, block2 at 32, blocks 3 and 4 at 16
    "gap-cnn": 16 * 64 * 64 * 3 * 9 + 32 * 32 * 32 * 16 * 9 + 64 * 16 * 16 * 32 * 9
    + 64 * 16 * 16 * 64 * 9 + 64 * 5,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HAND_PARAMS))
def test_seed_totals_are_the_hand_counts(name: str) -> None:
    spec = models.get_spec(name)
    s = summary(models.create(name), (spec.in_channels, *spec.input_size))
    assert s.total_params == HAND_PARAMS[name]
    assert s.trainable_params == HAND_PARAMS[name]
    assert s.mult_adds == HAND_MULT_ADDS[name]
    assert sum(r.params for r in s.rows) == s.total_params and s.unlisted_params == 0
    assert sum(r.mult_adds for r in s.rows) == s.mult_adds
    assert s.param_bytes == 4 * HAND_PARAMS[name]


def test_simplecnn_rows_list_the_reused_pool_twice() -> None:
    s = summary(models.create("simplecnn"), (3, 32, 32))
    got = [(r.name, r.type, r.kernel_size, r.output_shape, r.params, r.call) for r in s.rows]
    assert got == [
        ("conv1", "Conv2d", (5, 5), [1, 6, 28, 28], 456, 1),
        ("pool", "MaxPool2d", (2, 2), [1, 6, 14, 14], 0, 1),
        ("conv2", "Conv2d", (5, 5), [1, 16, 10, 10], 2416, 1),
        ("pool", "MaxPool2d", (2, 2), [1, 16, 5, 5], 0, 2),
        ("fc1", "Linear", None, [1, 120], 48120, 1),
        ("fc2", "Linear", None, [1, 84], 10164, 1),
        ("fc3", "Linear", None, [1, 10], 850, 1),
    ]
    # activation memory: float32 outputs of every leaf call
    elements = 6 * 28 * 28 + 6 * 14 * 14 + 16 * 10 * 10 + 16 * 5 * 5 + 120 + 84 + 10
    assert s.activation_bytes == 4 * elements
    assert s.input_bytes == 4 * 3 * 32 * 32


class _Twice(nn.Module):
    """One Linear used twice, plus a parameter held by the container itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(1))
        self.unused = nn.Linear(4, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc(self.fc(x)) * self.scale


def test_module_used_twice_counts_params_once_and_lists_each_call() -> None:
    s = summary(_Twice(), (1, 2, 2))
    assert [(r.name, r.call, r.params, r.mult_adds) for r in s.rows] == [
        ("_Twice", 1, 1, 0),  # the container's own parameter
        ("fc", 1, 20, 16),
        ("fc", 2, 0, 16),
    ]
    assert s.total_params == 20 + 1 + 4 * 100 + 100
    assert s.unlisted_params == 500  # never called
    assert s.mult_adds == 32


def test_batch_size_scales_mult_adds_and_memory() -> None:
    one = summary(models.create("simplecnn"), (3, 32, 32))
    four = summary(models.create("simplecnn"), (4, 3, 32, 32))
    assert four.mult_adds == 4 * one.mult_adds
    assert four.activation_bytes == 4 * one.activation_bytes
    assert four.total_params == one.total_params


# ------------------------------------------------------------------ torchvision


@pytest.mark.parametrize(
    ("name", "params"),
    [("alexnet", 61_100_840), ("resnet50", 25_557_032), ("vgg16", 138_357_544)],
)
def test_torchvision_parameter_counts(name: str, params: int) -> None:
    s = summary(_meta(name), (3, 224, 224))
    assert s.total_params == params
    assert s.unlisted_params == 0


def test_resnet18_mult_adds_known_figure_and_branches() -> None:
    s = summary(_meta("resnet18"), (3, 224, 224))
    assert s.mult_adds / 1e9 == pytest.approx(1.81, abs=0.005)
    # torchvision's weight metadata gives the same figure, in GFLOPS as it names them
    from torchvision.models import ResNet18_Weights

    assert s.mult_adds / 1e9 == pytest.approx(ResNet18_Weights.DEFAULT.meta["_ops"], abs=5e-4)
    names = [r.name for r in s.rows]
    assert "layer2.0.downsample.0" in names and "layer4.1.conv2" in names
    assert names.count("layer1.0.relu") == 2  # BasicBlock calls its ReLU twice
    assert sum(r.params for r in s.rows) == 11_689_512


def test_attention_written_functionally_is_counted() -> None:
    """Swin computes attention with F.linear and matmul inside one module."""
    from torchvision.models import Swin_T_Weights, ViT_B_16_Weights

    for name, weights in (("vit_b_16", ViT_B_16_Weights), ("swin_t", Swin_T_Weights)):
        s = summary(_meta(name), (3, 224, 224))
        assert s.mult_adds / 1e9 == pytest.approx(weights.DEFAULT.meta["_ops"], rel=1e-3)
    vit = summary(_meta("vit_b_16"), (3, 224, 224))
    assert vit.rows[0].name == "VisionTransformer" and vit.rows[0].params == 768  # class token


def test_depth_collapses_deeper_levels() -> None:
    full = summary(_meta("resnet18"), (3, 224, 224))
    one = summary(_meta("resnet18"), (3, 224, 224), depth=1)
    assert [r.name for r in one.rows] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool",
        "fc",
    ]  # fmt: skip
    layer1 = one.rows[4]
    assert layer1.params == 4 * (64 * 64 * 9 + 2 * 64)
    assert layer1.mult_adds == sum(r.mult_adds for r in full.rows if r.name.startswith("layer1."))
    assert layer1.output_shape == [1, 64, 56, 56]
    assert sum(r.mult_adds for r in one.rows) == full.mult_adds == one.mult_adds
    zero = summary(_meta("resnet18"), (3, 224, 224), depth=0)
    assert [(r.name, r.params) for r in zero.rows] == [("ResNet", 11_689_512)]


def test_summary_leaves_the_model_as_it_was() -> None:
    model = models.create("mnist-cnn")
    model.train()
    model.block2.eval()
    flags = {n: m.training for n, m in model.named_modules()}
    grad_modes = []
    handle = model.block1.register_forward_hook(
        lambda *_: grad_modes.append(torch.is_grad_enabled())
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary(model, (1, 28, 28))
    handle.remove()
    assert grad_modes == [False]
    with pytest.raises(InputError, match=r"block1\.conv.*channels"):
        summary(model, (3, 28, 28))  # the error path restores too
    for name, module in model.named_modules():
        assert module.training == flags[name]
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_bad_arguments() -> None:
    model = models.create("simplecnn")
    with pytest.raises(InputError, match="input_size"):
        summary(model, (32, 32))
    with pytest.raises(InputError, match="depth"):
        summary(model, (3, 32, 32), depth=-1)
    with pytest.raises(InputError, match=r"fc1.*mat1 and mat2"):
        summary(model, (3, 40, 40))


def test_to_dict_and_text() -> None:
    s = cnnlens.summary(models.create("simplecnn"), (3, 32, 32))
    d = json.loads(json.dumps(s.to_dict()))
    assert d["totals"]["params"] == HAND_PARAMS["simplecnn"]
    assert d["rows"][0] == {
        "name": "conv1",
        "type": "Conv2d",
        "depth": 1,
        "kernel_size": [5, 5],
        "output_shape": [1, 6, 28, 28],
        "params": 456,
        "mult_adds": 6 * 28 * 28 * 75,
        "output_bytes": 4 * 6 * 28 * 28,
        "call": 1,
    }
    text = str(s)
    assert "pool (call 2)" in text and "Total params: 62,006" in text


# ------------------------------------------------------------------ CLI


def test_cli_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlens.cli.main import main

    assert main(["summary", "simplecnn", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_size"] == [1, 3, 32, 32]
    assert data["totals"]["params"] == HAND_PARAMS["simplecnn"]
    assert data["totals"]["mult_adds"] == HAND_MULT_ADDS["simplecnn"]
    assert len(data["rows"]) == 7


def test_cli_summary_table_depth_and_input_size(capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlens.cli.main import main

    assert main(["summary", "resnet18", "--depth", "1", "--input-size", "3,64,64"]) == 0
    out = capsys.readouterr().out
    assert "layer4" in out and "layer4.0" not in out
    assert "Total params: 11,689,512" in out


def test_cli_summary_of_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlens.cli.main import main

    path = models.save_checkpoint(
        models.create("gap-cnn", in_channels=1, num_classes=3),
        tmp_path / "model.safetensors",
        arch="gap-cnn",
        arch_kwargs={"in_channels": 1, "num_classes": 3},
    )
    assert main(["summary", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_size"] == [1, 1, 28, 28]  # from the checkpoint's metadata
    grey_3_classes = (
        (1 * 16 * 9 + 2 * 16) + (16 * 32 * 9 + 2 * 32) + (32 * 64 * 9 + 2 * 64)
        + (64 * 64 * 9 + 2 * 64) + (64 * 3 + 3)
    )  # fmt: skip
    assert data["totals"]["params"] == grey_3_classes


def test_cli_summary_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlens.cli.main import main

    assert main(["summary", "resnet81"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet81'" in err and "resnet18" in err and len(err.splitlines()) == 1
    assert main(["summary", "simplecnn", "--input-size", "3,x,32"]) == 2
    assert "--input-size" in capsys.readouterr().err
