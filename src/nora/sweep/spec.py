"""Sweep configs: a base run config, a grid over any of its keys, seeds, and what to evaluate.

A sweep file is YAML (read with ``safe_load``)::

    name: walk-train-lenet5
    output_dir: runs
    base: {data: {dataset: digits}, model: {arch: lenet5}, train: {epochs: 5}}   # or a path to a run config
    grid:
      train_noise.sites: [1, 4, 7]
      train_noise.sigma: [0.1, 0.3, 1.0]
    seeds: [0, 1, 2]
    evaluate: {repeats: 5, at_train_noise: true}

Grid keys are checked against ``nora.config.config_keys()`` (plus free keys under a mapping such as
``model.kwargs.batch_norm``), and every point's config is validated before anything runs. The
fingerprint hashes everything that changes results (not where the data lie, not how a report is
drawn), so a results folder can refuse a different sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nora.config import (
    config_identity,
    NoiseConfig,
    RunConfig,
    apply_overrides,
    config_keys,
    load_config,
    parse_config,
    read_yaml,
    validate_mapping,
)
from nora.errors import NoraError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CurveSpec(_Strict):
    """A global accuracy-vs-sigma curve of each trained network (and its mu)."""

    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    sigma_range: tuple[float, float] = (1e-2, 1e2)
    per_decade: float = Field(4, ge=1)


class WalkSpec(_Strict):
    """An inference-only walk of each trained network: mu per site by adaptive search."""

    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    sites: Any = "all"
    sigma_range: tuple[float, float] = (1e-2, 1e2)


class EvaluateSpec(_Strict):
    repeats: int = Field(5, ge=1)
    #: Accuracy with the point's own training noise switched on at test time.
    at_train_noise: bool = True
    curve: CurveSpec | None = None
    walk: WalkSpec | None = None
    #: Weight statistics (max |w|, mean |w|) per layer: weights grow under additive noisy training.
    weights: bool = True


class ReportSpec(_Strict):
    x: str | None = None
    lines: list[str] | str | None = None
    heatmap: list[str] | None = None
    metric: str | None = None


class SweepSpec(_Strict):
    name: str
    output_dir: str = "runs"
    base: dict[str, Any] | str = Field(default_factory=dict)
    grid: dict[str, list[Any]]
    seeds: list[int] = Field(default_factory=lambda: [0])
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    report: ReportSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip() or "/" in v or v.strip() in (".", ".."):
            raise ValueError(f"name must be a plain folder name, got {v!r}")
        return v.strip()

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("seeds must list at least one seed")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must not repeat, got {v}")
        return v


@dataclasses.dataclass(frozen=True)
class Point:
    """One training run of the sweep: its grid values (seed included) and its full run config."""

    index: int
    id: str
    values: dict[str, Any]
    config: RunConfig


def parse_sweep(data: Any, source: str = "sweep config", base_dir: Path | None = None) -> tuple[SweepSpec, RunConfig]:
    """Validate a sweep mapping; returns the spec and its base run config."""
    spec = validate_mapping(SweepSpec, data, source)
    if isinstance(spec.base, str):
        path = Path(spec.base)
        base = load_config(path if path.is_absolute() or base_dir is None else base_dir / path)
    else:
        base = parse_config(spec.base, f"{source} (base)")
    check_grid_keys(spec.grid, base, source)
    return spec, base


def load_sweep(path: str | Path) -> tuple[SweepSpec, RunConfig]:
    path = Path(path)
    data = read_yaml(path, "sweep config")
    return parse_sweep(data, str(path), path.parent)


def _free_mapping_keys(base: RunConfig) -> list[str]:
    """Keys whose value is a free-form mapping (model.kwargs): any sub-key may be swept."""
    keys = set(config_keys())
    data = base.model_dump(mode="json")
    free = []
    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and not any(k.startswith(key + ".") for k in keys):
            free.append(key)
    return free


def check_grid_keys(grid: dict[str, list[Any]], base: RunConfig, source: str) -> None:
    if not grid:
        raise NoraError(f"{source}: the grid is empty; give at least one key with a list of values")
    keys = set(config_keys())
    free = _free_mapping_keys(base)
    for key, values in grid.items():
        if key == "seed":
            raise NoraError(f"{source}: sweep seeds with 'seeds: [...]', not as a grid key")
        if key not in keys and not any(key.startswith(f + ".") and len(key) > len(f) + 1 for f in free):
            close = [k for k in sorted(keys) if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else " (see nora.config.config_keys())"
            raise NoraError(f"{source}: grid key '{key}' is not a config key{hint}")
        if key in ("name", "output_dir"):
            raise NoraError(f"{source}: grid key '{key}' is set by the sweep itself")
        if not isinstance(values, list) or not values:
            raise NoraError(f"{source}: grid key '{key}' needs a non-empty list of values")


def _slug(value: Any) -> str:
    text = "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def point_name(index: int, values: dict[str, Any]) -> str:
    parts = "_".join(f"{k.rsplit('.', 1)[-1]}{_slug(v)}" for k, v in values.items())
    return f"{index:04d}_{parts}"[:96]


def expand(spec: SweepSpec, base: RunConfig, sweep_dir: Path, data_root: str | None = None) -> list[Point]:
    """Every (grid values, seed) point as a validated run config under ``sweep_dir/runs``."""
    keys = list(spec.grid)
    runs_dir = str(Path(sweep_dir).resolve() / "runs")
    points = []
    for index, (combo, seed) in enumerate(itertools.product(itertools.product(*spec.grid.values()), spec.seeds)):
        values = {**dict(zip(keys, combo)), "seed": seed}
        name = point_name(index, values)
        overrides = {**values, "name": name, "output_dir": runs_dir, "train.progress": False, "train.threads": 1}
        if data_root is not None:
            overrides["data.root"] = data_root
        config = apply_overrides(base, overrides, f"sweep point {name}")
        # Workers may run elsewhere (a Ray worker's working directory): data paths become absolute.
        absolute = {f"data.{k}": str(Path(v).resolve()) for k in ("root", "cache_dir")
                    if (v := getattr(config.data, k)) and not Path(v).is_absolute()}
        if absolute:
            config = apply_overrides(config, absolute, f"sweep point {name}")
        points.append(Point(index, name, values, config))
    return points


def fingerprint(spec: SweepSpec, base: RunConfig) -> str:
    """A hash of what the sweep computes: base config (without execution keys), grid, seeds, evaluation."""
    identity = {"base": config_identity(base), "grid": spec.grid, "seeds": spec.seeds,
                "evaluate": spec.evaluate.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
