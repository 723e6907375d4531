"""Inference-noise processes: how the nominal sigma moves over time, and jitter around it.

A process maps a sequence of times to a nominal sigma per time (``sigmas(times, seed)``). ``Jitter``
then spreads the level of each inference around that nominal value, once per mini-batch or once per
sample, as a factor with mean one. Both are pydantic models so that trajectory files are validated
field by field; add a process by subclassing ``SigmaProcess`` with a ``kind`` literal and decorating
it with ``@register_process``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nora.errors import NoraError
from nora.seeds import SeedTree

BOLTZMANN_EV = 8.617333262e-5  # eV / K

PROCESSES: dict[str, type["SigmaProcess"]] = {}


Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def register_process(cls: type["SigmaProcess"]) -> type["SigmaProcess"]:
    """Class decorator: make a process selectable by its ``kind`` in trajectory files."""
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str):
        raise NoraError(f"{cls.__name__} needs a default string 'kind' to be registered")
    PROCESSES[kind] = cls
    return cls


class SigmaProcess(StrictModel):
    """The nominal inference sigma as a function of time."""

    kind: str

    @abstractmethod
    def sigmas(self, times: np.ndarray, seed: int) -> np.ndarray:
        """Nominal sigma at each time (times increase strictly); raise NoraError where it is undefined."""

    def summary(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.model_dump().items() if k != "kind" and not isinstance(v, list))
        return f"{self.kind}({fields})"


def _checked(values: np.ndarray, times: np.ndarray, what: str) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        i = int(bad[0])
        raise NoraError(f"{what} gives sigma {values[i]:g} at t={times[i]:g}; sigma must stay finite and >= 0")
    return values


@register_process
class Constant(SigmaProcess):
    kind: Literal["constant"] = "constant"
    sigma: NonNegative

    def sigmas(self, times, seed):
        return np.full(len(times), self.sigma, dtype=float)


@register_process
class LinearDrift(SigmaProcess):
    """sigma(t) = sigma0 + rate * (t - t0)."""

    kind: Literal["linear"] = "linear"
    sigma0: NonNegative
    rate: Finite
    t0: Finite = 0.0

    def sigmas(self, times, seed):
        return _checked(self.sigma0 + self.rate * (times - self.t0), times, "linear drift")


@register_process
class PowerLawDrift(SigmaProcess):
    """sigma(t) = sigma0 * (t / t0) ** nu (conductance drift of phase-change memory has this form)."""

    kind: Literal["power_law"] = "power_law"
    sigma0: NonNegative
    t0: Positive = 1.0
    nu: Finite

    def sigmas(self, times, seed):
        if (times <= 0).any():
            raise NoraError(f"power-law drift needs times > 0, got t={times[times <= 0][0]:g}")
        return _checked(self.sigma0 * (times / self.t0) ** self.nu, times, "power-law drift")


@register_process
class Temperature(SigmaProcess):
    """sigma from a temperature trajectory (kelvin, one value per time) through a law:

    - ``linear``: sigma_ref * (1 + coefficient * (T - T_ref)), coefficient per kelvin;
    - ``arrhenius``: sigma_ref * exp(-(E_a / k_B) * (1/T - 1/T_ref)), activation energy in eV;
    - ``sqrt``: sigma_ref * sqrt(T / T_ref), thermal (Johnson-Nyquist) noise amplitude.
    """

    kind: Literal["temperature"] = "temperature"
    temperatures: list[Positive] = Field(min_length=1)
    law: Literal["linear", "arrhenius", "sqrt"] = "linear"
    sigma_ref: NonNegative
    temperature_ref: Positive = 300.0
    coefficient: Finite | None = None
    activation_energy: Finite | None = None

    @model_validator(mode="after")
    def _law_parameters(self) -> "Temperature":
        needed = {"linear": "coefficient", "arrhenius": "activation_energy"}.get(self.law)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"temperature law '{self.law}' needs '{needed}'")
        for name in ("coefficient", "activation_energy"):
            if name != needed and getattr(self, name) is not None:
                raise ValueError(f"temperature law '{self.law}' does not use '{name}'")
        return self

    def sigmas(self, times, seed):
        if len(self.temperatures) != len(times):
            raise NoraError(f"the temperature process has {len(self.temperatures)} temperatures but there are {len(times)} times")
        temp = np.asarray(self.temperatures, dtype=float)
        ref = self.temperature_ref
        if self.law == "linear":
            values = self.sigma_ref * (1.0 + self.coefficient * (temp - ref))
        elif self.law == "arrhenius":
            values = self.sigma_ref * np.exp(-(self.activation_energy / BOLTZMANN_EV) * (1.0 / temp - 1.0 / ref))
        else:
            values = self.sigma_ref * np.sqrt(temp / ref)
        return _checked(values, times, f"the {self.law} temperature law")

    def summary(self):
        extra = {"linear": f", coefficient={self.coefficient}", "arrhenius": f", activation_energy={self.activation_energy}"}
        return (f"temperature({self.law}, sigma_ref={self.sigma_ref}, T_ref={self.temperature_ref}"
                f"{extra.get(self.law, '')}, T={min(self.temperatures):g}..{max(self.temperatures):g} K)")


@register_process
class RandomWalk(SigmaProcess):
    """A seeded random walk of sigma in continuous time, one realisation per seed.

    ``space: log`` (default) walks log(sigma) with steps N(0, step^2 * dt), so sigma stays positive
    and ``step`` is a relative rate; ``space: linear`` walks sigma itself with steps N(0, step^2 * dt)
    and reflects at zero.
    """

    kind: Literal["random_walk"] = "random_walk"
    sigma0: NonNegative
    step: NonNegative
    space: Literal["log", "linear"] = "log"

    @model_validator(mode="after")
    def _positive_in_log_space(self) -> "RandomWalk":
        if self.space == "log" and self.sigma0 <= 0:
            raise ValueError("a random walk in log space needs sigma0 > 0")
        return self

    def sigmas(self, times, seed):
        rng = SeedTree(seed).child("trajectory", "random-walk").numpy()
        dt = np.diff(times)
        increments = rng.standard_normal(len(dt)) * self.step * np.sqrt(dt)
        path = np.concatenate([[0.0], np.cumsum(increments)])
        if self.space == "log":
            return self.sigma0 * np.exp(path)
        return np.abs(self.sigma0 + path)


class Jitter(StrictModel):
    """Spread of each inference's sigma around the nominal value, as a factor with mean one.

    ``normal``: max(0, 1 + spread * z) (clipped at zero); ``lognormal``: exp(spread * z - spread^2 / 2)
    (spread = standard deviation of log sigma); ``uniform``: U(1 - spread, 1 + spread), spread <= 1.
    ``per: sample`` draws one factor per sample (shared by every site for that sample), ``per: batch``
    one per mini-batch.
    """

    per: Literal["sample", "batch"] = "sample"
    distribution: Literal["normal", "lognormal", "uniform"] = "normal"
    spread: NonNegative

    @model_validator(mode="after")
    def _uniform_stays_positive(self) -> "Jitter":
        if self.distribution == "uniform" and self.spread > 1:
            raise ValueError(f"uniform jitter needs spread <= 1 (sigma stays >= 0), got {self.spread}")
        return self

    def factors(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Sigma factors for one batch: one per sample, or one per inference repeated over it."""
        n = batch_size if self.per == "sample" else 1
        if self.distribution == "uniform":
            f = 1.0 + self.spread * (2.0 * torch.rand(n, generator=generator) - 1.0)
        else:
            z = torch.randn(n, generator=generator)
            f = (self.spread * z - self.spread**2 / 2).exp() if self.distribution == "lognormal" else (1.0 + self.spread * z).clamp_(min=0.0)
        return f if self.per == "sample" else f.expand(batch_size)

    def summary(self) -> str:
        return f"{self.distribution} jitter per {self.per}, spread {self.spread:g}"


def process_from_dict(spec: Any, source: str = "process") -> SigmaProcess:
    """Build a registered process from ``{"kind": ..., **fields}``; errors name the bad field."""
    from nora.config import format_validation_error

    if not isinstance(spec, dict):
        raise NoraError(f"{source}: expected a mapping with a 'kind', got {spec!r}")
    kind = spec.get("kind")
    if kind not in PROCESSES:
        raise NoraError(f"{source}: unknown process kind {kind!r}; choose one of {', '.join(sorted(PROCESSES))}")
    try:
        return PROCESSES[kind].model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a check across fields: say it without a key
            raise NoraError(f"{source}: {first['msg'].removeprefix('Value error, ')}") from None
        raise NoraError(format_validation_error(exc, source)) from None
