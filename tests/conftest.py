"""Shared test helpers: tiny CNNs of several shapes and a model-state snapshot."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class ReluNet(nn.Module):
    """conv-relu-conv-relu-pool-linear with nn.ReLU modules (optionally in-place)."""

    def __init__(self, inplace: bool = False, channels: int = 3, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(inplace=inplace),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.LazyLinear(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FunctionalNet(nn.Module):
    """The CIFAR-10 tutorial shape: ReLU applied functionally with F.relu."""

    def __init__(self, channels: int = 3, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class GapNet(nn.Module):
    """All-convolutional net ending in global average pooling and one linear layer."""

    def __init__(self, channels: int = 3, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ReusedNet(nn.Module):
    """One conv module and one ReLU module used twice in forward."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.block(x))
        x = self.act(self.block(x))
        return self.fc(x.mean(dim=(2, 3)))


def make_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {
        "relu": lambda: ReluNet(inplace=False),
        "inplace": lambda: ReluNet(inplace=True),
        "functional": FunctionalNet,
        "gap": GapNet,
        "reused": ReusedNet,
    }[kind]()
    model(torch.zeros(1, 3, 32, 32))  # materialize lazy layers
    return model.eval()


MODEL_KINDS = ["relu", "inplace", "functional", "gap", "reused"]


def snapshot(model: nn.Module) -> dict:
    """Everything an explanation must leave as it was."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers()],
    }


def hook_count(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks)
        n += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return n


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"])
    for a, b in zip(after["params"], before["params"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(after["buffers"], before["buffers"], strict=True):
        assert torch.equal(a, b)
    assert hook_count(model) == 0


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


_SHARED_NETS: dict[str, nn.Module] = {}


def torchvision_net(name: str) -> nn.Module:
    """A seeded torchvision net with 10 classes, built once per session (explanations never
    change it)."""
    if name not in _SHARED_NETS:
        torch.manual_seed(0)
        _SHARED_NETS[name] = getattr(torchvision.models, name)(weights=None, num_classes=10)
        _SHARED_NETS[name].eval()
    return _SHARED_NETS[name]


@pytest.fixture(autouse=True)
def _shared_nets_keep_no_grad() -> Iterator[None]:
    """Peer libraries (pytorch-grad-cam, torchcam) backpropagate into the parameters of the
    nets they explain; cnnlens never does (tests assert it), so after each test the
    session-shared nets are reset for the next one."""
    yield
    for net in _SHARED_NETS.values():
        net.zero_grad(set_to_none=True)


def simplecnn() -> nn.Module:
    """cnnlens' seed ``simplecnn`` (the PyTorch tutorial net, functional ReLUs), seeded."""
    from cnnlens.models import create

    torch.manual_seed(0)
    return create("simplecnn").eval()


def inputs(b: int, size: int, seed: int = 1) -> torch.Tensor:
    """``b`` seeded random RGB images of ``size`` x ``size``."""
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    """allclose with a tolerance relative to the reference's largest magnitude."""
    ref = ref.detach()
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=rtol * float(ref.abs().max()) + 1e-7)


def check_batched_equals_per_image(method: str, opts: dict):
    """Explain three images in one batch and one by one (classes 0, 3, 4 of the in-place
    ReLU net): the same raw values and maps, and the model left as it was. Returns the
    batched :class:`cnnlens.Explanation`."""
    import cnnlens

    model = make_model("inplace")
    x = inputs(3, 32)
    tgt = torch.tensor([0, 3, 4])
    before = snapshot(model)
    batched = cnnlens.explain(model, x, method, target=tgt, **opts)
    assert_unchanged(model, before)
    for i in range(3):
        one = cnnlens.explain(model, x[i : i + 1], method, target=int(tgt[i]), **opts)
        torch.testing.assert_close(batched.raw[i], one.raw[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched.maps[i], one.maps[0], atol=1e-4, rtol=1e-4)
    assert batched.maps.shape == (3, 32, 32)
    return batched


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a whole test module (``pytestmark = usefixtures(...)``), the
    previous thread count restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g)
