"""What a quantised model quantises and how, validated from plain builder options (no Brevitas here).

Activations follow the research code (methods.md section 7): a ReLU quantiser whose clipping value is
``max_val = M[bits] * act_scale``, so ``act_scale`` is (about) the quantisation step. ``M`` is the
research table {4: 15, 8: 256, 16: 65536}; for the other widths we use the unsigned integer maximum
``2**bits - 1`` (decision: the research only used 4, 8 and 16 bits, the KWS reference needs 3).
With ``scaling='const'`` that value never moves; with ``'learned'`` it is the initial value of a
trained scale parameter, so the two modes differ only in whether the step may adapt.
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


def act_multiplier(bits: int) -> int:
    """``M[bits]``: how many quantisation steps fit below the activation clipping value."""
    return RESEARCH_MULTIPLIERS.get(bits, 2**bits - 1)


def check_bits(owner: str, option: str, value: Any, allowed: tuple[int, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        listed = ", ".join(map(str, allowed))
        raise NoraError(f"{owner}: unsupported bit width {option}={value!r}; choose one of {listed}")
    return value


def _positive(owner: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise NoraError(f"{owner}: {option} must be a positive number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Bit widths and activation scaling of one quantised model.

    ``input_bits`` adds a signed input quantiser with the constant range ``[-input_max, input_max)``
    (None: the input stays float, as in the research LeNet/MLP runs).
    """

    act_bits: int
    weight_bits: int
    act_scale: float
    scaling: str
    input_bits: int | None
    input_max: float

    @classmethod
    def from_options(
        cls, owner: str, *, bits: Any, weight_bits: Any, act_scale: Any, scaling: Any, input_bits: Any, input_max: Any
    ) -> QuantConfig:
        """Validate builder options (their defaults live in the builders' signatures, the registry's
        single source of truth); ``weight_bits=None`` means the same width as the activations."""
        act_bits = check_bits(owner, "bits", bits, ACT_BITS)
        weights = act_bits if weight_bits is None else check_bits(owner, "weight_bits", weight_bits, WEIGHT_BITS)
        if scaling not in SCALINGS:
            raise NoraError(f"{owner}: scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        if input_bits is not None:
            input_bits = check_bits(owner, "input_bits", input_bits, ACT_BITS)
        return cls(
            act_bits=act_bits,
            weight_bits=weights,
            act_scale=_positive(owner, "act_scale", act_scale),
            scaling=scaling,
            input_bits=input_bits,
            input_max=_positive(owner, "input_max", input_max),
        )

    @property
    def act_max(self) -> float:
        """The activation clipping value ``M[bits] * act_scale``."""
        return act_multiplier(self.act_bits) * self.act_scale
