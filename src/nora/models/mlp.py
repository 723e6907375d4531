"""Fully connected classifier: the smallest model in the zoo and the base of kws-mlp and autoencoder."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from nora.models.common import as_shape, dense_block, flag, fraction, positive_int, positive_ints
from nora.models.registry import register_model


class MLP(nn.Module):
    """Flatten -> hidden x [Linear, (BatchNorm1d), ReLU, (Dropout)] -> Linear.

    Starts with ``nn.Flatten`` so it takes images directly. Sites (input included): 2 + 2 per hidden
    layer, 3 per hidden layer with batch norm; dropout adds none.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        hidden: Sequence[int] = (64, 64, 64),
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        owner = type(self).__name__
        self.input_shape = as_shape(owner, input_shape)
        self.num_classes = positive_int(owner, "num_classes", num_classes)
        hidden = positive_ints(owner, "hidden", hidden)
        batch_norm = flag(owner, "batch_norm", batch_norm)
        dropout = fraction(owner, "dropout", dropout)
        widths = (math.prod(self.input_shape),) + hidden
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers += dense_block(fan_in, fan_out, batch_norm, dropout)
        layers.append(nn.Linear(widths[-1], self.num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


@register_model("mlp")
def mlp(
    input_shape=(1, 28, 28),
    num_classes=10,
    hidden=(64, 64, 64),
    width=None,
    batch_norm=False,
    dropout=0.0,
) -> MLP:
    """784-64-64-64-10 MNIST MLP; ``width`` sets every hidden layer to one size, keeping the depth."""
    if width is not None:
        hidden = (positive_int("mlp", "width", width),) * len(positive_ints("mlp", "hidden", hidden))
    return MLP(input_shape, num_classes, hidden, batch_norm, dropout)
