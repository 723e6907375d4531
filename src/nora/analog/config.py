"""Analog hardware configurations as plain frozen dataclasses: presets, dicts, YAML, dotted variation.

Two kinds exist: ``tile`` (a resistive crossbar tile with DAC/ADC, noise/bound management, tiling
and an optional PCM device model) and ``ordered_mac`` (the integer, chunked, order-aware MAC of a
BrainScaleS-2-like analog processor). Both validate every field on construction, so a bad value is
one ``NoraError`` naming the key, and both implement ``nora.sim.perturbation.Hardware``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nora.errors import NoraError
from nora.seeds import check_seed

NOISE_MANAGEMENT = ("abs_max", "none")
BOUND_MANAGEMENT = ("iterative", "none")
DEVICE_MODELS = ("none", "pcm")
CLIP_KINDS = ("none", "fixed", "sigma")
MODIFIER_KINDS = ("none", "add_normal", "mult_normal")
ORDERS = ("natural", "magnitude", "positive_first", "random")
INPUT_SIGNS = ("split", "unsigned")
BACKWARDS = ("straight_through", "saturation_masked")


def _bits(value: Any, name: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 1:
        raise NoraError(f"{name} must be an integer number of bits >= 2{' or null (ideal)' if allow_none else ''}, "
                        f"got {value!r}")
    return value


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise NoraError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _nonneg(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise NoraError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _count(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NoraError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise NoraError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def _layers(value: Any, name: str = "layers") -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise NoraError(f"{name} must be null (every Linear/Conv1d/Conv2d) or a non-empty list of layer names/globs")
    return tuple(value)


@dataclass(frozen=True)
class ForwardConfig:
    """Periphery of one analog matrix-vector product, in units normalised to the tile's ranges.

    Inputs are scaled by their abs-max (noise management), clipped to ``inp_bound`` and quantised by
    an ``inp_bits`` DAC (step ``2 inp_bound / (2^bits - 2)``, zero exactly representable); outputs get
    ``N(0, out_noise^2)``, are clipped to ``out_bound`` and quantised by an ``out_bits`` ADC. Iterative
    bound management halves the input of every sample whose output saturated and reads it again.
    """

    inp_bits: int | None = 7
    inp_bound: float = 1.0
    out_bits: int | None = 9
    out_bound: float = 12.0
    out_noise: float = 0.06
    noise_management: str = "abs_max"
    bound_management: str = "iterative"
    bm_max_iter: int = 10

    def __post_init__(self):
        _bits(self.inp_bits, "forward.inp_bits")
        _bits(self.out_bits, "forward.out_bits")
        _positive(self.inp_bound, "forward.inp_bound")
        _positive(self.out_bound, "forward.out_bound")
        _nonneg(self.out_noise, "forward.out_noise")
        _choice(self.noise_management, "forward.noise_management", NOISE_MANAGEMENT)
        _choice(self.bound_management, "forward.bound_management", BOUND_MANAGEMENT)
        _count(self.bm_max_iter, "forward.bm_max_iter")


@dataclass(frozen=True)
class MappingConfig:
    """Weights -> conductances: each tile holds at most ``max_in`` rows x ``max_out`` columns.

    Every tile scales its block so its largest |weight| maps to the maximum conductance (the scale is
    applied back digitally); partial sums of tiles along the input are added digitally; the bias is
    added digitally or, with ``digital_bias: false``, programmed as one more row driven by a constant 1.
    """

    max_in: int = 512
    max_out: int = 512
    digital_bias: bool = True

    def __post_init__(self):
        _count(self.max_in, "mapping.max_in")
        _count(self.max_out, "mapping.max_out")
        if not isinstance(self.digital_bias, bool):
            raise NoraError(f"mapping.digital_bias must be true or false, got {self.digital_bias!r}")


@dataclass(frozen=True)
class DeviceConfig:
    """Statistical device model of the programmed conductances (``pcm``: Nandakumar et al. 2019/Joshi et al. 2020).

    ``g_max`` in microsiemens; programming noise std is the polynomial ``sum_i prog_coeff[i] (g_T/g_max)^i``
    (microsiemens, clipped at 0) of the target conductance; drift ``g(t) = g_prog (t/t0)^-nu`` with
    ``nu`` drawn once per device from a mean and spread that depend on ``g_T``; 1/f read noise of
    relative std ``Q_s(g_T) sqrt(log((t + t_read) / (2 t_read)))``; global drift compensation rescales
    each tile's output by its programmed/current response to a fixed probe input.
    """

    model: str = "none"
    g_max: float = 25.0
    prog_coeff: tuple[float, ...] = (0.26348, 1.9650, -1.1731)
    prog_noise_scale: float = 1.0
    drift_scale: float = 1.0
    read_noise_scale: float = 1.0
    t0: float = 20.0
    t_read: float = 250e-9
    drift_compensation: bool = True

    def __post_init__(self):
        _choice(self.model, "device.model", DEVICE_MODELS)
        _positive(self.g_max, "device.g_max")
        coeff = self.prog_coeff
        if not isinstance(coeff, (list, tuple)) or not coeff or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coeff):
            raise NoraError(f"device.prog_coeff must be a non-empty list of finite numbers, got {coeff!r}")
        object.__setattr__(self, "prog_coeff", tuple(float(c) for c in coeff))
        for name in ("prog_noise_scale", "drift_scale", "read_noise_scale"):
            _nonneg(getattr(self, name), f"device.{name}")
        _positive(self.t0, "device.t0")
        _positive(self.t_read, "device.t_read")
        if not isinstance(self.drift_compensation, bool):
            raise NoraError(f"device.drift_compensation must be true or false, got {self.drift_compensation!r}")


@dataclass(frozen=True)
class ClipConfig:
    """Weight clipping before programming: ``fixed`` to +-value, ``sigma`` to +-value std(W) per layer."""

    kind: str = "none"
    value: float = 1.0

    def __post_init__(self):
        _choice(self.kind, "clip.kind", CLIP_KINDS)
        _positive(self.value, "clip.value")


@dataclass(frozen=True)
class ModifierConfig:
    """Training-time weight noise (hardware-aware training), relative to each tile's max |w|, fresh per forward."""

    kind: str = "none"
    std: float = 0.0

    def __post_init__(self):
        _choice(self.kind, "modifier.kind", MODIFIER_KINDS)
        _nonneg(self.std, "modifier.std")


def _as(cls, value: Any, name: str):
    if isinstance(value, cls):
        return value
    return from_mapping(cls, value, name)


@dataclass(frozen=True)
class TileConfig:
    """A crossbar tile for every mapped layer; ``attach`` programs it on a model (see ``nora.analog.tile``)."""

    forward: ForwardConfig = field(default_factory=ForwardConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    modifier: ModifierConfig = field(default_factory=ModifierConfig)
    layers: tuple[str, ...] | None = None
    preset: str | None = field(default=None, compare=False)
    kind: str = "tile"

    def __post_init__(self):
        for f, cls in (("forward", ForwardConfig), ("mapping", MappingConfig), ("device", DeviceConfig),
                       ("clip", ClipConfig), ("modifier", ModifierConfig)):
            object.__setattr__(self, f, _as(cls, getattr(self, f), f))
        object.__setattr__(self, "layers", _layers(self.layers))
        if self.kind != "tile":
            raise NoraError(f"a TileConfig has kind 'tile', got {self.kind!r}")

    def attach(self, model, seeds, noise_mode: str = "exact"):
        """Program this tile under ``model``'s layers; output noise is drawn in ``noise_mode``."""
        from nora.analog.tile import attach_tile
        return attach_tile(self, model, seeds, noise_mode)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def varied(self, key: str, value: Any) -> "TileConfig":
        return varied(self, key, value)


@dataclass(frozen=True)
class OrderedMACConfig:
    """The MAC of a BrainScaleS-2-like analog processor (methods.md section 10); see ``nora.analog.ordered``.

    Inputs become ``input_bits`` unsigned integers (per-sample abs-max scaling; with ``input_sign:
    split`` a negative part is run as a second pass and subtracted digitally), weights ``weight_bits``
    signed integers (per-layer abs-max). Per chunk of ``rows`` inputs: ``floor(gain x.W + N(0, noise^2))``
    clamped to [out_min, out_max]; chunks summed and clamped again. ``ordered`` clamps after every
    partial sum in ``order``; otherwise only the chunk total is clamped. Fixed pattern per chip: a
    per-column relative gain spread and offset (LSB), drawn once per reseed, or pinned to one chip by
    ``chip_seed`` (then reseeding changes only the noise streams: training on, or evaluating, one chip).
    ``backward``: ``straight_through`` (the float gradient) or ``saturation_masked`` (zero where a clamp acted).
    """

    input_bits: int = 5
    weight_bits: int = 6
    rows: int = 128
    gain: float = 0.002
    noise: float = 2.0
    out_min: int = -128
    out_max: int = 127
    ordered: bool = True
    order: str = "natural"
    input_sign: str = "split"
    gain_spread: float = 0.0
    offset_spread: float = 0.0
    chip_seed: int | None = None
    backward: str = "straight_through"
    layers: tuple[str, ...] | None = None
    preset: str | None = field(default=None, compare=False)
    kind: str = "ordered_mac"

    def __post_init__(self):
        _bits(self.input_bits, "input_bits", allow_none=False)
        _bits(self.weight_bits, "weight_bits", allow_none=False)
        _count(self.rows, "rows")
        _positive(self.gain, "gain")
        _nonneg(self.noise, "noise")
        for name in ("out_min", "out_max"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise NoraError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if not self.out_min < 0 < self.out_max:
            raise NoraError(f"the output range needs out_min < 0 < out_max, got [{self.out_min}, {self.out_max}]")
        if not isinstance(self.ordered, bool):
            raise NoraError(f"ordered must be true or false, got {self.ordered!r}")
        _choice(self.order, "order", ORDERS)
        _choice(self.input_sign, "input_sign", INPUT_SIGNS)
        _nonneg(self.gain_spread, "gain_spread")
        _nonneg(self.offset_spread, "offset_spread")
        if self.chip_seed is not None:
            check_seed(self.chip_seed, "chip_seed")
        _choice(self.backward, "backward", BACKWARDS)
        object.__setattr__(self, "layers", _layers(self.layers))
        if self.kind != "ordered_mac":
            raise NoraError(f"an OrderedMACConfig has kind 'ordered_mac', got {self.kind!r}")

    def attach(self, model, seeds, noise_mode: str = "exact"):
        """Put this MAC under ``model``'s layers; its per-chunk noise is drawn in ``noise_mode``."""
        from nora.analog.ordered import attach_ordered
        return attach_ordered(self, model, seeds, noise_mode)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def varied(self, key: str, value: Any) -> "OrderedMACConfig":
        return varied(self, key, value)


KINDS = {"tile": TileConfig, "ordered_mac": OrderedMACConfig}

#: Named starting points; a dict may override any field on top of one (``{preset: pcm, forward: {...}}``).
PRESETS: dict[str, dict[str, Any]] = {
    # Exact float matmul through the tile code path (a reference): no quantisation, noise or device
    # model; noise and bound management keep every value inside the ranges, so nothing is clipped.
    "ideal": {"kind": "tile", "forward": {"inp_bits": None, "out_bits": None, "out_noise": 0.0}},
    # Only additive output noise (aihwkit's default forward noise 0.06), no quantisation or device model.
    "output-noise-only": {"kind": "tile", "forward": {"inp_bits": None, "out_bits": None, "out_noise": 0.06}},
    # aihwkit-like inference tile: 7-bit DAC, 9-bit ADC (bound 12), output noise 0.06, PCM device model,
    # global drift compensation, 512 x 512 tiles, digital bias.
    "pcm": {"kind": "tile", "device": {"model": "pcm"}},
    # BrainScaleS-2-like ordered MAC with the methods.md section 10 values; no fixed pattern.
    "bss2": {"kind": "ordered_mac"},
    # The same with a per-chip fixed pattern (5 % column gain spread, 1 LSB column offset).
    "bss2-chip": {"kind": "ordered_mac", "gain_spread": 0.05, "offset_spread": 1.0},
}


def from_mapping(cls, data: Any, source: str):
    """Build dataclass ``cls`` from a mapping, naming the first unknown key."""
    if not isinstance(data, dict):
        raise NoraError(f"{source} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise NoraError(f"unknown key {source + '.' if source else ''}{unknown[0]}; "
                        f"known: {', '.join(sorted(names - {'kind', 'preset'}))}")
    return cls(**data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def hardware_from_dict(data: Any):
    """``{kind: tile|ordered_mac|hil|analog, preset: NAME, ...overrides}`` -> a configuration.

    ``kind`` may be left out (or be ``analog``): it then follows the preset, a tile without one.
    """
    if not isinstance(data, dict):
        raise NoraError(f"an analog hardware description must be a mapping, got {type(data).__name__}")
    data = dict(data)
    preset = data.pop("preset", None)
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise NoraError(f"unknown analog preset {preset!r}; choose from {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
    kind = data.pop("kind", None)
    if kind in (None, "analog"):  # "analog": whatever kind the preset is (a tile without one)
        kind = base.get("kind", "tile")
    if base and PRESETS[preset]["kind"] != kind:
        raise NoraError(f"preset {preset!r} is of kind {PRESETS[preset]['kind']!r}, not {kind!r}")
    base.pop("kind", None)
    if kind == "hil":
        from nora.analog.hil import HILConfig  # no preset has kind hil, so none got this far
        return from_mapping(HILConfig, data, "")
    if kind not in KINDS:
        raise NoraError(f"unknown analog hardware kind {kind!r}; choose from {', '.join(KINDS)}, hil")
    merged = _merge(base, data)
    merged["preset"] = preset
    return from_mapping(KINDS[kind], merged, "")


def preset(name: str):
    return hardware_from_dict({"preset": name})


def load_hardware(text: str | Path):
    """A preset name (``pcm``) or the path of a YAML file holding a hardware mapping."""
    if isinstance(text, str) and text in PRESETS:
        return preset(text)
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        from nora.config import read_yaml
        data = read_yaml(path, "analog hardware")
        if isinstance(data, dict) and set(data) == {"hardware"}:
            data = data["hardware"]
        return hardware_from_dict(data)
    raise NoraError(f"unknown analog preset {str(text)!r}; choose from {', '.join(PRESETS)} or give a YAML file")


def to_dict(config) -> dict[str, Any]:
    """JSON/YAML-able dict that ``hardware_from_dict`` turns back into an equal configuration."""
    out = dataclasses.asdict(config)
    for value in out.values():
        if isinstance(value, dict) and isinstance(value.get("prog_coeff"), tuple):
            value["prog_coeff"] = list(value["prog_coeff"])
    if out.get("layers") is not None:
        out["layers"] = list(out["layers"])
    out.pop("preset")
    return out


def varied(config, key: str, value: Any):
    """A copy with dotted ``key`` (``forward.out_noise``, ``gain``) set to ``value``, validated."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise NoraError(f"a hardware parameter is a dotted key such as forward.out_noise, got {key!r}")

    def set_in(obj, path, where):
        names = [f.name for f in fields(obj) if f.name not in ("kind", "preset")]
        head = path[0]
        if head not in names:
            raise NoraError(f"unknown hardware parameter {where + head!r}; known: {', '.join(names)}")
        current = getattr(obj, head)
        if len(path) == 1:
            if dataclasses.is_dataclass(current):
                raise NoraError(f"{where + head!r} is a group; name one of its fields, e.g. {head}."
                                f"{fields(current)[0].name}")
            return dataclasses.replace(obj, **{head: value})
        if not dataclasses.is_dataclass(current):
            raise NoraError(f"hardware parameter {where + head!r} has no field {path[1]!r}")
        return dataclasses.replace(obj, **{head: set_in(current, path[1:], where + head + ".")})

    return set_in(config, parts, "")


def check_times(times: Any) -> list[float]:
    """Times after programming (seconds) for drift: finite, >= 0 and strictly increasing."""
    if not isinstance(times, (list, tuple)) or not times:
        raise NoraError("drift times must be a non-empty list of seconds after programming")
    out = [_nonneg(t, "a drift time (seconds after programming)") for t in times]
    for a, b in zip(out, out[1:]):
        if b <= a:
            raise NoraError(f"drift times must be strictly increasing, got {a:g} then {b:g}")
    return out
