"""cnnlens.models: seed architectures, torchvision factory, safe weights, checkpoints."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens import models
from cnnlens.errors import InputError, ModelError, WeightsError
from cnnlens.models.weights import torchvision_cache_file

SEEDS = ["simplecnn", "mnist-cnn", "mnist-dnn", "gap-cnn"]


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere, BatchNorm running stats included (so buffers matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=g) * 0.5
                if not name.endswith("running_var"):
                    values = values - 0.25
                t.copy_(values + (0.5 if name.endswith("running_var") else 0.0))
    return model


# ------------------------------------------------------------------ seed architectures


def _reference_forward(name: str, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The architecture as the issue describes it, written with functional ops."""
    p = dict(m.named_parameters())
    b = dict(m.named_buffers())
    if name == "simplecnn":
        x = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"])), 2)
        x = F.max_pool2d(F.relu(F.conv2d(x, p["conv2.weight"], p["conv2.bias"])), 2)
        x = x.reshape(x.shape[0], 400)
        x = F.relu(F.linear(x, p["fc1.weight"], p["fc1.bias"]))
        x = F.relu(F.linear(x, p["fc2.weight"], p["fc2.bias"]))
        return F.linear(x, p["fc3.weight"], p["fc3.bias"])
    if name == "mnist-cnn":
        for i in (1, 2, 3):
            w, bias = p[f"block{i}.conv.weight"], p[f"block{i}.conv.bias"]
            x = F.max_pool2d(F.relu(F.conv2d(x, w, bias, padding=1)), 2, padding=1)
        x = x.reshape(x.shape[0], 3200)
        x = F.relu(F.linear(x, p["classifier.fc.weight"], p["classifier.fc.bias"]))
        return F.linear(x, p["classifier.out.weight"], p["classifier.out.bias"])
    if name == "mnist-dnn":
        x = x.reshape(x.shape[0], 784)
        for i in (1, 2, 3):
            x = F.linear(x, p[f"fc{i}.weight"], p[f"fc{i}.bias"])
        return x
    assert name == "gap-cnn"
    for i in (1, 2, 3, 4):
        pre = f"features.block{i}"
        x = F.conv2d(x, p[f"{pre}.conv.weight"], padding=1)
        x = F.batch_norm(
            x,
            b[f"{pre}.bn.running_mean"],
            b[f"{pre}.bn.running_var"],
            p[f"{pre}.bn.weight"],
            p[f"{pre}.bn.bias"],
        )
        x = F.relu(x)
        if i in (1, 2):
            x = F.max_pool2d(x, 2)
    return F.linear(x.mean(dim=(2, 3)), p["fc.weight"], p["fc.bias"])


@pytest.mark.parametrize("name", SEEDS)
def test_seed_matches_its_description(name: str) -> None:
    spec = models.get_spec(name)
    model = _randomize(models.create(name)).eval()
    x = torch.randn(
        3, spec.in_channels, *spec.input_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        out = model(x)
        expected = _reference_forward(name, model, x)
    assert out.shape == (3, spec.num_classes)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_seed_specs() -> None:
    assert [
        (s.name, s.in_channels, s.input_size, s.num_classes, s.preset)
        for s in map(models.get_spec, SEEDS)
    ] == [
        ("simplecnn", 3, (32, 32), 10, "cifar10"),
        ("mnist-cnn", 1, (28, 28), 10, "mnist"),
        ("mnist-dnn", 1, (28, 28), 10, "mnist"),
        ("gap-cnn", 3, (64, 64), 5, "none"),
    ]
    grey = models.get_spec("gap-cnn", in_channels=1, num_classes=4)
    assert (grey.in_channels, grey.input_size, grey.num_classes, grey.preset) == (
        1,
        (28, 28),
        4,
        "mnist",
    )


def test_mnist_cnn_dropout_is_keep_probability_converted() -> None:
    m = models.create("mnist-cnn")
    assert [m.get_submodule(f"block{i}.drop").p for i in (1, 2, 3)] == [0.3, 0.3, 0.3]
    assert m.get_submodule("classifier.drop").p == 0.5
    assert isinstance(m.get_submodule("block3.relu"), nn.ReLU)


@pytest.mark.parametrize(("channels", "size", "cam_size"), [(3, 64, 16), (1, 28, 7)])
def test_gap_cnn_last_block_and_cam_identity(channels: int, size: int, cam_size: int) -> None:
    """GAP + one linear layer: logits == mean over the map of sum_k w_k A^k (+ bias)."""
    model = _randomize(models.create("gap-cnn", in_channels=channels, num_classes=4)).eval()
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        acts = model.features(x)
        logits = model(x)
    assert acts.shape == (2, 64, cam_size, cam_size)
    cams = torch.einsum("ck,bkhw->bchw", model.fc.weight, acts)
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + model.fc.bias, logits)


def test_names_resolve_and_unknown_lists_close_names() -> None:
    assert models.resolve_name("Mnist_CNN") == "mnist-cnn"
    assert models.resolve_name("ResNet18") == "resnet18"
    with pytest.raises(ModelError, match=r"close names: .*resnet50") as err:
        models.create("resnet51")
    assert "resnet51" in str(err.value)
    with pytest.raises(ModelError, match=r"close names: gap-cnn"):
        models.get_spec("gap_cmn")
    names = models.list_models()
    assert set(SEEDS) <= set(names) and {"resnet50", "vgg16", "convnext_tiny"} <= set(names)
    assert models.list_models("cnnlens") == sorted(SEEDS)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ModelError, match="num_classes"):
        models.create("simplecnn", num_classes=0)
    with pytest.raises(ModelError, match="bad arguments for gap-cnn"):
        models.create("gap-cnn", width=3)


# ------------------------------------------------------------------ torchvision


def test_torchvision_model_builds_offline_with_imagenet_names() -> None:
    spec = models.get_spec("squeezenet1_1")
    assert spec.input_size == (224, 224) and spec.preset == "imagenet"
    assert spec.class_names is not None and len(spec.class_names) == 1000
    assert spec.class_names[0] == "tench" and spec.class_names[1] == "goldfish"
    assert models.get_spec("inception_v3").input_size == (299, 299)
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=7, in_channels=1).eval()
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 7)
    assert models.get_spec("resnet18", num_classes=7).class_names is None


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch.hub cache, and a network that is down."""
    hub_dir = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub_dir


def test_offline_weights_name_says_which_file_to_place(hub: Path) -> None:
    from torchvision.models import SqueezeNet1_1_Weights

    url_name = SqueezeNet1_1_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    expected = hub / "checkpoints" / url_name
    with pytest.raises(WeightsError) as err:
        models.create("squeezenet1_1", weights="DEFAULT")
    message = str(err.value)
    assert str(expected) in message and "unreachable" in message
    assert "\n" not in message
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the override is undone


def _fake_pretrained(name: str, hub: Path) -> dict[str, torch.Tensor]:
    """Random weights written where torch.hub looks for the real file."""
    torch.manual_seed(3)
    state = _randomize(models.create(name), seed=3).state_dict()
    entry = models.registry.torchvision_weights(name, "DEFAULT")
    path = torchvision_cache_file(entry)
    assert path.parent == hub / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_cached_weights_load_without_network(hub: Path) -> None:
    state = _fake_pretrained("squeezenet1_1", hub)
    model = models.create("squeezenet1_1", weights="IMAGENET1K_V1")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    model, info = models.load("squeezenet1_1", weights="SqueezeNet1_1_Weights.DEFAULT")
    assert not model.training
    assert info.dataset == "ImageNet-1K" and info.accuracy == pytest.approx(0.58178)
    assert info.class_names is not None and info.class_names[0] == "tench"


def test_pretrained_head_and_input_channels_adapted(hub: Path) -> None:
    state = _fake_pretrained("squeezenet1_1", hub)
    model = models.create("squeezenet1_1", weights="DEFAULT", num_classes=3, in_channels=1)
    rgb = state["features.0.weight"]
    # one channel: the RGB kernel summed, so a grey image x gives the response to (x, x, x)
    torch.testing.assert_close(model.features[0].weight, rgb.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.features[3].squeeze.weight, state["features.3.squeeze.weight"])
    assert model.classifier[1].weight.shape == (3, 512, 1, 1)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3)
    two = models.create("squeezenet1_1", weights="DEFAULT", in_channels=5)
    expected = torch.cat([rgb, rgb], dim=1)[:, :5] * (3 / 5)
    torch.testing.assert_close(two.features[0].weight, expected)


class _Evil:
    """A pickle payload whose unpickling would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_payload_is_live_under_plain_pickle(tmp_path: Path) -> None:
    """Proves the refusal tests below would notice code running."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


def test_pickled_code_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = models.create("mnist-dnn").state_dict()
    zipped = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "hook": _Evil(marker)}, zipped)
    legacy = tmp_path / "evil.pth"
    with legacy.open("wb") as fh:
        pickle.dump({"x": _Evil(marker)}, fh, protocol=2)
    for path in (zipped, legacy):
        with pytest.raises(WeightsError, match="refused without running"):
            models.create("mnist-dnn", weights=path)
        assert not marker.exists()


def test_cached_torchvision_file_with_code_refused(hub: Path) -> None:
    """torchvision's loader asks for weights_only=False; cnnlens forces it back on."""
    entry = models.registry.torchvision_weights("squeezenet1_1", "DEFAULT")
    path = torchvision_cache_file(entry)
    path.parent.mkdir(parents=True)
    marker = hub / "pwned"
    torch.save({"features.0.weight": _Evil(marker)}, path)
    with pytest.raises(WeightsError, match="refused"):
        models.create("squeezenet1_1", weights="DEFAULT")
    assert not marker.exists()


def test_state_dict_files_load(tmp_path: Path) -> None:
    source = _randomize(models.create("gap-cnn", num_classes=4), seed=5)
    x = torch.randn(2, 3, 64, 64)
    source.eval()
    with torch.no_grad():
        expected = source(x)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    wrapped = tmp_path / "wrapped.pth"
    dp = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": dp, "optimizer": {"lr": 0.1}}, wrapped)
    under_model = tmp_path / "model.tar"
    torch.save({"model": source.state_dict()}, under_model)
    from safetensors.torch import save_file

    st = tmp_path / "plain.safetensors"
    save_file(source.state_dict(), str(st))
    for path in (plain, wrapped, under_model, st):
        model = models.create("gap-cnn", num_classes=4, weights=path).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected)


def test_state_dict_that_does_not_fit_lists_keys_and_first_mismatch(tmp_path: Path) -> None:
    state = models.create("gap-cnn", num_classes=5).state_dict()
    del state["features.block2.bn.weight"]
    state["head.extra"] = torch.zeros(3)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        models.create("gap-cnn", num_classes=4, weights=path)
    message = str(err.value)
    assert "1 missing key(s): features.block2.bn.weight" in message
    assert "1 unexpected key(s): head.extra" in message
    assert "first shape mismatch: fc.weight is [5, 64] in the weights but [4, 64]" in message
    assert "fc.bias" not in message  # only the first mismatch


def test_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no named weights"):
        models.create("simplecnn", weights="DEFAULT")
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        models.create("squeezenet1_1", weights="IMAGENET9K")
    with pytest.raises(WeightsError, match="not found"):
        models.create("simplecnn", weights=tmp_path / "missing.pt")
    broken = tmp_path / "broken.pt"
    torch.save(models.create("mnist-dnn").state_dict(), broken)
    broken.write_bytes(broken.read_bytes()[:300])
    with pytest.raises(WeightsError, match="cannot be read"):
        models.create("mnist-dnn", weights=broken)
    scalar = tmp_path / "scalar.pt"
    torch.save({"epoch": 3}, scalar)
    with pytest.raises(WeightsError, match="'epoch' holds a int"):
        models.create("mnist-dnn", weights=scalar)


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _randomize(models.create("gap-cnn", in_channels=1, num_classes=4), seed=7)
    model.eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    names = ["circle", "square", "triangle", "star"]
    path = models.save_checkpoint(
        model,
        tmp_path / "run" / "model.safetensors",
        arch="gap-cnn",
        arch_kwargs={"in_channels": 1, "num_classes": 4},
        class_names=names,
        dataset="shapes",
        accuracy=0.975,
        extra={"epochs": 3, "lr": 0.05},
    )
    assert path == tmp_path / "run" / "model.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]
    loaded, info = models.load(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    assert (info.arch, info.arch_kwargs, info.class_names) == (
        "gap-cnn",
        {"in_channels": 1, "num_classes": 4},
        names,
    )
    assert (info.input_size, info.in_channels, info.preset, info.num_classes) == (
        (28, 28),
        1,
        "mnist",
        4,
    )
    assert (info.dataset, info.accuracy, info.extra) == ("shapes", 0.975, {"epochs": 3, "lr": 0.05})
    assert models.read_checkpoint_info(str(path)).to_dict() == info.to_dict()
    json.dumps(info.to_dict())
    # the header is plain JSON any safetensors reader can see
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["cnnlens"])["arch"] == "gap-cnn"


def test_checkpoint_keeps_half_precision(tmp_path: Path) -> None:
    model = _randomize(models.create("mnist-dnn"), seed=8).half()
    path = models.save_checkpoint(model, tmp_path / "half.safetensors", arch="mnist-dnn")
    loaded, info = models.load(path)
    assert info.dtype == "float16" and loaded.fc1.weight.dtype == torch.float16
    torch.testing.assert_close(loaded.fc1.weight, model.fc1.weight, rtol=0, atol=0)


def test_checkpoint_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = models.create("simplecnn")
    path = models.save_checkpoint(model, tmp_path / "model.safetensors", arch="simplecnn")
    before = path.read_bytes()
    import safetensors.torch

    def half_write(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        models.save_checkpoint(
            _randomize(model), path, arch="simplecnn", dataset="cifar10", accuracy=0.5
        )
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_checkpoint_metadata_must_describe_the_model(tmp_path: Path) -> None:
    model = models.create("gap-cnn", num_classes=4)
    with pytest.raises(WeightsError, match=r"fc.weight is \[4, 64\] in the weights but \[5, 64\]"):
        models.save_checkpoint(model, tmp_path / "m.safetensors", arch="gap-cnn")
    with pytest.raises(InputError, match="class_names has 2 names"):
        models.save_checkpoint(
            model,
            tmp_path / "m.safetensors",
            arch="gap-cnn",
            arch_kwargs={"num_classes": 4},
            class_names=["a", "b"],
        )
    with pytest.raises(ModelError, match="unknown model"):
        models.save_checkpoint(model, tmp_path / "m.safetensors", arch="gapnet")
    assert not list(tmp_path.iterdir())


def test_load_errors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file(models.create("mnist-dnn").state_dict(), str(plain))
    with pytest.raises(WeightsError, match=r"no cnnlens metadata.*load\(ARCH, weights="):
        models.load(plain)
    model, info = models.load("mnist-dnn", weights=plain)
    assert info.source == str(plain) and not model.training
    with pytest.raises(InputError, match="weights= goes with a model name"):
        models.load(plain, weights=plain)
    with pytest.raises(WeightsError, match="not found"):
        models.load(tmp_path / "nothing.safetensors")
    with pytest.raises(ModelError, match="unknown model"):
        models.load("resnet-eighteen")
    with pytest.raises(InputError, match="device"):
        models.load("mnist-dnn", device="gpu0")


def test_checkpoint_of_a_data_parallel_model(tmp_path: Path) -> None:
    inner = _randomize(models.create("mnist-dnn"), seed=9)
    path = models.save_checkpoint(
        nn.DataParallel(inner), tmp_path / "dp.safetensors", arch="mnist-dnn"
    )
    loaded, info = models.load(path)
    assert info.class_names is None and info.num_classes == 10
    for key, value in inner.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
