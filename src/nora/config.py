"""Run configuration: plain pydantic models, parsed from YAML as data and validated on load.

Unknown keys are errors (``extra="forbid"``), so a typo never silently falls back to a default.
Every CLI flag maps onto a key here; ``apply_overrides`` sets dotted keys ("train.epochs=3").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nora.errors import NoraError

ModelT = TypeVar("ModelT", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _finite_nonneg(value: float, name: str) -> float:
    if value is None:
        return value
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


class WeightNoiseConfig(_Strict):
    kind: Literal["additive", "multiplicative"] = "additive"
    sigma: float = 0.0
    relative: Literal["std", "maxabs"] | None = None

    @field_validator("sigma")
    @classmethod
    def _sigma(cls, v: float) -> float:
        return _finite_nonneg(v, "sigma")


class NoiseConfig(_Strict):
    """Noise at the activation sites (and optionally on weights)."""

    kind: Literal["additive", "multiplicative", "combined"] = "additive"
    sigma: float = 0.0
    ratio: float = 0.5
    order: Literal["mul_add", "add_mul"] = "mul_add"
    normalize: bool = False
    relative: Literal["std", "maxabs"] | None = None
    sites: Any = "all"
    sigmas: list[float] | None = None
    budget: float | None = None
    repeats: int | list[int] = 1
    site_types: list[str] | None = None
    include_input: bool = True
    weight: WeightNoiseConfig | None = None

    @field_validator("sigma", "budget")
    @classmethod
    def _sigma(cls, v: float | None, info) -> float | None:
        return _finite_nonneg(v, info.field_name)

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {v}")
        return v

    @field_validator("sigmas")
    @classmethod
    def _sigmas(cls, v: list[float] | None) -> list[float] | None:
        for s in v or []:
            _finite_nonneg(s, "every value of sigmas")
        return v

    def model_spec(self) -> dict[str, Any]:
        """Arguments for ``nora.noise.noise_from_dict``."""
        spec: dict[str, Any] = {"kind": self.kind, "normalize": self.normalize, "relative": self.relative}
        if self.kind == "combined":
            spec.update(amplitude=self.sigma, ratio=self.ratio, order=self.order)
        else:
            spec["sigma"] = self.sigma
        return spec


class DataConfig(_Strict):
    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    cache_dir: str | None = None
    batch_size: int = Field(128, ge=1)
    test_batch_size: int = Field(1000, ge=1)
    augment: Literal["cifar"] | None = None
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)


class ModelConfig(_Strict):
    arch: str = "lenet5"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(_Strict):
    """How the training sigma moves (``nora.train.schedules``); unset parameters take the schedule's defaults."""

    name: str = "constant"
    warmup_epochs: int | None = Field(None, ge=0)
    settle_epochs: int | None = Field(None, ge=1)
    alpha: float | None = None
    theta: float | None = None
    peak: float | None = None
    spread: float | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("alpha", "theta", "peak", "spread")
    @classmethod
    def _nonneg(cls, v: float | None, info) -> float | None:
        return _finite_nonneg(v, info.field_name)

    @model_validator(mode="after")
    def _known(self) -> "ScheduleConfig":
        from nora.train.schedules import schedule_parameters

        try:
            allowed = schedule_parameters(self.name)
        except NoraError as exc:
            raise ValueError(str(exc)) from None
        unknown = sorted(set(self.params()) - set(allowed))
        if unknown:
            raise ValueError(f"schedule '{self.name}' does not take {', '.join(unknown)}; it takes {', '.join(allowed) or 'no parameters'}")
        return self

    def params(self) -> dict[str, Any]:
        """The parameters that were set, for ``make_schedule``."""
        named = {k: getattr(self, k) for k in ("warmup_epochs", "settle_epochs", "alpha", "theta", "peak", "spread")}
        return {**{k: v for k, v in named.items() if v is not None}, **self.options}


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, le=1)
    scheduler: Literal["cosine", "none"] = "cosine"
    clamp_weights: tuple[float, float] | None = None
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    noise_schedule: ScheduleConfig | None = None

    @model_validator(mode="after")
    def _clamp(self) -> "TrainConfig":
        if self.clamp_weights is not None and not self.clamp_weights[0] < self.clamp_weights[1]:
            raise ValueError(f"clamp_weights needs low < high, got {list(self.clamp_weights)}")
        return self

    @model_validator(mode="after")
    def _schedule_fits(self) -> "TrainConfig":
        schedule = self.noise_schedule
        if schedule is not None and (schedule.warmup_epochs or 0) + (schedule.settle_epochs or 0) > self.epochs:
            settle = f" plus settling ({schedule.settle_epochs} epochs)" if schedule.settle_epochs else ""
            raise ValueError(
                f"noise_schedule warm-up ({schedule.warmup_epochs or 0} epochs){settle} is longer than training ({self.epochs} epochs)"
            )
        return self


class EvalConfig(_Strict):
    noise: NoiseConfig | None = None
    sigmas: list[float] = Field(default_factory=list)
    repeats: int = Field(5, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)

    @field_validator("sigmas")
    @classmethod
    def _sigmas(cls, v: list[float]) -> list[float]:
        for s in v:
            _finite_nonneg(s, "every evaluation sigma")
        return v


class RunConfig(_Strict):
    """One training run: data, model, optimisation, noise in training and in evaluation."""

    name: str | None = None
    output_dir: str = "runs"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    train_noise: NoiseConfig | None = None
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def run_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.data.dataset}-{self.model.arch}"

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name()


def format_validation_error(exc: ValidationError, source: str) -> str:
    """The first problem of a pydantic error as one line naming the key."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<top level>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{where}'"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: bad value for '{where}': {message}"


def validate_mapping(model: type[ModelT], data: Any, source: str) -> ModelT:
    """Validate parsed YAML against a pydantic model; every problem becomes one NoraError line."""
    if not isinstance(data, dict):
        raise NoraError(f"{source}: expected a mapping of keys at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise NoraError(format_validation_error(exc, source)) from None


def parse_config(data: Any, source: str = "config") -> RunConfig:
    return validate_mapping(RunConfig, {} if data is None else data, source)


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """Parse a YAML file as data, with one clear line for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise NoraError(f"{what} file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise NoraError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def load_config(path: str | Path) -> RunConfig:
    return parse_config(read_yaml(path), str(path))


def apply_overrides(config: RunConfig, overrides: dict[str, Any], source: str = "override") -> RunConfig:
    """Return a copy with dotted keys set (``{"train.epochs": 3}``), validated like a file."""
    data = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise NoraError(f"{source}: unknown key '{dotted}'")
            if node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict):
            raise NoraError(f"{source}: unknown key '{dotted}'")
        node[parts[-1]] = value
    return parse_config(data, source)


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config may set (sweeps check their grid keys against this)."""
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        sub = _nested_model(field.annotation)
        if sub is not None:
            keys.extend(config_keys(sub, key + "."))
    return keys


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
