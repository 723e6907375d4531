"""Turn a float model into its quantisation-aware twin by swapping layers in place.

Every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` becomes the Brevitas layer with quantised weights,
every ``nn.ReLU`` the quantised ReLU; everything else (BatchNorm, pooling, dropout, residual adds)
stays float. Module names do not change and the input quantiser is a child ``input_quant`` applied by
a forward pre-hook (no wrapper), so the quantised model has the float one's noise sites with the
same indices and names: its ``nora_site_hints`` count the quantised activations as activations and
leave the input quantiser out (it belongs to the input site). Reusing the float architectures keeps
one definition of each network.
"""

from __future__ import annotations

from torch import nn

from nora.quant.config import QuantConfig
from nora.sim.sites import SiteHints

#: Child name of the input quantiser.
INPUT_QUANT = "input_quant"


def _quantise_input(module: nn.Module, args: tuple) -> tuple:
    return (getattr(module, INPUT_QUANT)(args[0]), *args[1:])


def quantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """The QAT version of ``model`` (changed in place and returned)."""
    from nora.quant import layers

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if layers.convertible(child):
                setattr(parent, name, layers.quantised_counterpart(child, config))
            else:
                swap(child)

    swap(model)
    if config.input_bits is not None:
        model.add_module(INPUT_QUANT, layers.quant_input(config))
        model.register_forward_pre_hook(_quantise_input)
    model.nora_site_hints = SiteHints(types=(("activation", layers.ACTIVATION_TYPES),), exclude=(INPUT_QUANT,))
    model.quant_preset = config.preset
    return model
