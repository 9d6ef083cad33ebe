"""The seed architectures: four small networks from the classic tutorials.

Each is small enough to train on two CPU cores in a minute or two, and each has readable
layer names so a layer can be picked by name (``"conv2"``, ``"block3.conv"``,
``"features"``).

>>> from cnnlens.models.seeds import GapCNN
>>> net = GapCNN(in_channels=1, num_classes=4)
>>> net(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 4])
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GapCNN", "MnistCNN", "MnistDNN", "SimpleCNN"]


class SimpleCNN(nn.Module):
    """The CIFAR-10 network of the PyTorch "Training a classifier" tutorial.

    conv(3->6, 5x5) -> ReLU -> maxpool 2 -> conv(6->16, 5x5) -> ReLU -> maxpool 2 ->
    fc 400->120 -> ReLU -> fc 120->84 -> ReLU -> fc 84->10, for 32x32 RGB inputs.
    As in the tutorial the ReLUs are functional (``F.relu``) and the one ``pool`` module is
    used twice, so the activation captured at ``conv1``/``conv2`` is the pre-ReLU one.

    Args:
        num_classes: Outputs of the last linear layer.
        in_channels: Channels of the input image.

    Example:
        >>> SimpleCNN()(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _mnist_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, 3, padding=1),
            relu=nn.ReLU(),
            pool=nn.MaxPool2d(2, padding=1),
            drop=nn.Dropout(p=0.3),
        )
    )


class MnistCNN(nn.Module):
    """The three-block MNIST CNN of the classic TensorFlow CNN tutorial.

    Three blocks ``blockN = conv3x3 (padding 1) -> ReLU -> maxpool(2, padding 1) -> dropout``
    with 32, 64 and 128 channels (28 -> 15 -> 8 -> 5 pixels), then
    ``classifier = fc 3200->625 -> ReLU -> dropout -> fc 625->10``.

    The tutorial's dropout values 0.7 (conv blocks) and 0.5 (fully connected) are *keep*
    probabilities (TensorFlow's ``keep_prob``), so the PyTorch drop probabilities are
    ``p = 1 - 0.7 = 0.3`` and ``p = 1 - 0.5 = 0.5``.

    Layer names: ``block1.conv`` ... ``block3.conv``, ``block3.relu`` (the last conv feature
    map after ReLU), ``classifier.fc``, ``classifier.out``.

    Args:
        num_classes: Outputs of the last linear layer.
        in_channels: Channels of the input image (the fc sizes assume 28x28).

    Example:
        >>> MnistCNN()(torch.zeros(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.block1 = _mnist_block(in_channels, 32)
        self.block2 = _mnist_block(32, 64)
        self.block3 = _mnist_block(64, 128)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            OrderedDict(
                fc=nn.Linear(128 * 5 * 5, 625),
                relu=nn.ReLU(),
                drop=nn.Dropout(p=0.5),
                out=nn.Linear(625, num_classes),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.classifier(self.flatten(x))


class MnistDNN(nn.Module):
    """The linear MNIST network of the class-prototype tutorial: 784 -> 512 -> 100 -> 10.

    Three linear layers with no activation between them (so the whole network is one affine
    map, which makes class prototypes exact to compute); the (C, 28, 28) input is flattened.

    Args:
        num_classes: Outputs of the last linear layer.
        in_channels: Channels of the 28x28 input (784 features per channel).

    Example:
        >>> MnistDNN()(torch.zeros(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * 28 * 28, 512)
        self.fc2 = nn.Linear(512, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.fc2(self.fc1(self.flatten(x))))


def _gap_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(),
        )
    )


class GapCNN(nn.Module):
    """A small all-convolutional network ending in global average pooling, made for CAM.

    ``features`` = block1 (16) -> pool1 -> block2 (32) -> pool2 -> block3 (64) -> block4 (64),
    each block conv3x3 (padding 1, no bias) -> BatchNorm -> ReLU; then ``pool``
    (AdaptiveAvgPool2d(1)) -> ``flatten`` -> ``fc`` (Linear 64 -> num_classes). The last conv
    block (``features`` or ``features.block4``) works at a quarter of the input size:
    16x16 for 64x64 RGB, 7x7 for 28x28 grey. Because the head is GAP + one linear layer,
    Class Activation Mapping applies exactly:

    $$M_c(i, j) = \\sum_k w^c_k A^k_{ij}$$

    Args:
        num_classes: Outputs of the linear layer.
        in_channels: Channels of the input image (3 for 64x64 RGB, 1 for 28x28 grey).

    Example:
        >>> GapCNN()(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 5])
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                block1=_gap_block(in_channels, 16),
                pool1=nn.MaxPool2d(2),
                block2=_gap_block(16, 32),
                pool2=nn.MaxPool2d(2),
                block3=_gap_block(32, 64),
                block4=_gap_block(64, 64),
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))
