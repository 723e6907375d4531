"""The one noise specification: what noise, where, how often, on which weights, on what hardware.

A ``NoiseSpec`` is frozen data. YAML configs and CLI flags become a ``NoiseConfig`` and then a spec
through ``spec_from_config``; Python users build one directly. ``nora.attach`` turns a spec into one
handle on a model and the measurement engine evaluates a model under it, so every command applies
the same specification in the same way, weight noise and hardware models included.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping, Sequence

from nora.errors import NoraError
from nora.noise.models import GaussianAdditive, NoiseModel, check_sigma, noise_from_dict
from nora.noise.rng import check_mode
from nora.sim.perturbation import Hardware
from nora.sim.sites import CATEGORIES, SitePolicy

#: Samples of the evaluation data whose clean activations set the reference scale of relative sigma.
DEFAULT_CALIBRATION_SAMPLES = 4000

#: Hardware kinds a config may name, as "module:factory" (imported only when a run uses one). A
#: mapping without a kind is an analog model whose kind follows its preset.
HARDWARE_KINDS = {
    "tile": "nora.analog:hardware_from_dict",
    "ordered_mac": "nora.analog:hardware_from_dict",
    "hil": "nora.analog:hardware_from_dict",
    "analog": "nora.analog:hardware_from_dict",
}

RepeatSpec = int | tuple[int, ...] | Mapping[Any, int]


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """Fresh noise on stored weights at every forward (``layers``: names, None for every Linear/Conv)."""

    noise: NoiseModel
    layers: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"noise": self.noise.to_dict(), "layers": None if self.layers is None else list(self.layers)}


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """Activation noise and its placement, weight noise, a hardware model and calibration.

    ``sites`` selects the noisy sites (None: all); ``sigmas`` maps one sigma to every site (the
    ``activation`` model then gives only the kind), and ``budget`` rescales the selected sites'
    sigmas to that total; ``repeats`` is repeated execution per site (one number, one per site, or
    ``{selection: R}``); ``policy`` decides which module calls are sites.
    """

    activation: NoiseModel | None = None
    sites: Any = None
    sigmas: tuple[float, ...] | None = None
    budget: float | None = None
    repeats: RepeatSpec = 1
    policy: SitePolicy = dataclasses.field(default_factory=SitePolicy)
    weight: WeightSpec | None = None
    hardware: Hardware | None = None
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    #: "exact": fresh i.i.d. draws; "fast": windows of a pre-drawn Gaussian bank (``nora.noise.rng``).
    noise_mode: str = "exact"

    def __post_init__(self) -> None:
        check_mode(self.noise_mode)
        if self.sigmas is not None:
            object.__setattr__(self, "sigmas", tuple(check_sigma(s, f"sigma of site {i}")
                                                     for i, s in enumerate(self.sigmas)))
            if self.activation is None:
                object.__setattr__(self, "activation", GaussianAdditive(0.0))
        if self.budget is not None:
            object.__setattr__(self, "budget", check_sigma(self.budget, "budget"))
            if self.sigmas is None:
                raise NoraError("a noise budget needs a per-site sigma map (sigmas: one value per site)")
        if isinstance(self.repeats, list):
            object.__setattr__(self, "repeats", tuple(self.repeats))
        if isinstance(self.sites, list):
            object.__setattr__(self, "sites", tuple(self.sites))
        if isinstance(self.sites, str) and self.sites.strip().lower() == "all":
            object.__setattr__(self, "sites", None)
        if isinstance(self.calibration_samples, bool) or not isinstance(self.calibration_samples, int) \
                or self.calibration_samples < 1:
            raise NoraError(f"calibration samples must be an integer >= 1, got {self.calibration_samples!r}")

    # ------------------------------------------------------------------ views
    @property
    def relative(self) -> str | None:
        """The calibration statistic the activation noise needs ("std", "maxabs") or None."""
        return None if self.activation is None else self.activation.relative

    @property
    def has_activation_noise(self) -> bool:
        if self.activation is None:
            return False
        if self.sigmas is not None:
            return any(s > 0 for s in self.sigmas) and (self.budget is None or self.budget > 0)
        return not _zero(self.activation)

    def magnitude(self) -> float | None:
        """The one number a curve varies: sigma (amplitude for combined noise), or the budget of a map."""
        if self.activation is None:
            return None
        if self.sigmas is not None:
            return self.budget if self.budget is not None else sum(self.sigmas)
        return self.activation.magnitude()

    def with_magnitude(self, value: float) -> "NoiseSpec":
        """The same specification at another activation noise level (a map keeps its shape: budget = value)."""
        if self.activation is None:
            raise NoraError("this noise specification has no activation noise whose level could vary")
        if self.sigmas is not None:
            return dataclasses.replace(self, budget=check_sigma(value, "budget"))
        return dataclasses.replace(self, activation=self.activation.with_magnitude(value))

    def at_sites(self, sites: Any) -> "NoiseSpec":
        return dataclasses.replace(self, sites=sites)

    def replace(self, **changes: Any) -> "NoiseSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        sites = self.sites
        return {
            "activation": None if self.activation is None else self.activation.to_dict(),
            "sites": "all" if sites is None else (list(sites) if isinstance(sites, tuple) else sites),
            "sigmas": None if self.sigmas is None else list(self.sigmas),
            "budget": self.budget,
            "repeats": _repeats_dict(self.repeats),
            "policy": self.policy.to_dict(),
            "weight": None if self.weight is None else self.weight.to_dict(),
            "hardware": None if self.hardware is None else self.hardware.to_dict(),
            "calibration_samples": self.calibration_samples,
            "noise_mode": self.noise_mode,
        }

    def describe(self, level: bool = True) -> str:
        """One line; ``level=False`` names the activation noise without its (varied) level."""
        parts = []
        if self.activation is not None and (self.has_activation_noise or not level):
            where = "all sites" if self.sites is None else f"sites {list(self.sites) if isinstance(self.sites, tuple) else self.sites}"
            what = self.activation.describe() if level else self.activation.kind + (
                f" relative to {self.activation.relative}" if self.activation.relative else "")
            parts.append(f"{what} at {where}" + (" (mapped)" if self.sigmas else ""))
        if self.weight is not None:
            parts.append(f"weight {self.weight.noise.describe()}")
        if self.hardware is not None:
            parts.append(f"hardware {self.hardware.to_dict().get('kind', type(self.hardware).__name__)}")
        if self.repeats != 1:
            parts.append(f"repeats {_repeats_dict(self.repeats)}")
        return "; ".join(parts) or "clean"


def _zero(noise: NoiseModel) -> bool:
    value = getattr(noise, noise.magnitude_field)
    return not hasattr(value, "shape") and float(value) == 0.0


def _repeats_dict(repeats: RepeatSpec) -> Any:
    if isinstance(repeats, Mapping):
        return {str(k): v for k, v in repeats.items()}
    return list(repeats) if isinstance(repeats, tuple) else repeats


# ---------------------------------------------------------------------- from configs
def hardware_from_dict(data: Mapping[str, Any]) -> Hardware:
    """A hardware model from its config mapping (``kind`` names the package that builds it)."""
    kind = data.get("kind", "analog")
    if kind not in HARDWARE_KINDS:
        raise NoraError(f"unknown hardware kind {kind!r}; choose one of {', '.join(sorted(HARDWARE_KINDS))}")
    module, _, attr = HARDWARE_KINDS[kind].partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise NoraError(f"hardware kind {kind!r} is not available in this installation ({exc})") from None
    return factory(dict(data))


def policy_from_config(cfg: Any) -> SitePolicy:
    if cfg is None:
        return SitePolicy()
    include = tuple(cfg.include) if cfg.include is not None else CATEGORIES
    return SitePolicy(include=include, exclude=tuple(cfg.exclude), batch_norm=cfg.batch_norm,
                      extra=tuple(cfg.extra), types=None if cfg.types is None else tuple(cfg.types))


def spec_from_config(cfg: Any, *, magnitude: float | None = None, default_mode: str = "exact") -> NoiseSpec:
    """The spec of a ``nora.config.NoiseConfig`` (``magnitude`` overrides its sigma / amplitude; a
    config without ``mode`` takes ``default_mode``)."""
    if cfg is None:
        return NoiseSpec()
    activation_dict: dict[str, Any] = {"kind": cfg.kind, "normalize": cfg.normalize, "relative": cfg.relative}
    level = cfg.sigma if magnitude is None else magnitude
    if cfg.kind == "combined":
        activation_dict.update(amplitude=level, ratio=cfg.ratio, order=cfg.order)
    else:
        activation_dict["sigma"] = level
    weight = None
    if cfg.weight is not None and cfg.weight.sigma > 0:
        weight = WeightSpec(noise_from_dict({"kind": cfg.weight.kind, "sigma": cfg.weight.sigma,
                                             "relative": cfg.weight.relative}),
                            None if cfg.weight.layers is None else tuple(cfg.weight.layers))
    repeats = cfg.repeats
    if isinstance(repeats, dict):
        repeats = {(int(k) if isinstance(k, str) and k.isdigit() else k): v for k, v in repeats.items()}
    return NoiseSpec(
        activation=noise_from_dict(activation_dict),
        sites=cfg.sites,
        sigmas=None if cfg.sigmas is None else tuple(cfg.sigmas),
        budget=cfg.budget,
        repeats=repeats,
        policy=policy_from_config(cfg.policy),
        weight=weight,
        hardware=None if cfg.hardware is None else hardware_from_dict(cfg.hardware),
        calibration_samples=cfg.calibration_samples,
        noise_mode=cfg.mode or default_mode,
    )


def spec_from_options(noise: NoiseModel | None = None, *, sites: Any = None, sigmas: Sequence[float] | None = None,
                      budget: float | None = None, repeats: RepeatSpec = 1, policy: SitePolicy | None = None,
                      site_types: Any = None, include_input: bool = True, weight: WeightSpec | NoiseModel | None = None,
                      hardware: Hardware | None = None,
                      calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES) -> NoiseSpec:
    """The spec of ``nora.attach``'s keyword form (``site_types``/``include_input`` build a policy)."""
    if noise is None and sigmas is None and weight is None and hardware is None:
        raise NoraError("give a noise model (and optionally sigmas= for a mapped placement), weight= or hardware=")
    if policy is None:
        from nora.sim.sites import policy_from

        policy = policy_from(site_types, include_input)
    if isinstance(weight, NoiseModel):
        weight = WeightSpec(weight)
    return NoiseSpec(activation=noise, sites=sites, sigmas=None if sigmas is None else tuple(sigmas), budget=budget,
                     repeats=repeats, policy=policy, weight=weight, hardware=hardware,
                     calibration_samples=calibration_samples)


def as_spec(noise: NoiseSpec | NoiseModel, **placement: Any) -> NoiseSpec:
    """A spec from a spec (placement keywords replace its fields) or from a bare noise model."""
    if isinstance(noise, NoiseSpec):
        return dataclasses.replace(noise, **placement) if placement else noise
    if isinstance(noise, NoiseModel):
        return NoiseSpec(activation=noise, **placement)
    raise NoraError(f"expected a NoiseSpec or a noise model, got {type(noise).__name__}")
