"""Residual networks: MLPerf Tiny ResNet-8 and the CIFAR ResNet-18, from one basic block."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from nora.errors import NoraError
from nora.models.common import image_shape, positive_int, positive_ints
from nora.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, -> ReLU.

    The one ``relu`` module is called twice, as in torchvision, so it gives two sites ("relu#0" after
    the first BN, "relu#1" after the residual add). The shortcut is a 1x1 conv + BN when the stride or
    the channel count changes, otherwise the identity (not a site).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """conv3x3 stem (stride 1, no max-pool) -> stages of basic blocks -> global average pool -> Linear.

    Stage ``i`` has ``blocks[i]`` blocks of ``widths[i]`` channels; every stage after the first halves
    the resolution in its first block. The stem has ``widths[0]`` channels.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int],
        blocks: Sequence[int],
    ):
        super().__init__()
        owner = type(self).__name__
        self.input_shape = image_shape(owner, input_shape)
        self.num_classes = positive_int(owner, "num_classes", num_classes)
        widths = positive_ints(owner, "widths", widths)
        blocks = positive_ints(owner, "blocks", blocks)
        if not widths or len(widths) != len(blocks):
            raise NoraError(f"{owner}: widths and blocks need one entry per stage, got {widths} and {blocks}")
        self.conv1 = nn.Conv2d(self.input_shape[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages = []
        channels = widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks)):
            stage = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, self.num_classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model("resnet8")
def resnet8(input_shape=(3, 32, 32), num_classes=10) -> ResNet:
    """MLPerf Tiny image-classification ResNet-8: 16-channel stem, one block each of 16, 32, 64 channels.

    The reference (Keras) uses a bare 1x1 conv as projection shortcut; here it is followed by a BN,
    like every other conv of the network.
    """
    return ResNet(input_shape, num_classes, widths=(16, 32, 64), blocks=(1, 1, 1))


@register_model("resnet18")
def resnet18(input_shape=(3, 32, 32), num_classes=10, width=64) -> ResNet:
    """CIFAR ResNet-18: [2, 2, 2, 2] blocks of width, 2x, 4x, 8x channels (``width`` 64 is standard)."""
    width = positive_int("resnet18", "width", width)
    return ResNet(input_shape, num_classes, widths=(width, 2 * width, 4 * width, 8 * width), blocks=(2, 2, 2, 2))
