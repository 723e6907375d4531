"""What a quantised model quantises and how, validated from plain builder options (no Brevitas here).

Two presets (decision: one option, ``preset``, chooses the whole scale policy, so a user cannot mix
a power-of-two activation with a float weight scale by accident):

- ``research`` (default): the research code (methods.md section 7). Activations use a ReLU quantiser
  whose clipping value is ``max_val = M[bits] * act_scale`` with ``M`` = {4: 15, 8: 256, 16: 65536}
  (other widths: ``2**bits - 1``), so the step is *about* ``act_scale`` (256/255 of it at 8 bits).
  Weight scales are float, per output channel for convolutions. Suits PyTorch, qonnx and onnxruntime;
  FPGA flows turn the float scales into extra scaling layers (hls4ml: approximate, see the export warnings).
- ``fpga``: power-of-two scales throughout, what fixed-point hardware computes exactly. The activation
  step ``act_scale`` must be a power of two and the clipping value is ``(2**bits - 1) * act_scale``
  (learned scales stay powers of two); weights have one power-of-two scale per tensor; the input step
  ``input_max / 2**(input_bits - 1)`` must be a power of two. hls4ml emulates such graphs bit-exactly.
  ``fold_batch_norm`` (fpga only; ResNet-8's default there) folds each BatchNorm into the conv before
  it, so no float layer sits between quantisers (a float BatchNorm feeding a residual Add flipped a
  rounding in hls4ml).

With ``scaling='const'`` the step never moves; with ``'learned'`` it is the initial value of a trained
scale parameter, so the two modes differ only in whether the step may adapt.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from nora.errors import NoraError

#: Activation clipping multipliers of the research code; ``max_val = M[bits] * act_scale``.
RESEARCH_MULTIPLIERS = {4: 15, 8: 256, 16: 65536}
#: Widths offered for activations and weights; 1 bit is bipolar (+-scale) and only for weights.
ACT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
WEIGHT_BITS = (1, *ACT_BITS)
SCALINGS = ("const", "learned")
PRESETS = ("research", "fpga")
#: Which flows each preset's exports suit (shown by ``nora export``).
PRESET_FLOWS = {
    "research": "PyTorch, qonnx, onnxruntime (FPGA flows only approximately: float scales)",
    "fpga": "PyTorch, qonnx, onnxruntime, hls4ml (bit-exact where no float layer sits between quantisers)",
}


def act_multiplier(bits: int) -> int:
    """``M[bits]`` of the research preset: how many steps fit below the activation clipping value."""
    return RESEARCH_MULTIPLIERS.get(bits, 2**bits - 1)


def is_power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(value)
    return value > 0 and mantissa == 0.5


def check_bits(owner: str, option: str, value: Any, allowed: tuple[int, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        listed = ", ".join(map(str, allowed))
        raise NoraError(f"{owner}: unsupported bit width {option}={value!r}; choose one of {listed}")
    return value


def _positive(owner: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise NoraError(f"{owner}: {option} must be a positive number, got {value!r}")
    return float(value)


def _nearest_power_of_two(value: float) -> float:
    return 2.0 ** round(math.log2(value))


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Bit widths and scale policy of one quantised model.

    ``input_bits`` adds a signed input quantiser with the constant range ``[-input_max, input_max)``
    (None: the input stays float, as in the research LeNet/MLP runs).
    """

    act_bits: int
    weight_bits: int
    act_scale: float
    scaling: str
    input_bits: int | None
    input_max: float
    preset: str = "research"
    fold_batch_norm: bool = False

    @classmethod
    def from_options(
        cls, owner: str, *, bits: Any, weight_bits: Any, act_scale: Any, scaling: Any, input_bits: Any, input_max: Any,
        preset: Any = "research", fold_batch_norm: Any = False,
    ) -> QuantConfig:
        """Validate builder options (their defaults live in the builders' signatures, the registry's
        single source of truth); ``weight_bits=None`` means the same width as the activations."""
        act_bits = check_bits(owner, "bits", bits, ACT_BITS)
        weights = act_bits if weight_bits is None else check_bits(owner, "weight_bits", weight_bits, WEIGHT_BITS)
        if scaling not in SCALINGS:
            raise NoraError(f"{owner}: scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        if preset not in PRESETS:
            raise NoraError(f"{owner}: preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        if input_bits is not None:
            input_bits = check_bits(owner, "input_bits", input_bits, ACT_BITS)
        if not isinstance(fold_batch_norm, bool):
            raise NoraError(f"{owner}: fold_batch_norm must be true or false, got {fold_batch_norm!r}")
        if fold_batch_norm and preset != "fpga":
            raise NoraError(f"{owner}: fold_batch_norm needs preset fpga (the research preset keeps a float BatchNorm)")
        if fold_batch_norm and weights == 1:
            raise NoraError(f"{owner}: fold_batch_norm needs weight_bits >= 2 (bipolar weights cannot carry the "
                            "BatchNorm's per-channel scales)")
        config = cls(
            act_bits=act_bits,
            weight_bits=weights,
            act_scale=_positive(owner, "act_scale", act_scale),
            scaling=scaling,
            input_bits=input_bits,
            input_max=_positive(owner, "input_max", input_max),
            preset=preset,
            fold_batch_norm=fold_batch_norm,
        )
        if preset == "fpga":
            if not is_power_of_two(config.act_scale):
                raise NoraError(
                    f"{owner}: preset fpga needs act_scale (the activation step) to be a power of two, got "
                    f"{config.act_scale:g}; the nearest is {_nearest_power_of_two(config.act_scale):g}"
                )
            if input_bits is not None and not is_power_of_two(config.input_step):
                raise NoraError(
                    f"{owner}: preset fpga needs the input step input_max / 2**(input_bits - 1) to be a power of "
                    f"two, got {config.input_step:g} (input_max={config.input_max:g}); use input_max="
                    f"{_nearest_power_of_two(config.input_step) * 2 ** (input_bits - 1):g}"
                )
        return config

    @property
    def act_max(self) -> float:
        """The activation clipping value: ``M[bits] * act_scale`` (research) or ``(2**bits - 1) * act_scale`` (fpga)."""
        if self.preset == "fpga":
            return (2**self.act_bits - 1) * self.act_scale
        return act_multiplier(self.act_bits) * self.act_scale

    @property
    def input_step(self) -> float:
        return self.input_max / 2 ** ((self.input_bits or 8) - 1)
