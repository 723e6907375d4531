"""Dense autoencoder of the MLPerf Tiny anomaly-detection benchmark (ToyADMOS machine sounds)."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from nora.errors import NoraError
from nora.models.common import as_shape, positive_int
from nora.models.mlp import MLP
from nora.models.registry import register_model


class DenseAutoencoder(MLP):
    """640 -> 4 x [128, BN, ReLU] -> [8, BN, ReLU] -> 4 x [128, BN, ReLU] -> 640.

    The output has the input's shape (a reconstruction), so ``num_classes`` is None. Unlike the Keras
    reference, the Linear layers in front of a BatchNorm have no bias: BN cancels it, so the function
    class is the same with 1,032 fewer (redundant) parameters at the default sizes.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (640,),
        hidden: int = 128,
        bottleneck: int = 8,
        depth: int = 4,
    ):
        owner = type(self).__name__
        shape = as_shape(owner, input_shape)
        side = (positive_int(owner, "hidden", hidden),) * positive_int(owner, "depth", depth)
        code = (positive_int(owner, "bottleneck", bottleneck),)
        super().__init__(shape, math.prod(shape), side + code + side, batch_norm=True)
        self.num_classes = None
        self.layers.append(nn.Unflatten(1, shape))


@register_model("autoencoder")
def autoencoder(input_shape=(640,), num_classes=None, hidden=128, bottleneck=8, depth=4) -> DenseAutoencoder:
    """MLPerf Tiny anomaly-detection autoencoder; a regressor, so ``num_classes`` must stay None."""
    if num_classes is not None:
        raise NoraError("autoencoder reconstructs its input and has no classes; leave num_classes unset")
    return DenseAutoencoder(input_shape, hidden, bottleneck, depth)
