"""Noise models: how one site's output is perturbed.

A noise model is a small frozen dataclass. It never draws random numbers itself: the caller passes
``draw``, a function returning a fresh standard-normal tensor shaped like the output (the model may
overwrite it), so that the injector
can take all draws of a forward pass from one pre-generated buffer (see ``nora.noise.rng``).

``factor`` multiplies every sigma at call time. It carries the site's calibration scale (relative
sigma), a mapped per-site ratio and training-time schedules; it may be a float or a per-sample
tensor of shape ``[batch]``.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Literal

import torch

from nora.errors import NoraError
from nora.noise.rng import add_draw

Sigma = float | torch.Tensor
Draw = Callable[[], torch.Tensor]
Relative = Literal["std", "maxabs"] | None


def check_sigma(value: Any, name: str = "sigma") -> Sigma:
    """Validate a noise level: a finite number >= 0, or a 1-D tensor of them (one per sample)."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1:
            raise NoraError(f"{name} tensor must be a scalar or one value per sample, got shape {tuple(value.shape)}")
        if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            raise NoraError(f"{name} must be finite and >= 0 everywhere")
        return value.detach().float() if value.dim() == 1 else float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NoraError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise NoraError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _broadcast(level: Sigma, x: torch.Tensor) -> Sigma:
    """Shape a per-sample level as [batch, 1, 1, ...] so that it broadcasts over one sample."""
    if isinstance(level, torch.Tensor):
        if level.dim() == 0:
            return level.to(device=x.device, dtype=x.dtype)
        if level.dim() == x.dim() and level.dtype == x.dtype and level.device == x.device \
                and level.shape[0] == level.numel() == x.shape[0]:
            return level  # already shaped (the injector shapes a per-sample scale once per batch)
        if level.numel() != x.shape[0]:
            raise NoraError(
                f"per-sample sigma has {level.numel()} values but the batch has {x.shape[0]} samples"
            )
        return level.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return level


def _is_zero(level: Sigma) -> bool:
    return not isinstance(level, torch.Tensor) and level == 0.0


def add_noise(x: torch.Tensor, sigma: Sigma, draw: Draw, inplace: bool) -> torch.Tensor:
    """x + sigma * z (a draw that can add itself without materialising z does so)."""
    if _is_zero(sigma):
        return x
    add_scaled = getattr(draw, "add_scaled", None)
    if add_scaled is not None:
        return add_scaled(x, sigma, inplace)
    return add_draw(x, draw(), sigma, inplace)


def mul_noise(x: torch.Tensor, sigma: Sigma, draw: Draw, inplace: bool) -> torch.Tensor:
    """x * (1 + sigma * z): multiplicative noise with mean one.

    A per-sample sigma is folded into the draws (each draw is used once; a draw that can scale
    itself as it is made does so), so the per-sample path allocates nothing beyond the scalar one.
    """
    if _is_zero(sigma):
        return x
    if isinstance(sigma, torch.Tensor):
        scaled = getattr(draw, "scaled", None)
        z = scaled(sigma) if scaled is not None else draw().mul_(sigma)
        return x.addcmul_(x, z) if inplace else torch.addcmul(x, x, z)
    z = draw()
    return x.addcmul_(x, z, value=sigma) if inplace else torch.addcmul(x, x, z, value=sigma)


@dataclasses.dataclass(frozen=True)
class NoiseModel(ABC):
    """Base class. ``normalize`` divides every sigma by the number of elements per sample."""

    kind: ClassVar[str]
    draws: ClassVar[int]
    #: Whether d(noisy)/dx is the identity (the noise does not depend on x).
    identity_gradient: ClassVar[bool] = False
    magnitude_field: ClassVar[str] = "sigma"
    normalize: bool = dataclasses.field(default=False, kw_only=True)
    relative: Relative = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.relative not in (None, "std", "maxabs"):
            raise NoraError(f"relative must be 'std', 'maxabs' or None, got {self.relative!r}")

    def level(self, sigma: float, factor: Sigma, x: torch.Tensor) -> Sigma:
        """The absolute sigma to use on ``x`` after scaling and normalisation."""
        level: Sigma = sigma * factor if not isinstance(factor, torch.Tensor) else factor * sigma
        if self.normalize:
            level = level / max(1, x[0].numel())
        return _broadcast(level, x)

    @abstractmethod
    def perturb(self, x: torch.Tensor, draw: Draw, factor: Sigma = 1.0, inplace: bool = False) -> torch.Tensor:
        """One noisy evaluation of ``x``."""

    def scaled(self, factor: float) -> "NoiseModel":
        """The same model with every sigma multiplied by ``factor``."""
        return self.with_magnitude(getattr(self, self.magnitude_field) * factor)

    def magnitude(self) -> float:
        """The one number that describes this model's strength (used by sweeps and mapped budgets)."""
        value = getattr(self, self.magnitude_field)
        return float(value.mean()) if isinstance(value, torch.Tensor) else float(value)

    def with_magnitude(self, value: Sigma) -> "NoiseModel":
        """The same model at another strength (sigma, or amplitude for combined noise)."""
        return dataclasses.replace(self, **{self.magnitude_field: value})

    def averaged(self, repeats: int) -> "NoiseModel | None":
        """The exact equivalent of averaging ``repeats`` draws, or None when there is none."""
        return None if repeats != 1 else self

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"kind": self.kind, **fields}

    def describe(self) -> str:
        extras = [f"relative={self.relative}"] if self.relative else []
        extras += ["normalized"] if self.normalize else []
        params = ", ".join(
            f"{f.name}={getattr(self, f.name):g}"
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), float)
        )
        return f"{self.kind}({', '.join([params, *extras]) if params else ', '.join(extras)})"


def _sqrt_repeats(repeats: int) -> float:
    if not isinstance(repeats, int) or repeats < 1:
        raise NoraError(f"repeats must be an integer >= 1, got {repeats!r}")
    return math.sqrt(repeats)


@dataclasses.dataclass(frozen=True)
class _SingleSigma(NoiseModel):
    """A model with one Gaussian sigma, whose R-draw average is the same model at sigma/sqrt(R)."""

    draws: ClassVar[int] = 1
    sigma: Sigma = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "sigma", check_sigma(self.sigma))

    def averaged(self, repeats):
        return self.scaled(1.0 / _sqrt_repeats(repeats))


@dataclasses.dataclass(frozen=True)
class GaussianAdditive(_SingleSigma):
    """y = x + N(0, sigma^2)."""

    kind: ClassVar[str] = "additive"
    identity_gradient: ClassVar[bool] = True

    def perturb(self, x, draw, factor=1.0, inplace=False):
        return add_noise(x, self.level(self.sigma, factor, x), draw, inplace)


@dataclasses.dataclass(frozen=True)
class GaussianMultiplicative(_SingleSigma):
    """y = x * N(1, sigma^2)."""

    kind: ClassVar[str] = "multiplicative"

    def perturb(self, x, draw, factor=1.0, inplace=False):
        return mul_noise(x, self.level(self.sigma, factor, x), draw, inplace)


@dataclasses.dataclass(frozen=True)
class GaussianCombined(NoiseModel):
    """Amplitude A and ratio r: sigma_add = A*r, sigma_mul = A*(1-r).

    ``order="mul_add"`` (default) computes x*N(1, sigma_mul^2) + N(0, sigma_add^2);
    ``order="add_mul"`` computes (x + N(0, sigma_add^2)) * N(1, sigma_mul^2).
    """

    kind: ClassVar[str] = "combined"
    draws: ClassVar[int] = 2
    magnitude_field: ClassVar[str] = "amplitude"
    amplitude: Sigma = 0.0
    ratio: float = 0.5
    order: Literal["mul_add", "add_mul"] = "mul_add"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "amplitude", check_sigma(self.amplitude, "amplitude"))
        ratio = check_sigma(self.ratio, "ratio")
        if isinstance(ratio, torch.Tensor) or ratio > 1:
            raise NoraError(f"ratio must be a number in [0, 1], got {self.ratio!r}")
        object.__setattr__(self, "ratio", ratio)
        if self.order not in ("mul_add", "add_mul"):
            raise NoraError(f"order must be 'mul_add' or 'add_mul', got {self.order!r}")

    @property
    def sigma_add(self) -> Sigma:
        return self.amplitude * self.ratio

    @property
    def sigma_mul(self) -> Sigma:
        return self.amplitude * (1.0 - self.ratio)

    def perturb(self, x, draw, factor=1.0, inplace=False):
        s_add = self.level(self.sigma_add, factor, x)
        s_mul = self.level(self.sigma_mul, factor, x)
        if self.order == "mul_add":
            return add_noise(mul_noise(x, s_mul, draw, inplace), s_add, draw, inplace)
        return mul_noise(add_noise(x, s_add, draw, inplace), s_mul, draw, inplace)

    def averaged(self, repeats):
        if self.order == "mul_add":
            return self.scaled(1.0 / _sqrt_repeats(repeats))
        _sqrt_repeats(repeats)
        return self if repeats == 1 else None


NOISE_MODELS: dict[str, type[NoiseModel]] = {
    cls.kind: cls for cls in (GaussianAdditive, GaussianMultiplicative, GaussianCombined)
}


def noise_from_dict(spec: dict[str, Any]) -> NoiseModel:
    """Build a noise model from ``{"kind": ..., **parameters}`` (configs and checkpoints)."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in NOISE_MODELS:
        raise NoraError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_MODELS)}")
    cls = NOISE_MODELS[kind]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise NoraError(f"unknown parameter(s) for {kind} noise: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return cls(**spec)


def make_noise(kind: str, sigma: float, **options: Any) -> NoiseModel:
    """Build a model from a kind and one strength (``sigma``, or the amplitude for combined noise)."""
    key = "amplitude" if kind == "combined" else "sigma"
    return noise_from_dict({"kind": kind, key: sigma, **options})
