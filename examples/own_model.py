"""A model of your own for ``model.arch: examples/own_model.py:SmallCNN`` (or ``package.module:SmallCNN``).

nora passes ``input_shape`` (per sample, e.g. [1, 16, 16]) and ``num_classes`` from the data because
the factory has parameters of those names; ``model.kwargs`` sets the rest. Every layer that should be
a noise site is a module object (``nn.ReLU()``), not a functional call.
"""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, input_shape, num_classes, width: int = 16):
        super().__init__()
        channels, height, width_px = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (height // 4) * (width_px // 4), 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))
