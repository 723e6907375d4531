"""VGG-11 for 32x32 images: a deep plain (non-residual) CNN to contrast with the ResNets."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from nora.models.common import MaxPool2d, conv_block, flag, flat_size, image_shape, positive_float, positive_int
from nora.models.registry import register_model

#: Channels of the 3x3 convs; "M" is a 2x2 max-pool (configuration "A" of Simonyan & Zisserman).
VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """CIFAR VGG-11: 8 x [conv3x3 pad 1, (BN), ReLU] with 5 max-pools, then one Linear.

    The single Linear maps the flattened features (512 x 1 x 1 for 32x32 input; sized by a dry run)
    to the classes. ``width_mult`` scales every conv's channels (at least 1) for quick experiments.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        batch_norm: bool = True,
        width_mult: float = 1.0,
    ):
        super().__init__()
        owner = type(self).__name__
        self.input_shape = image_shape(owner, input_shape)
        self.num_classes = positive_int(owner, "num_classes", num_classes)
        batch_norm = flag(owner, "batch_norm", batch_norm)
        width_mult = positive_float(owner, "width_mult", width_mult)
        layers: list[nn.Module] = []
        channels = self.input_shape[0]
        for entry in VGG11_LAYERS:
            if entry == "M":
                layers.append(MaxPool2d(2))
                continue
            out_channels = max(1, round(entry * width_mult))
            layers += conv_block(channels, out_channels, 3, batch_norm, padding=1)
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat_size(owner, self.features, self.input_shape), self.num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("vgg11")
def vgg11(input_shape=(3, 32, 32), num_classes=10, batch_norm=True, width_mult=1.0) -> VGG11:
    """VGG-11 for CIFAR-10; ``width_mult=0.125`` gives a fast 8..64-channel variant."""
    return VGG11(input_shape, num_classes, batch_norm, width_mult)
