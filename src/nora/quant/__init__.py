"""Quantisation-aware training (methods.md section 7) with Brevitas layers.

``QuantConfig`` and the bit-width checks need no Brevitas; ``quantize`` (and so every quantised model
builder) imports it on first use and raises a ``NoraError`` saying "install nora[export]" when it is
missing. The quantised builders live in ``nora.models.quantized``. Two presets choose the scales:
``research`` (the research code's) and ``fpga`` (powers of two throughout, what hls4ml computes
exactly); see ``nora.quant.config``.
"""

from nora.quant.config import (
    ACT_BITS,
    PRESET_FLOWS,
    PRESETS,
    RESEARCH_MULTIPLIERS,
    SCALINGS,
    WEIGHT_BITS,
    QuantConfig,
    act_multiplier,
    check_bits,
    is_power_of_two,
)
from nora.quant.convert import INPUT_QUANT, quantize
from nora.quant.inspect import QuantLayer, is_quantised, quantised_layers

__all__ = [
    "ACT_BITS",
    "INPUT_QUANT",
    "PRESETS",
    "PRESET_FLOWS",
    "RESEARCH_MULTIPLIERS",
    "SCALINGS",
    "WEIGHT_BITS",
    "QuantConfig",
    "QuantLayer",
    "act_multiplier",
    "check_bits",
    "is_power_of_two",
    "is_quantised",
    "quantised_layers",
    "quantize",
]
