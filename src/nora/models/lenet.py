"""LeNet-5 (ReLU variant): the classic small CNN, for MNIST, CIFAR-10 and the 8x8 sklearn digits."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from nora.models.common import (MaxPool2d, choice, conv_block, dense_block, flag, flat_size, image_shape,
                                 positive_int)
from nora.models.registry import register_model

_POOLS = {"max": MaxPool2d, "avg": nn.AvgPool2d}


class LeNet5(nn.Module):
    """conv6@5x5 -> ReLU -> pool -> conv16@5x5 -> ReLU -> pool -> flatten -> 120 -> ReLU -> 84 -> ReLU -> classes.

    Padding is chosen from the input: 2 on both convs when height or width is below 28 (so 8x8 digits
    still fit two 5x5 convs and two 2x2 pools), otherwise 0 (the original LeNet-5 on 32x32; on 28x28
    MNIST this gives 16x4x4 features). The flatten size comes from a dry run. ``batch_norm`` puts a
    BatchNorm after both convs and after fc120/fc84, before the ReLU. Sites: 12, or 16 with batch norm.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        batch_norm: bool = False,
        pool: str = "max",
    ):
        super().__init__()
        owner = type(self).__name__
        self.input_shape = image_shape(owner, input_shape)
        self.num_classes = positive_int(owner, "num_classes", num_classes)
        batch_norm = flag(owner, "batch_norm", batch_norm)
        pool_type = _POOLS[choice(owner, "pool", pool, tuple(_POOLS))]
        channels, height, width = self.input_shape
        padding = 2 if min(height, width) < 28 else 0
        self.features = nn.Sequential(
            *conv_block(channels, 6, 5, batch_norm, padding=padding),
            pool_type(2),
            *conv_block(6, 16, 5, batch_norm, padding=padding),
            pool_type(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *dense_block(flat_size(owner, self.features, self.input_shape), 120, batch_norm),
            *dense_block(120, 84, batch_norm),
            nn.Linear(84, self.num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("lenet5")
def lenet5(input_shape=(1, 28, 28), num_classes=10, batch_norm=False, pool="max") -> LeNet5:
    """LeNet-5 for MNIST by default; also (3, 32, 32) CIFAR-10 and (1, 8, 8) digits."""
    return LeNet5(input_shape, num_classes, batch_norm, pool)
