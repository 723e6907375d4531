"""Trajectory files: the times at which a model is evaluated and the noise process that sets sigma.

A trajectory is YAML (read with ``safe_load``)::

    name: pcm-drift              # optional; names the output files
    time_unit: s                 # optional; only labels the plots
    times: [1, 10, 100, 1000]    # strictly increasing, or {start, stop, num, spacing: linear|log}
    process: {kind: power_law, sigma0: 0.2, t0: 1, nu: 0.1}
    jitter: {per: sample, distribution: lognormal, spread: 0.2}   # optional
    repeats: 3                   # independent noise draws per time point
    seed: 0                      # seeds the activation noise, the jitter and random walks

Every field is validated on load, so a bad file fails with one line naming the field.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from nora.config import read_yaml, validate_mapping
from nora.dynamic.processes import (
    Finite,
    Jitter,
    SigmaProcess,
    StrictModel,
    process_from_dict,
)
from nora.errors import NoraError


class TimeGrid(StrictModel):
    start: Finite
    stop: Finite
    num: int = Field(ge=2)
    spacing: Literal["linear", "log"] = "linear"

    @model_validator(mode="after")
    def _ordered(self) -> "TimeGrid":
        if not self.start < self.stop:
            raise ValueError(f"start must be below stop, got start={self.start}, stop={self.stop}")
        if self.spacing == "log" and self.start <= 0:
            raise ValueError(f"log spacing needs start > 0, got {self.start}")
        return self

    def values(self) -> list[float]:
        if self.spacing == "log":
            return np.geomspace(self.start, self.stop, self.num).tolist()
        return np.linspace(self.start, self.stop, self.num).tolist()


# A list of times, or a grid given as a mapping; the tag keeps errors about one form only.
Times = Annotated[
    Annotated[list[Finite], Tag("list")] | Annotated[TimeGrid, Tag("grid")],
    Discriminator(lambda v: "grid" if isinstance(v, (dict, TimeGrid)) else "list"),
]


class TrajectorySpec(StrictModel):
    name: str | None = None
    time_unit: str = ""
    times: Times
    process: dict[str, Any]
    jitter: Jitter | None = None
    repeats: int = Field(3, ge=1)
    seed: int = 0

    @field_validator("times")
    @classmethod
    def _monotone(cls, v: list[float] | TimeGrid) -> list[float] | TimeGrid:
        if isinstance(v, TimeGrid):
            return v
        if not v:
            raise ValueError("needs at least one time")
        for i in range(1, len(v)):
            if not v[i] > v[i - 1]:
                raise ValueError(f"times must increase strictly, but t[{i}]={v[i]:g} follows t[{i - 1}]={v[i - 1]:g}")
        return v


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """A validated trajectory: times, the nominal sigma at each time, and how inferences jitter."""

    name: str
    times: np.ndarray
    sigmas: np.ndarray
    process: SigmaProcess
    jitter: Jitter | None = None
    repeats: int = 3
    seed: int = 0
    time_unit: str = ""

    def describe(self) -> str:
        jitter = f" with {self.jitter.summary()}" if self.jitter else ""
        return f"{self.process.summary()}{jitter}, {len(self.times)} times, {self.repeats} repeats, seed {self.seed}"


def parse_trajectory(data: Any, source: str = "trajectory") -> Trajectory:
    spec = validate_mapping(TrajectorySpec, data, source)
    process = process_from_dict(spec.process, f"{source}: process")
    times = np.asarray(spec.times.values() if isinstance(spec.times, TimeGrid) else spec.times, dtype=float)
    try:
        sigmas = process.sigmas(times, spec.seed)
    except NoraError as exc:
        raise NoraError(f"{source}: {exc}") from None
    name = spec.name or (Path(source).stem if source.endswith((".yaml", ".yml")) else process.kind)
    return Trajectory(name, times, np.asarray(sigmas, dtype=float), process, spec.jitter, spec.repeats, spec.seed, spec.time_unit)


def load_trajectory(path: str | Path) -> Trajectory:
    path = Path(path)
    data = read_yaml(path, "trajectory")
    return parse_trajectory(data, str(path))
