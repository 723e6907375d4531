"""Keyword-spotting models on MFCC input laid out as [N, 1, 10 coefficients, 49 frames].

Defaults are for Google Speech Commands (12 classes: 10 words, silence, unknown); pass
``num_classes=10`` for the Free Spoken Digit Dataset.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from nora.models.common import conv_block, flat_size, image_shape, positive_int
from nora.models.mlp import MLP
from nora.models.registry import register_model


class KwsCNN(nn.Module):
    """CNN-S of Hello Edge (Zhang et al. 2017, arXiv:1711.07128), BN added after each conv.

    The paper works on (time x freq) = 49 x 10 with 10x4 kernels and the second conv striding 2 in
    time; in our (freq x time) layout that is kernel (4, 10) and stride (1, 2). As in the reference,
    there is no padding: a 10 x 49 input stays valid. Shapes for the default (1, 10, 49) input:

        conv 28 @ (4, 10), stride 1, BN, ReLU        -> 28 x 7 x 40
        conv 30 @ (4, 10), stride (1, 2), BN, ReLU   -> 30 x 4 x 16
        flatten                                      -> 1920
        Linear 16 (linear bottleneck, no activation) -> 16
        Linear 128, ReLU                             -> 128
        Linear num_classes                           -> num_classes
    """

    def __init__(self, input_shape: Sequence[int] = (1, 10, 49), num_classes: int = 12):
        super().__init__()
        owner = type(self).__name__
        self.input_shape = image_shape(owner, input_shape)
        self.num_classes = positive_int(owner, "num_classes", num_classes)
        self.features = nn.Sequential(
            *conv_block(self.input_shape[0], 28, (4, 10), batch_norm=True),
            *conv_block(28, 30, (4, 10), batch_norm=True, stride=(1, 2)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat_size(owner, self.features, self.input_shape), 16),
            nn.Linear(16, 128),
            nn.ReLU(),
            nn.Linear(128, self.num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("kws-cnn-s")
def kws_cnn_s(input_shape=(1, 10, 49), num_classes=12) -> KwsCNN:
    """Hello Edge CNN-S for keyword spotting on 10 MFCCs x 49 frames."""
    return KwsCNN(input_shape, num_classes)


@register_model("kws-mlp")
def kws_mlp(input_shape=(1, 10, 49), num_classes=12) -> MLP:
    """MLPerf Tiny KWS fully connected topology in float.

    490 -> 3 x [Linear 256 (no bias), BN, ReLU, Dropout 0.1] -> Linear num_classes.
    """
    return MLP(input_shape, num_classes, hidden=(256, 256, 256), batch_norm=True, dropout=0.1)
