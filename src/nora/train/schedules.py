"""Training-noise schedules: how the training sigma moves over epochs, mini-batches and samples.

A schedule returns a factor on the configured training sigma for one mini-batch: a float (every
sample at the same level) or a tensor ``[batch]`` (one level per sample, shared by every site for
that sample). The trainer writes it into ``NoiseInjector.sigma_scale`` before each forward pass, so
a schedule costs nothing but drawing at most ``batch`` numbers (methods.md section 6: VANT has no
training overhead).

Every random draw is seeded from ``(seed, epoch, batch_index)`` alone, so the factor of a batch does
not depend on what was drawn before it: a resumed run sees exactly the factors of an uninterrupted one.

Add a schedule by subclassing ``Schedule`` as a frozen, keyword-only dataclass whose extra fields are
its parameters, and decorating it with ``@register_schedule("name")``; configs then select it with
``train.noise_schedule.name`` and pass unnamed parameters under ``options``.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from nora.errors import NoraError
from nora.seeds import SeedTree

Factor = float | torch.Tensor

#: VANT theta by training sigma (methods.md section 6, from the research code's configurations).
THETA_TABLE: tuple[tuple[float, float], ...] = (
    (0.1, 0.05), (0.3, 0.05), (0.5, 0.25), (0.7, 0.35), (0.9, 0.35), (1.1, 0.45),
    (1.3, 0.66), (1.5, 0.66), (1.7, 0.96), (1.9, 0.76), (2.1, 0.86),
)
VANT_ALPHA = 0.45

SCHEDULES: dict[str, type["Schedule"]] = {}


def register_schedule(name: str) -> Callable[[type["Schedule"]], type["Schedule"]]:
    """Class decorator: make a ``Schedule`` subclass selectable by ``name`` in configs."""

    def add(cls: type[Schedule]) -> type[Schedule]:
        if not (isinstance(cls, type) and issubclass(cls, Schedule)):
            raise NoraError(f"register_schedule expects a Schedule subclass, got {cls!r}")
        cls.name = name
        SCHEDULES[name] = cls
        return cls

    return add


def batch_generator(seed: int, epoch: int, batch_index: int = -1) -> torch.Generator:
    """The generator of (epoch, batch) schedule draws, numbered under the run's node for the epoch;
    batch -1 means one draw per epoch."""
    return SeedTree(seed).child("train", "schedule", epoch).counter_generator(batch_index + 1)


def ramp(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up: epoch e < W trains at e/W of the target (epoch 0 is clean), then 1."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return 1.0
    return epoch / warmup_epochs


def default_theta(sigma: float) -> tuple[float, str]:
    """theta for VANT from the research table, and how it was chosen (said in the run log).

    Between two table entries theta is interpolated linearly in sigma; outside the table the
    nearest end entry is used.
    """
    sigmas = [s for s, _ in THETA_TABLE]
    thetas = [t for _, t in THETA_TABLE]
    for s, t in THETA_TABLE:
        if math.isclose(sigma, s, rel_tol=1e-9, abs_tol=1e-12):
            return t, f"table entry for sigma_train={s:g}"
    if sigma < sigmas[0]:
        return thetas[0], f"nearest table entry (sigma_train={sigmas[0]:g}; table starts there)"
    if sigma > sigmas[-1]:
        return thetas[-1], f"nearest table entry (sigma_train={sigmas[-1]:g}; table ends there)"
    theta = float(np.interp(sigma, sigmas, thetas))
    upper = int(np.searchsorted(sigmas, sigma))
    return theta, f"interpolated between table entries sigma_train={sigmas[upper - 1]:g} and {sigmas[upper]:g}"


def _nonneg(value: Any, name: str, schedule: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise NoraError(f"schedule '{schedule}': {name} must be a finite number >= 0, got {value!r}")


def _epochs(value: Any, name: str, schedule: str, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NoraError(f"schedule '{schedule}': {name} must be an integer >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schedule(ABC):
    """Factor on the configured training sigma per (epoch, mini-batch); epochs count from 0.

    ``sigma`` is the configured training sigma (the amplitude for combined noise), ``epochs`` the
    length of training and ``seed`` the run seed; every other field is a parameter of the schedule.
    """

    name: ClassVar[str] = ""
    sigma: float
    epochs: int
    seed: int = 0

    def __post_init__(self) -> None:
        _nonneg(self.sigma, "the training sigma", self.name)
        _epochs(self.epochs, "epochs", self.name, 1)
        self.check()

    def check(self) -> None:
        """Validate the parameters (raise NoraError); called on construction."""

    @abstractmethod
    def scale(self, epoch: int, batch_index: int, batch_size: int) -> Factor:
        """The factor for one mini-batch: a float, or a tensor with one value per sample."""

    @classmethod
    def parameters(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("sigma", "epochs", "seed")]

    def describe(self) -> str:
        params = ", ".join(f"{p}={getattr(self, p)}" for p in self.parameters())
        return f"{self.name}({params})"


@register_schedule("constant")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Constant(Schedule):
    """Plain noisy training: the configured sigma throughout."""

    def scale(self, epoch, batch_index, batch_size):
        return 1.0


@register_schedule("warmup")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Warmup(Schedule):
    """Noisy training whose sigma ramps linearly from 0 over the first ``warmup_epochs`` epochs."""

    warmup_epochs: int = 1

    def check(self):
        _epochs(self.warmup_epochs, "warmup_epochs", self.name, 1)
        if self.warmup_epochs > self.epochs:
            raise NoraError(f"schedule 'warmup': warmup_epochs ({self.warmup_epochs}) exceeds the {self.epochs} training epochs")

    def scale(self, epoch, batch_index, batch_size):
        return ramp(epoch, self.warmup_epochs)


@register_schedule("overshoot")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Overshoot(Schedule):
    """Train above the target first: ramp 0 -> ``peak`` over ``warmup_epochs``, then fall linearly
    to 1 over ``settle_epochs`` (default: all remaining epochs) and stay there."""

    peak: float = 1.5
    warmup_epochs: int = 0
    settle_epochs: int | None = None

    def check(self):
        _nonneg(self.peak, "peak", self.name)
        if self.peak < 1:
            raise NoraError(f"schedule 'overshoot': peak must be >= 1 (a factor above the target sigma), got {self.peak}")
        _epochs(self.warmup_epochs, "warmup_epochs", self.name)
        if self.settle_epochs is not None:
            _epochs(self.settle_epochs, "settle_epochs", self.name, 1)
        if self.warmup_epochs + self.settle_span() > self.epochs:
            raise NoraError(
                f"schedule 'overshoot': warmup_epochs + settle_epochs ({self.warmup_epochs} + {self.settle_span()}) "
                f"exceeds the {self.epochs} training epochs"
            )

    def settle_span(self) -> int:
        if self.settle_epochs is not None:
            return self.settle_epochs
        return max(1, self.epochs - self.warmup_epochs)

    def scale(self, epoch, batch_index, batch_size):
        if epoch < self.warmup_epochs:
            return self.peak * ramp(epoch, self.warmup_epochs)
        done = epoch - self.warmup_epochs
        span = self.settle_span()
        if done >= span:
            return 1.0
        return self.peak + (1.0 - self.peak) * done / span


@register_schedule("sigma_of_sigma")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SigmaOfSigma(Schedule):
    """One level per epoch: factor max(0, 1 + spread * z_epoch), z ~ N(0, 1), after an optional warm-up.

    ``spread`` is the standard deviation of the training sigma relative to the configured sigma.
    """

    spread: float = 0.25
    warmup_epochs: int = 0

    def check(self):
        _nonneg(self.spread, "spread", self.name)
        _epochs(self.warmup_epochs, "warmup_epochs", self.name)
        if self.warmup_epochs > self.epochs:
            raise NoraError(
                f"schedule 'sigma_of_sigma': warmup_epochs ({self.warmup_epochs}) exceeds the {self.epochs} training epochs"
            )

    def scale(self, epoch, batch_index, batch_size):
        if epoch < self.warmup_epochs:
            return ramp(epoch, self.warmup_epochs)
        z = float(torch.randn((), generator=batch_generator(self.seed, epoch)))
        return max(0.0, 1.0 + self.spread * z)


@register_schedule("vant")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Vant(Schedule):
    """Variance-aware noisy training (methods.md section 6).

    After ``warmup_epochs`` of linear warm-up to sigma_train, every sample i of every mini-batch
    gets sigma_i = alpha * sigma_train + theta * |z_i|, z_i ~ N(0, 1), at every site. As a factor
    on sigma_train this is alpha + (theta / sigma_train) * |z_i|. theta defaults from the research
    table (``default_theta``).
    """

    alpha: float = VANT_ALPHA
    theta: float | None = None
    warmup_epochs: int = 0

    def check(self):
        _nonneg(self.alpha, "alpha", self.name)
        _nonneg(self.theta, "theta", self.name)
        _epochs(self.warmup_epochs, "warmup_epochs", self.name)
        if self.warmup_epochs > self.epochs:
            raise NoraError(f"schedule 'vant': warmup_epochs ({self.warmup_epochs}) exceeds the {self.epochs} training epochs")
        if self.sigma <= 0:
            raise NoraError("schedule 'vant' needs a training sigma > 0 (train_noise.sigma): theta is in its units")

    @property
    def theta_value(self) -> float:
        return self.theta if self.theta is not None else default_theta(self.sigma)[0]

    @property
    def theta_source(self) -> str:
        return "given" if self.theta is not None else default_theta(self.sigma)[1]

    def scale(self, epoch, batch_index, batch_size):
        if epoch < self.warmup_epochs:
            return ramp(epoch, self.warmup_epochs)
        z = torch.randn(batch_size, generator=batch_generator(self.seed, epoch, batch_index))
        return z.abs_().mul_(self.theta_value / self.sigma).add_(self.alpha)

    def describe(self):
        return (f"vant(alpha={self.alpha:g}, theta={self.theta_value:g} ({self.theta_source}), "
                f"warmup_epochs={self.warmup_epochs}, sigma_train={self.sigma:g})")


def schedule_parameters(name: str) -> list[str]:
    """The parameters a registered schedule takes (configs check their keys against this)."""
    return _schedule_class(name).parameters()


def _schedule_class(name: str) -> type[Schedule]:
    if name not in SCHEDULES:
        raise NoraError(f"unknown noise schedule {name!r}; choose one of {', '.join(sorted(SCHEDULES))}")
    return SCHEDULES[name]


def make_schedule(name: str, *, sigma: float, epochs: int, seed: int = 0, **params: Any) -> Schedule:
    """Build a registered schedule; unknown names and parameters are NoraErrors."""
    cls = _schedule_class(name)
    allowed = cls.parameters()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "no parameters"
        raise NoraError(f"schedule '{name}' does not take {', '.join(unknown)}; it takes {takes}")
    return cls(sigma=sigma, epochs=epochs, seed=seed, **params)


def schedule_from_config(schedule_cfg, noise_cfg, epochs: int, seed: int) -> Schedule | None:
    """The schedule a run config asks for (``train.noise_schedule``), or None for plain training.

    Schedules scale the activation noise (``train_noise``); weight noise stays as configured.
    """
    if schedule_cfg is None:
        return None
    if noise_cfg is None or (noise_cfg.sigma <= 0 and not noise_cfg.sigmas):
        raise NoraError(
            f"train.noise_schedule '{schedule_cfg.name}' needs activation noise in training (set train_noise.sigma > 0)"
        )
    return make_schedule(schedule_cfg.name, sigma=noise_cfg.sigma, epochs=epochs, seed=seed, **schedule_cfg.params())
