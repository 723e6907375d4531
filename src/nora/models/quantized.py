"""Quantisation-aware versions of the zoo models (methods.md sections 7 and 9), built with Brevitas.

Each builder takes the float model's options plus the quantisation options:
``bits`` (activations, and weights unless ``weight_bits`` is given; 2-8 or 16, weights also 1 =
bipolar), ``act_scale`` (the activation step: clipping value ``M[bits] * act_scale``), ``scaling``
('const' as in the research, or 'learned'), ``input_bits``/``input_max`` (an optional signed input
quantiser with constant range +-input_max), ``preset`` ('research': the research's scales;
'fpga': power-of-two scales throughout, which hls4ml computes exactly; see ``nora.quant.config``);
ResNet-8 also takes ``fold_batch_norm``.
Registering needs no Brevitas; building does, and says "install nora[export]" when it is missing.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from nora.models.autoencoder import autoencoder
from nora.models.lenet import lenet5
from nora.models.mlp import mlp
from nora.models.registry import register_model
from nora.models.resnet import resnet8
from nora.quant.config import QuantConfig
from nora.quant.convert import quantize

DEFAULT_ACT_SCALE = 1.0 / 16  # 8 bits: activations clipped at 256/16 = 16, in steps of about 1/16
_QUANT_OPTIONS = ("bits", "weight_bits", "act_scale", "scaling", "input_bits", "input_max", "preset", "fold_batch_norm")


def _quantised(owner: str, build_float: Callable[[], nn.Module], arguments: dict) -> nn.Module:
    """Validate the quantisation options among a builder's ``arguments`` first (the most specific
    message), then build the float model and convert it."""
    options = {key: arguments[key] for key in _QUANT_OPTIONS if key in arguments}
    config = QuantConfig.from_options(owner, **options)
    return quantize(build_float(), config)


@register_model("lenet5-qat")
def lenet5_qat(
    input_shape=(1, 28, 28),
    num_classes=10,
    batch_norm=False,
    pool="max",
    bits=8,
    weight_bits=None,
    act_scale=DEFAULT_ACT_SCALE,
    scaling="const",
    input_bits=None,
    input_max=4.0,
    preset="research",
) -> nn.Module:
    """LeNet-5 with quantised weights and ReLUs (the research's QAT-with-constant-scale network)."""
    return _quantised("lenet5-qat", lambda: lenet5(input_shape, num_classes, batch_norm, pool), locals())


@register_model("mlp-qat")
def mlp_qat(
    input_shape=(1, 28, 28),
    num_classes=10,
    hidden=(64, 64, 64),
    width=None,
    batch_norm=False,
    dropout=0.0,
    bits=8,
    weight_bits=None,
    act_scale=DEFAULT_ACT_SCALE,
    scaling="const",
    input_bits=None,
    input_max=4.0,
    preset="research",
) -> nn.Module:
    """The zoo MLP with quantised weights and ReLUs."""
    return _quantised("mlp-qat", lambda: mlp(input_shape, num_classes, hidden, width, batch_norm, dropout), locals())


@register_model("resnet8-qat")
def resnet8_qat(
    input_shape=(3, 32, 32),
    num_classes=10,
    bits=8,
    weight_bits=None,
    act_scale=DEFAULT_ACT_SCALE,
    scaling="const",
    input_bits=8,
    input_max=4.0,
    preset="research",
    fold_batch_norm=None,
) -> nn.Module:
    """MLPerf Tiny ResNet-8 with quantised convolutions, ReLUs and (normalised) input.

    Each block's one ReLU module is called twice, so both calls share one quantiser.
    ``fold_batch_norm`` (default: on for preset fpga, except with bipolar weights) folds every
    BatchNorm into the conv before it, so no float layer sits between quantisers (the residual Adds
    read integers on both branches) and hls4ml computes the network bit-exactly.
    """
    if fold_batch_norm is None:
        fold_batch_norm = preset == "fpga" and weight_bits != 1
    return _quantised("resnet8-qat", lambda: resnet8(input_shape, num_classes), locals())


@register_model("kws-mlp-w3a3")
def kws_mlp_w3a3(
    input_shape=(1, 10, 49),
    num_classes=12,
    bits=3,
    weight_bits=3,
    act_scale=None,
    scaling="const",
    input_bits=8,
    input_max=4.0,
    dropout=0.1,
    preset="research",
) -> nn.Module:
    """MLPerf Tiny keyword-spotting MLP (FINN reference): 8-bit input, 3 x [Linear 256 (3-bit weights,
    no bias), BN, ReLU 3-bit in [0, 1], Dropout], Linear to the classes (3-bit weights).

    The ReLU range [0, 1] is ``act_scale = 1/7`` (3 bits: M = 7); the fpga preset's default is the
    power of two 1/8 (range [0, 7/8]). Inputs are standardised MFCCs, so the input quantiser covers
    +-4 standard deviations in steps of 1/32.
    """
    if act_scale is None:
        act_scale = 1.0 / 8 if preset == "fpga" else 1.0 / 7
    return _quantised("kws-mlp-w3a3", lambda: mlp(input_shape, num_classes, (256,) * 3, None, True, dropout), locals())


@register_model("autoencoder-qat")
def autoencoder_qat(
    input_shape=(640,),
    num_classes=None,
    hidden=128,
    bottleneck=8,
    depth=4,
    bits=8,
    weight_bits=None,
    act_scale=DEFAULT_ACT_SCALE,
    scaling="const",
    input_bits=8,
    input_max=4.0,
    preset="research",
) -> nn.Module:
    """MLPerf Tiny anomaly-detection autoencoder with quantised weights, ReLUs and input; the
    reconstruction (last Linear) stays unquantised at the output."""
    return _quantised(
        "autoencoder-qat", lambda: autoencoder(input_shape, num_classes, hidden, bottleneck, depth), locals()
    )
