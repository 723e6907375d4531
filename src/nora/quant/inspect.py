"""Which layers of a model are quantised, and with how many bits: what exporters must express."""

from __future__ import annotations

import dataclasses
import sys

from torch import nn


@dataclasses.dataclass(frozen=True)
class QuantLayer:
    name: str
    module_type: str
    weight_bits: int | None  # None: float or no weights
    act_bits: int | None  # None: no (enabled) activation/output quantiser


def _bits(proxy) -> int | None:
    if proxy is None or not getattr(proxy, "is_quant_enabled", False):
        return None
    return int(proxy.bit_width())


def is_quant_layer(module: nn.Module) -> bool:
    """A Brevitas layer (its children are quantiser internals, not layers of the network)."""
    if "brevitas.nn" not in sys.modules:  # nothing can be a Brevitas layer before Brevitas is imported
        return False
    from brevitas.nn.mixin.base import QuantLayerMixin

    return isinstance(module, QuantLayerMixin)


def quantised_layers(model: nn.Module) -> list[QuantLayer]:
    """Every Brevitas layer of ``model`` in module order."""
    found = []
    for name, module in model.named_modules():
        if is_quant_layer(module):
            act = getattr(module, "act_quant", None) or getattr(module, "output_quant", None)
            found.append(QuantLayer(name, type(module).__name__, _bits(getattr(module, "weight_quant", None)), _bits(act)))
    return found


def is_quantised(model: nn.Module) -> bool:
    return bool(quantised_layers(model))
