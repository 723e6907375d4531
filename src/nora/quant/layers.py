"""Brevitas quantised layers built from a float layer and a ``QuantConfig``.

Research preset: weights signed, narrow range, scale from statistics (max |w|) per output channel
for convolutions and per tensor for linear layers; activations an unsigned ReLU quantiser with a
constant or learned (log2-domain) clipping value ``QuantConfig.act_max``; input a signed quantiser
with the constant range ``+-input_max``. FPGA preset: the same statistics, but every scale is a
power of two (weights per tensor: the power of two at or above max |w| over ``2**(bits-1)``; 16-bit
biases likewise; activations and input divide a power-of-two threshold by ``2**bits``, so the
clipping value is ``(2**bits - 1) * step``); with ``fold_batch_norm`` a conv and the BatchNorm after
it are one fold-aware layer (``FoldedQuantConv2d``).
1-bit weights are bipolar (+-scale, exported as QONNX BipolarQuant).

Nothing here changes global state: the quantised models carry their noise-site hints themselves
(``nora.quant.convert``).
"""

from __future__ import annotations

import torch
from torch import nn

from nora.quant.backend import require
from nora.quant.config import QuantConfig

_OWNER = "quantised models"
qnn = require("brevitas.nn", _OWNER)
_quant = require("brevitas.quant", _OWNER)
_fixed = require("brevitas.quant.fixed_point", _OWNER)
_scaling = require("brevitas.core.scaling", _OWNER)
_stats = require("brevitas.core.stats", _OWNER)
_restrict = require("brevitas.core.restrict_val", _OWNER)
_functions = require("brevitas.core.function_wrapper", _OWNER)

CONST = _scaling.ScalingImplType.CONST
STATS = _scaling.ScalingImplType.STATS
LEARNED = _scaling.ScalingImplType.PARAMETER
POWER_OF_TWO = _restrict.RestrictValueType.POWER_OF_TWO

#: The quantised activation types (noise sites of category "activation").
ACTIVATION_TYPES = (qnn.QuantReLU, qnn.QuantIdentity)

#: Bias width of the FPGA preset: fine enough to cost no accuracy, narrow enough for DSP adders.
BIAS_BITS = 16

_CONVS = {nn.Conv1d: qnn.QuantConv1d, nn.Conv2d: qnn.QuantConv2d}


def _weight_options(bits: int, per_channel: bool, fpga: bool) -> dict:
    if bits == 1:
        # Scale = max |w| (fpga: the power of two at or above it). Brevitas' binary weight quantiser
        # clamps the float weights to +-scale *in place*, which breaks the backward pass; the
        # straight-through clamp here computes the same values out of place.
        options = {
            "weight_quant": _quant.SignedBinaryWeightPerTensorConst,
            "weight_scaling_impl_type": STATS,
            "weight_scaling_stats_op": _stats.StatsOp.MAX,
            "weight_scaling_per_output_channel": per_channel and not fpga,
            "weight_tensor_clamp_impl": _functions.TensorClampSte,
        }
        if fpga:
            options |= {"weight_restrict_scaling_type": POWER_OF_TWO,
                        "weight_restrict_value_float_to_int_impl": _functions.CeilSte}
        return options
    if fpga:
        return {"weight_quant": _fixed.Int8WeightPerTensorFixedPoint, "weight_bit_width": bits}
    base = _quant.Int8WeightPerChannelFloat if per_channel else _quant.Int8WeightPerTensorFloat
    return {"weight_quant": base, "weight_bit_width": bits}


def _bias_options(config: QuantConfig) -> dict:
    """FPGA preset: biases on a power-of-two grid too (16 bits, scale from max |b|). A float bias
    is rounded to the accumulator's fixed-point grid by hls4ml, which flips activation roundings;
    a bias hls4ml reads exactly keeps its emulation bit-exact."""
    if config.preset != "fpga":
        return {}
    return {"bias_quant": _fixed.Int8BiasPerTensorFixedPointInternalScaling, "bias_bit_width": BIAS_BITS}


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
        **_weight_options(config.weight_bits, per_channel=False, fpga=config.preset == "fpga"), **_bias_options(config),
    )
    return _copy_parameters(layer, quantised)


def quant_conv(layer: nn.Conv1d | nn.Conv2d, config: QuantConfig) -> nn.Module:
    quantised = _CONVS[type(layer)](
        layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, groups=layer.groups, bias=layer.bias is not None,
        **_weight_options(config.weight_bits, per_channel=True, fpga=config.preset == "fpga"), **_bias_options(config),
    )
    return _copy_parameters(layer, quantised)


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """The BatchNorm after a ``FoldedQuantConv2d``: it keeps the parameters and running statistics
    (same names as the float twin's, so the model keeps its sites and checkpoint keys), the conv
    applies them, and this module passes its input through."""

    def forward(self, x):
        return x


class FoldedQuantConv2d(qnn.QuantConv2d):
    """fpga preset: a conv and the BatchNorm after it as one layer, what an FPGA computes.

    Evaluation: ``conv(x, q(W s), q_b(beta - mean s))`` with ``s = gamma / sqrt(var + eps)`` from the
    running statistics, weights on one power-of-two grid, bias on the 16-bit one: integer arithmetic
    end to end, so hls4ml's fixed point equals qonnx (a float BatchNorm between quantisers is computed
    in float32 by one and in fixed point by the other, and a near-tie at the next quantiser flips).
    Training (as the usual fold-aware QAT): the folded weights are quantised, the conv's output is
    divided by ``s`` again and normalised with the batch statistics, which updates the running ones.
    At export ``nora.export.fold`` writes a plain quantised conv with the folded weights and bias.
    """

    def __init__(self, conv: nn.Conv2d, norm: FoldedBatchNorm2d, config: QuantConfig):
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=True,
            **_weight_options(config.weight_bits, per_channel=False, fpga=True), **_bias_options(config),
        )
        # Brevitas sets a bias quantiser up only for a layer built with a bias; the folded bias comes
        # from the BatchNorm, so the layer's own one goes again.
        self.register_parameter("bias", None)
        self.weight.data.copy_(conv.weight.data)
        self._norm = (norm,)  # a reference, not a child: the BatchNorm stays where the float model has it

    @property
    def norm(self) -> FoldedBatchNorm2d:
        return self._norm[0]

    def _scale(self):
        norm = self.norm
        return norm.weight / torch.sqrt(norm.running_var + norm.eps)

    def folded_parameters(self):
        """(weight, bias) of the single conv this layer equals in evaluation, before quantisation."""
        scale = self._scale()
        return self.weight * scale.reshape(-1, 1, 1, 1), self.norm.bias - self.norm.running_mean * scale

    def forward(self, x):
        if self.training:
            scale = self._scale()
            weight = self.weight_quant(self.weight * scale.reshape(-1, 1, 1, 1)).value
            unfolded = self._conv_forward(x, weight, None) / scale.reshape(1, -1, 1, 1)
            return nn.BatchNorm2d.forward(self.norm, unfolded)
        weight, bias = self.folded_parameters()
        return self._conv_forward(x, self.weight_quant(weight).value, self.bias_quant(bias).value)


def can_fold(conv: nn.Module, norm: nn.Module) -> bool:
    """A bias-free Conv2d followed by an affine BatchNorm2d with running statistics."""
    return (type(conv) is nn.Conv2d and conv.bias is None and type(norm) is nn.BatchNorm2d and norm.affine
            and norm.track_running_stats and norm.num_features == conv.out_channels)


def folded_pair(conv: nn.Conv2d, norm: nn.BatchNorm2d, config: QuantConfig) -> tuple[nn.Module, nn.Module]:
    """(FoldedQuantConv2d, FoldedBatchNorm2d) replacing ``conv`` and ``norm``, with their values."""
    kept = FoldedBatchNorm2d(norm.num_features, eps=norm.eps, momentum=norm.momentum)
    kept.load_state_dict(norm.state_dict())
    return FoldedQuantConv2d(conv, kept, config), kept


def quant_relu(config: QuantConfig) -> nn.Module:
    if config.preset == "fpga":
        # Threshold 2**bits * step over the power-of-two integer scaling 2**bits: the scale is the
        # step itself; learned, its log2 is the parameter and is rounded to an integer in the forward pass.
        return qnn.QuantReLU(
            act_quant=_fixed.Uint8ActPerTensorFixedPoint, bit_width=config.act_bits,
            max_val=2**config.act_bits * config.act_scale,
            scaling_impl_type=CONST if config.scaling == "const" else LEARNED,
            restrict_value_float_to_int_impl=_functions.RoundSte, return_quant_tensor=False,
        )
    if config.scaling == "const":
        return qnn.QuantReLU(bit_width=config.act_bits, max_val=config.act_max, scaling_impl_type=CONST,
                             return_quant_tensor=False)
    # Learned in the log2 domain, so an optimiser step changes the clipping value by a factor: in the
    # linear domain Adam (steps of about lr) moved a value of 16 by under 0.2 in six MNIST epochs.
    return qnn.QuantReLU(bit_width=config.act_bits, max_val=config.act_max, scaling_impl_type=LEARNED,
                         restrict_scaling_type=_restrict.RestrictValueType.LOG_FP, return_quant_tensor=False)


def quant_input(config: QuantConfig) -> nn.Module:
    base = _fixed.Int8ActPerTensorFixedPoint if config.preset == "fpga" else _quant.Int8ActPerTensorFloat
    return qnn.QuantIdentity(
        act_quant=base,
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
