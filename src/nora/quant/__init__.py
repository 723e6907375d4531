"""Quantisation-aware training (methods.md section 7) with Brevitas layers.

``QuantConfig`` and the bit-width checks need no Brevitas; ``quantize`` (and so every quantised model
builder) imports it on first use and raises a ``NoraError`` saying "install nora[export]" when it is
missing. The quantised builders live in ``nora.models.quantized``.
"""

from nora.quant.config import (
    ACT_BITS,
    RESEARCH_MULTIPLIERS,
    SCALINGS,
    WEIGHT_BITS,
    QuantConfig,
    act_multiplier,
    check_bits,
)
from nora.quant.convert import QuantizedInput, quantize
from nora.quant.inspect import QuantLayer, is_quantised, quantised_layers

__all__ = [
    "ACT_BITS",
    "RESEARCH_MULTIPLIERS",
    "SCALINGS",
    "WEIGHT_BITS",
    "QuantConfig",
    "QuantLayer",
    "QuantizedInput",
    "act_multiplier",
    "check_bits",
    "is_quantised",
    "quantised_layers",
    "quantize",
]
