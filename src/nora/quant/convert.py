"""Turn a float model into its quantisation-aware twin by swapping layers in place.

Every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` becomes the Brevitas layer with quantised weights,
every ``nn.ReLU`` the quantised ReLU; everything else (BatchNorm, pooling, dropout, residual adds)
stays float. Module names do not change, so the quantised model has the same noise sites, named
the same way, as the float one. Reusing the float architectures keeps one definition of each network.
"""

from __future__ import annotations

from torch import nn

from nora.quant.config import QuantConfig


class QuantizedInput(nn.Module):
    """A model behind an input quantiser: ``body(input_quant(x))``."""

    def __init__(self, input_quant: nn.Module, body: nn.Module):
        super().__init__()
        self.input_quant = input_quant
        self.body = body

    def forward(self, x):
        return self.body(self.input_quant(x))


def quantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """The QAT version of ``model`` (changed in place; wrapped when the input is quantised too)."""
    from nora.quant import layers

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if layers.convertible(child):
                setattr(parent, name, layers.quantised_counterpart(child, config))
            else:
                swap(child)

    swap(model)
    if config.input_bits is not None:
        return QuantizedInput(layers.quant_input(config), model)
    return model
