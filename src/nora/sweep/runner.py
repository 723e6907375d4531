"""Run a sweep: expand the grid, skip finished points, run the rest on an executor, store each at once."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from nora.errors import NoraError
from nora.sweep.executors import LocalExecutor, SequentialExecutor
from nora.sweep.point import task_for
from nora.sweep.spec import SweepSpec, expand, fingerprint
from nora.sweep.store import ResultStore

ENGINES = ("local", "ray", "sequential")


@dataclasses.dataclass
class SweepOutcome:
    folder: Path
    total: int
    skipped: int
    remaining: int
    ok: int
    failed: int
    engine: str
    seconds: float
    startup_seconds: float
    records: list[dict[str, Any]]


def make_executor(engine: str, workers: int | None = None, address: str | None = None,
                  fallback_local: bool = False, warn: Callable[[str], None] = print):
    """The executor for ``engine``; an unreachable Ray cluster is an error unless ``fallback_local``."""
    if engine == "sequential":
        return SequentialExecutor()
    if engine == "local":
        if address:
            raise NoraError("--address is for the Ray engine (--engine ray)")
        return LocalExecutor(workers)
    if engine == "ray":
        from nora.sweep.ray_executor import RayExecutor

        try:
            return RayExecutor(workers, address)
        except NoraError as exc:
            if not fallback_local:
                raise
            warn(f"{exc}; falling back to the local executor (--fallback-local)")
            return LocalExecutor(workers)
    raise NoraError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def validate_points(points) -> None:
    """Build every point's run (data, model, noise on it, schedule, objective) before any trains, so a
    bad point stops the sweep at once instead of failing after the good ones have run."""
    import json

    from rich.console import Console

    from nora.train.setup import load_data
    from nora.train.trainer import prepare

    data: dict[str, Any] = {}
    for point in points:
        key = json.dumps(point.config.data.model_dump(mode="json"), sort_keys=True)
        try:
            if key not in data:
                data[key] = load_data(point.config.data)
            prepare(point.config, Console(quiet=True), data[key])
        except NoraError as exc:
            raise NoraError(f"sweep point {point.id} cannot run ({exc}); nothing was started") from None


def sweep_folder(spec: SweepSpec, output_dir: str | None = None) -> Path:
    return Path(output_dir or spec.output_dir) / spec.name


def run_sweep(spec: SweepSpec, base, *, engine: str = "local", workers: int | None = None,
              address: str | None = None, fallback_local: bool = False, output_dir: str | None = None,
              data_root: str | None = None, on_record: Callable[[dict[str, Any], int, int], None] | None = None,
              warn: Callable[[str], None] = print, limit: int | None = None) -> SweepOutcome:
    """Run every point of the sweep that has not finished yet; ``limit`` runs at most that many."""
    folder = sweep_folder(spec, output_dir)
    points = expand(spec, base, folder, data_root)
    store = ResultStore.create_or_open(folder, fingerprint(spec, base), spec.model_dump(mode="json"), len(points))
    finished = store.finished()
    unfinished = [p for p in points if p.id not in finished]
    validate_points(unfinished)
    todo = unfinished if limit is None else unfinished[:limit]
    started = time.perf_counter()
    executor = make_executor(engine, workers, address, fallback_local, warn) if todo else SequentialExecutor()
    counts = {"ok": 0, "failed": 0}

    def done(record: dict[str, Any]) -> None:
        store.record(record)
        counts[record["status"]] = counts.get(record["status"], 0) + 1
        if on_record is not None:
            on_record(record, counts["ok"] + counts["failed"], len(todo))

    try:
        executor.run([task_for(p, spec.evaluate) for p in todo], done)
    finally:
        executor.close()
    return SweepOutcome(folder, len(points), len(points) - len(unfinished), len(unfinished) - counts["ok"],
                        counts["ok"], counts["failed"], executor.name if todo else engine,
                        time.perf_counter() - started, getattr(executor, "startup_seconds", 0.0), store.records())
