"""Run configuration: plain pydantic models, parsed from YAML as data and validated on load.

Unknown keys are errors (``extra="forbid"``), so a typo never silently falls back to a default.
Every CLI flag maps onto a key here; ``apply_overrides`` sets dotted keys ("train.epochs=3").
"""

from __future__ import annotations

import difflib
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
    """Fresh noise on stored Linear/Conv weights at every forward pass."""

    kind: Literal["additive", "multiplicative"] = "additive"
    sigma: float = 0.0
    relative: Literal["std", "maxabs"] | None = None
    layers: list[str] | None = None

    @field_validator("sigma")
    @classmethod
    def _sigma(cls, v: float) -> float:
        return _finite_nonneg(v, "sigma")


class SitePolicyConfig(_Strict):
    """Which module calls are sites (``nora.sim.SitePolicy``): categories in, names or types out."""

    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    batch_norm: bool = True
    extra: list[str] = Field(default_factory=list)
    types: list[str] | None = None


class NoiseConfig(_Strict):
    """The noise specification as data: activation noise and placement, weight noise, hardware."""

    kind: Literal["additive", "multiplicative", "combined"] = "additive"
    sigma: float = 0.0
    ratio: float = 0.5
    order: Literal["mul_add", "add_mul"] = "mul_add"
    normalize: bool = False
    relative: Literal["std", "maxabs"] | None = None
    sites: Any = "all"
    sigmas: list[float] | None = None
    budget: float | None = None
    repeats: int | list[int] | dict[str, int] = 1
    policy: SitePolicyConfig = Field(default_factory=SitePolicyConfig)
    weight: WeightNoiseConfig | None = None
    hardware: dict[str, Any] | None = None
    calibration_samples: int = Field(4000, ge=1)
    #: exact (fresh draws) or fast (a pre-drawn Gaussian bank); unset: fast in training, exact in evaluation.
    mode: Literal["exact", "fast"] | None = None

    @field_validator("repeats")
    @classmethod
    def _repeats(cls, v: Any) -> Any:
        values = v.values() if isinstance(v, dict) else (v if isinstance(v, list) else [v])
        for r in values:
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ValueError(f"repeats must be integers >= 1, got {r!r}")
        return v

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

    def is_active(self) -> bool:
        """Whether this section asks for any noise at all."""
        return (self.sigma > 0 or bool(self.sigmas) or (self.weight is not None and self.weight.sigma > 0)
                or self.hardware is not None)


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
    # A user's own data (dataset: arrays | folder); they must stay unset for the built-in sets.
    path: str | None = None                  # arrays: .npz file or folder of .npy; folder: image root
    test_path: str | None = None             # a separate test file/folder (same layout as path)
    test_fraction: float | None = Field(None, gt=0, lt=1)   # held out per class without a test split (0.2)
    split_seed: int | None = Field(None, ge=0)              # which samples are held out (default 0)
    image_size: int | tuple[int, int] | None = None         # folder: resize to (height, width); None keeps it
    channels: Literal[1, 3, 4] | None = None                # folder: None = 1 if every image is grey, else 3
    layout: Literal["auto", "nchw", "nhwc", "keep"] | None = None          # arrays: how x's axes read
    normalize: Literal["auto", "channel", "global", "none"] | None = None  # own data (auto: per-channel train stats)
    x_key: str | None = None                 # arrays: name of the inputs (default "x")
    y_key: str | None = None                 # arrays: name of the labels (default "y")
    class_names: list[str] | None = None     # arrays: fixes the class count and order


class ModelConfig(_Strict):
    arch: str = "lenet5"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    #: A run folder whose weights initialise this model (fine-tuning; missing keys stay as built).
    init_from: str | None = None


class ObjectiveConfig(_Strict):
    """The training objective (``nora.train.objectives``) and its options."""

    name: str = "cross_entropy"
    options: dict[str, Any] = Field(default_factory=dict)


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
    #: Epochs at which the cosine learning rate restarts from ``lr`` (warm restarts); ``nora train
    #: --extend`` adds one where the earlier training ended, so its epochs keep their rates.
    lr_restarts: list[int] = Field(default_factory=list)
    clamp_weights: tuple[float, float] | None = None
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    device: str = "cpu"
    noise_schedule: ScheduleConfig | None = None
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)

    @model_validator(mode="after")
    def _clamp(self) -> "TrainConfig":
        if self.clamp_weights is not None and not self.clamp_weights[0] < self.clamp_weights[1]:
            raise ValueError(f"clamp_weights needs low < high, got {list(self.clamp_weights)}")
        return self

    @model_validator(mode="after")
    def _restarts(self) -> "TrainConfig":
        points = self.lr_restarts
        if any(not 0 < e < self.epochs for e in points) or points != sorted(set(points)):
            raise ValueError(f"lr_restarts must increase strictly inside 1..{self.epochs - 1}, got {points}")
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
        # A user factory ("pkg.mod:Net", "path/file.py:Net") names the run by the factory only.
        return f"{self.data.dataset}-{self.model.arch.rsplit(':', 1)[-1]}"

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name()


#: Keys that change how a run is executed, not what it computes.
EXECUTION_KEYS = {("train", "progress"), ("train", "threads"), ("train", "device"), ("data", "root"),
                  ("data", "cache_dir"), ("data", "download")}


def config_identity(config: RunConfig) -> dict[str, Any]:
    """The config without execution keys or its place (name, output_dir): two runs with equal
    identities compute the same numbers."""
    data = config.model_dump(mode="json")
    data.pop("name", None)
    data.pop("output_dir", None)
    for section, key in EXECUTION_KEYS:
        data.get(section, {}).pop(key, None)
    return data


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dumps."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """The first problem of a pydantic error as one line naming the key.

    An unknown key is named before a missing one: a typo (``nuu``) makes both, and the typo is the
    cause; the missing keys beside it are offered as the likely intent."""
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown[0] if unknown else errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "<top level>"
    if first["type"] == "extra_forbidden":
        parent, typo = first["loc"][:-1], str(first["loc"][-1])
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == parent]
        close = difflib.get_close_matches(typo, missing, n=1, cutoff=0.5)
        if not close and model is not None:
            close = difflib.get_close_matches(where, config_keys(model), n=1, cutoff=0.75)
        hint = f" (did you mean '{close[0]}'?)" if close else (
            " (`nora config keys` lists them)" if model is RunConfig else "")
        return f"{source}: unknown key '{where}'{hint}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: bad value for '{where}': {message}"


def validate_mapping(model: type[ModelT], data: Any, source: str) -> ModelT:
    """Validate parsed YAML against a pydantic model; every problem becomes one NoraError line."""
    if not isinstance(data, dict):
        raise NoraError(f"{source}: expected a mapping of keys at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise NoraError(format_validation_error(exc, source, model)) from None


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
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise NoraError(f"{path}: not valid YAML{where} ({problem})") from None


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
                raise NoraError(_unknown_key(dotted, source))
            if node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict):
            raise NoraError(_unknown_key(dotted, source))
        node[parts[-1]] = value
    return parse_config(data, source)


def _unknown_key(dotted: str, source: str) -> str:
    close = difflib.get_close_matches(dotted, config_keys(), n=1, cutoff=0.75)
    hint = f" (did you mean '{close[0]}'?)" if close else " (`nora config keys` lists them)"
    return f"{source}: unknown key '{dotted}'{hint}"


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
