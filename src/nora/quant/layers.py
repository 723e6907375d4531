"""Brevitas quantised layers built from a float layer and a ``QuantConfig``.

Weights: signed, narrow range, scale from statistics (max |w|) per output channel for convolutions
and per tensor for linear layers; 1 bit is bipolar (+-scale, exported as QONNX BipolarQuant).
Activations: an unsigned ReLU quantiser with a constant or learned (log2-domain) clipping value,
``QuantConfig.act_max`` or initialised there. Input: a signed quantiser with the constant range ``+-input_max``.

Importing this module registers the quantised activation types as noise-site types, so noise lands
after quantisation (the site discovery takes the outermost eligible module, and a ``QuantReLU``
wraps an ``nn.ReLU``).
"""

from __future__ import annotations

from torch import nn

from nora.quant.backend import require
from nora.quant.config import QuantConfig
from nora.sim.sites import register_site_type

_OWNER = "quantised models"
qnn = require("brevitas.nn", _OWNER)
_quant = require("brevitas.quant", _OWNER)
_scaling = require("brevitas.core.scaling", _OWNER)
_stats = require("brevitas.core.stats", _OWNER)
_restrict = require("brevitas.core.restrict_val", _OWNER)

CONST = _scaling.ScalingImplType.CONST
STATS = _scaling.ScalingImplType.STATS
LEARNED = _scaling.ScalingImplType.PARAMETER

register_site_type(qnn.QuantReLU)
register_site_type(qnn.QuantIdentity)

_CONVS = {nn.Conv1d: qnn.QuantConv1d, nn.Conv2d: qnn.QuantConv2d}


def _weight_options(bits: int, per_channel: bool) -> dict:
    if bits == 1:
        # Scale = max |w|: this quantiser also clamps the float weights to +-scale in place, which
        # with the maximum as statistic never changes them.
        return {
            "weight_quant": _quant.SignedBinaryWeightPerTensorConst,
            "weight_scaling_impl_type": STATS,
            "weight_scaling_stats_op": _stats.StatsOp.MAX,
            "weight_scaling_per_output_channel": per_channel,
        }
    base = _quant.Int8WeightPerChannelFloat if per_channel else _quant.Int8WeightPerTensorFloat
    return {"weight_quant": base, "weight_bit_width": bits}


def _copy_parameters(source: nn.Module, target: nn.Module) -> nn.Module:
    # Start from the float layer's initial values, so a QAT model and its float twin built from the
    # same seed begin at the same point.
    target.weight.data.copy_(source.weight.data)
    if source.bias is not None:
        target.bias.data.copy_(source.bias.data)
    return target


def quant_linear(layer: nn.Linear, config: QuantConfig) -> nn.Module:
    quantised = qnn.QuantLinear(
        layer.in_features, layer.out_features, bias=layer.bias is not None,
        **_weight_options(config.weight_bits, per_channel=False),
    )
    return _copy_parameters(layer, quantised)


def quant_conv(layer: nn.Conv1d | nn.Conv2d, config: QuantConfig) -> nn.Module:
    quantised = _CONVS[type(layer)](
        layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, groups=layer.groups, bias=layer.bias is not None,
        **_weight_options(config.weight_bits, per_channel=True),
    )
    return _copy_parameters(layer, quantised)


def quant_relu(config: QuantConfig) -> nn.Module:
    if config.scaling == "const":
        return qnn.QuantReLU(bit_width=config.act_bits, max_val=config.act_max, scaling_impl_type=CONST,
                             return_quant_tensor=False)
    # Learned in the log2 domain, so an optimiser step changes the clipping value by a factor: in the
    # linear domain Adam (steps of about lr) moved a value of 16 by under 0.2 in six MNIST epochs.
    return qnn.QuantReLU(bit_width=config.act_bits, max_val=config.act_max, scaling_impl_type=LEARNED,
                         restrict_scaling_type=_restrict.RestrictValueType.LOG_FP, return_quant_tensor=False)


def quant_input(config: QuantConfig) -> nn.Module:
    return qnn.QuantIdentity(
        act_quant=_quant.Int8ActPerTensorFloat,
        bit_width=config.input_bits,
        scaling_impl_type=CONST,
        min_val=-config.input_max,
        max_val=config.input_max,
        return_quant_tensor=False,
    )


def convertible(module: nn.Module) -> bool:
    """Float layers ``quantize`` replaces (exact types: Brevitas layers subclass them)."""
    return type(module) in (nn.Linear, nn.ReLU, *_CONVS)


def quantised_counterpart(module: nn.Module, config: QuantConfig) -> nn.Module:
    if type(module) is nn.Linear:
        return quant_linear(module, config)
    if type(module) is nn.ReLU:
        return quant_relu(config)
    return quant_conv(module, config)
