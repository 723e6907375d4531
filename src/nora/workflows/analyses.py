"""The analysis workflows behind the commands: load, build the engine, measure, return a result.

Every function takes the noise specification already built (``nora.sim.NoiseSpec``), runs the one
measurement engine and returns a result object from ``nora.workflows.results``; nothing here prints
or writes files (the report writer does).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from nora.analysis.curves import accuracy_curve, chance_level, combined_grid, log_grid, mul_add_cells
from nora.analysis.robustness import SigmaDistribution, evaluate_robustness
from nora.analysis.walk import SiteWalk, walk
from nora.config import RunConfig, apply_overrides, parse_config
from nora.errors import NoraError
from nora.measure import Engine, Measurement, check_repeats
from nora.progress import Reporter
from nora.sim.spec import NoiseSpec
from nora.workflows.results import CompareResult, CurveResult, EvalResult, TrajectoryResult, WalkStudy


@dataclasses.dataclass
class Loaded:
    """A checkpoint with its saved run config and the test set it is evaluated on."""

    path: str
    model: nn.Module
    meta: dict[str, Any]
    config: RunConfig
    test: Any

    @property
    def run_dir(self) -> Path:
        p = Path(self.path)
        return p if p.is_dir() else p.parent

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": self.path, "model": self.meta.get("arch"), "dataset": self.meta.get("dataset"),
                "test_samples": len(self.test), "weights_sha256": self.meta.get("weights_sha256"),
                "epochs_done": self.meta.get("epochs_done")}


def load_checkpoint(path: str, overrides: dict[str, Any] | None = None, data: Any = None) -> Loaded:
    """The model of a run folder and its test data (the saved config with ``overrides`` applied)."""
    from nora.data import check_fits
    from nora.train.checkpoint import load_model
    from nora.train.setup import load_data

    model, meta = load_model(path)
    config = parse_config(meta.get("config") or {"data": {"dataset": meta.get("dataset", "digits")}},
                          f"{path} (saved config)")
    if overrides:
        config = apply_overrides(config, overrides, "command line")
    test = data if data is not None else load_data(config.data)[1]
    check_fits(meta.get("input_shape"), meta.get("num_classes"), test, f"checkpoint {path} vs its test data")
    return Loaded(str(path), model, meta, config, test)


def _levels(progress: Reporter | None, description: str, total: int) -> Callable[[Measurement], None] | None:
    """The engine's per-level callback that advances ``progress`` (None: no reporting)."""
    if progress is None:
        return None
    progress.start(description, total)

    def advance(measured: Measurement) -> None:
        shown = {} if measured.sigma is None else {"sigma": measured.sigma}
        progress.advance(**shown, accuracy=measured.mean)

    return advance


def _meta(loaded: Loaded, engine: Engine, spec: NoiseSpec, varied: bool = True) -> dict[str, Any]:
    """``varied``: the activation level is varied by the analysis (named without its level)."""
    return {**loaded.describe(), "noise": spec.to_dict(), "noise_description": spec.describe(level=not varied),
            "measurement": engine.describe(), "clean_accuracy": engine.clean,
            "chance": chance_level(loaded.test.num_classes), "repeats": engine.repeats}


def evaluate(loaded: Loaded, spec: NoiseSpec, sigmas: Sequence[float | None], *, repeats: int, seed: int, out: Path,
             device: str | None = None, confidence: float = 0.95, title: str = "",
             times: Sequence[float] | None = None, progress: Reporter | None = None) -> EvalResult:
    """Accuracy at each sigma (activation level of ``spec``; None: as specified), R repeats each, and
    with a hardware model at each drift time (seconds after programming; repeat r is chip r)."""
    check_repeats(repeats, "--repeats")
    if times is not None:
        from nora.analog import check_times

        times = check_times(list(times))
        if spec.hardware is None:
            raise NoraError("--times follows an analog hardware model's drift: give --analog too")
    on_measured = _levels(progress, "eval", len(times or [None]) * len(sigmas))
    with Engine(loaded.model, loaded.test.x, loaded.test.y, spec, seed=seed, repeats=repeats, device=device,
                on_measured=on_measured) as engine:
        rows = []
        for time in times or [None]:
            rows += engine.summary(list(sigmas), confidence=confidence, time=time)
        varied = any(s is not None for s in sigmas)
        meta = {**_meta(loaded, engine, spec, varied), "seed": seed}
    return EvalResult(out, rows, meta, title or spec.describe(level=not varied), confidence)


def vary(loaded: Loaded, spec: NoiseSpec, key: str, *, value_range: tuple[float, float], per_decade: float,
         repeats: int, seed: int, out: Path, device: str | None = None, title: str = "",
         progress: Reporter | None = None) -> CurveResult:
    """Accuracy against one physical parameter of the hardware model (a log grid of its values), with
    the midpoint in that parameter; every value is a fresh set of programmed chips from the same seeds."""
    from nora.analysis.curves import Curve
    from nora.analysis.midpoint import midpoint

    if spec.hardware is None or not hasattr(spec.hardware, "varied"):
        raise NoraError("--vary changes a physical parameter of an analog hardware model: give --analog too")
    grid = log_grid(*value_range, per_decade)
    models = [spec.hardware.varied(key, v) for v in grid]  # every value is checked before anything runs
    check_repeats(repeats, "--repeats")
    with Engine(loaded.model, loaded.test.x, loaded.test.y, spec, seed=seed, repeats=repeats, device=device,
                on_measured=_levels(progress, f"curve over {key}", len(grid))) as engine:
        rows = []
        for value, hardware in zip(grid, models):
            engine.spec = spec.replace(hardware=hardware)
            (row,) = engine.summary()
            rows.append({**row, "sigma": value, key: value})
        engine.spec = spec
        chance = chance_level(loaded.test.num_classes)
        meta = {**_meta(loaded, engine, spec, spec.has_activation_noise), "seed": seed, "xlabel": key, "varied": key}
    mid = midpoint(grid, [r["mean"] for r in rows], engine.clean, chance)
    curve = Curve(f"{spec.describe(level=False) if spec.has_activation_noise else 'hardware'}, {key}", rows,
                  engine.clean, chance, mid)
    return CurveResult(out, [curve], meta, title or f"{Path(loaded.path).name}: accuracy vs {key}")


def curve(loaded: Loaded, spec: NoiseSpec, *, sigma_range: tuple[float, float], per_decade: float, repeats: int,
          seed: int, out: Path, ratios: Sequence[float] | None = None, mul_add: bool = False,
          device: str | None = None, chunk_size: int = 500, title: str = "", seeds: int = 1,
          progress: Reporter | None = None) -> CurveResult:
    """Curves over a log grid (one per combined-noise ratio and noise seed), mu aggregated over the
    seeds, and the optional heat map (of the first seed)."""
    grid = log_grid(*sigma_range, per_decade)
    check_repeats(repeats, "--repeats")
    check_repeats(seeds, "--seeds")
    if seeds > 1:
        from nora.analysis.midpoint import aggregate

        runs = [curve(loaded, spec, sigma_range=sigma_range, per_decade=per_decade, repeats=repeats, seed=s,
                      out=out, ratios=ratios, mul_add=mul_add and s == seed, device=device, chunk_size=chunk_size,
                      title=title, progress=progress) for s in range(seed, seed + seeds)]
        first = runs[0]
        for run, s in zip(runs, range(seed, seed + seeds)):
            for c in run.curves:
                c.label = f"{c.label}, seed {s}"
        by_ratio = [[run.curves[i] for run in runs] for i in range(len(first.curves))]
        first.meta["over_seeds"] = [{"curve": group[0].label.rsplit(", seed", 1)[0], "seeds": list(range(seed, seed + seeds)),
                                     **{k: v for k, v in aggregate([c.midpoint for c in group]).items()}}
                                    for group in by_ratio]
        first.curves = [c for group in by_ratio for c in group]
        return first
    noise = spec.activation
    if noise is None:
        raise NoraError("a curve varies an activation noise level; the specification has none")
    combined = noise.kind == "combined"
    if not combined and (mul_add or (ratios and len(ratios) > 1)):
        raise NoraError("--ratio with several values and --mul-add are for combined noise (--noise combined)")
    ratios = list(ratios) if combined and ratios else [None]
    curves, heat, meta = [], None, {}
    levels = len(ratios) * len(grid) + (len(grid) ** 2 if mul_add else 0)
    with Engine(loaded.model, loaded.test.x, loaded.test.y, spec, seed=seed, repeats=repeats, device=device,
                chunk_size=chunk_size, on_measured=_levels(progress, f"curve, seed {seed}", levels)) as engine:
        base = engine.spec
        for ratio in ratios:
            engine.spec = base if ratio is None else base.replace(activation=dataclasses.replace(noise, ratio=ratio))
            label = engine.spec.describe(level=False)
            curves.append(accuracy_curve(loaded.model, loaded.test.x, loaded.test.y, engine.spec, grid,
                                         num_classes=loaded.test.num_classes, label=label, engine=engine))
        engine.spec = base
        if mul_add:
            cells = combined_grid(engine, mul_add_cells(grid, grid))
            heat = {"cells": cells, "row_labels": _labels(grid), "col_labels": _labels(grid), "row_title": "sigma_add",
                    "col_title": "sigma_mul", "title": "accuracy under combined noise"}
        elif len(ratios) > 1:
            heat = {"cells": [[{"amplitude": r["sigma"], "ratio": ratio, **{k: r[k] for k in ("mean", "std", "n")}}
                               for r in c.rows] for ratio, c in zip(ratios, curves)],
                    "row_labels": list(ratios), "col_labels": _labels(grid), "row_title": "ratio (additive share)",
                    "col_title": "amplitude", "title": "accuracy under combined noise"}
        meta = {**_meta(loaded, engine, spec), "seed": seed, "cost": engine.cost(),
                "xlabel": "amplitude" if combined else "sigma"}
    return CurveResult(out, curves, meta, title or f"{Path(loaded.path).name}: {spec.describe(level=False)}", heat)


def _labels(grid: list[float]) -> list[float]:
    """Grid values rounded for axis labels (the numbers themselves stay exact in curve.json)."""
    return [float(f"{s:.3g}") for s in grid]


def walk_study(checkpoints: Sequence[Loaded], spec: NoiseSpec, *, sites: Any, sigma_range: tuple[float, float],
               per_decade: float, mu_only: bool, naive: bool, repeats: int, seed: int, seeds: int, out: Path,
               device: str | None = None, chunk_size: int = 500,
               progress: Reporter | None = None) -> WalkStudy:
    """Walking Noise for every checkpoint and noise seed; per-site mu is aggregated over them."""
    from nora.analysis.curves import check_sigma_range

    lo, hi = check_sigma_range(*sigma_range)
    if mu_only and naive:
        raise NoraError("--naive measures the dense grid; it cannot be combined with --mu-only")
    check_repeats(repeats, "--repeats")
    check_repeats(seeds, "--seeds")
    grid = None if mu_only else log_grid(lo, hi, per_decade)
    runs, run_meta = [], []
    walks = len(checkpoints) * seeds
    if progress is not None:
        progress.start("walk")

    def advance(site: SiteWalk, done: int, total: int) -> None:
        if progress is not None:
            progress.total = total * walks
            shown = {} if site.midpoint is None or site.midpoint.mu is None else {"mu": site.midpoint.mu}
            progress.advance(site=site.site.name, **shown)

    for loaded in checkpoints:
        for noise_seed in range(seed, seed + seeds):
            result = walk(loaded.model, loaded.test.x, loaded.test.y, spec, num_classes=loaded.test.num_classes,
                          sites=sites, sigmas=grid, sigma_range=(lo, hi) if mu_only else None, repeats=repeats,
                          seed=noise_seed, split=not naive, device=device, chunk_size=chunk_size, progress=advance)
            if runs and [s.site.name for s in result.sites] != [s.site.name for s in runs[0].sites]:
                raise NoraError(f"{loaded.path} has other sites than {checkpoints[0].path}; walk them separately")
            runs.append(result)
            run_meta.append({"checkpoint": loaded.path, "noise_seed": noise_seed})
    first = checkpoints[0]
    meta = {**first.describe(), "checkpoints": [c.path for c in checkpoints], "noise": spec.to_dict(),
            "noise_description": spec.describe(level=False), "sigma_range": [lo, hi], "per_decade": per_decade,
            "run_meta": run_meta, "grid": f"{'dense grid' if grid else 'adaptive search'} {lo:g}..{hi:g}"}
    return WalkStudy(out, runs, meta, f"Walking Noise: {spec.describe(level=False)}")


def compare(runs: Sequence[Loaded], labels: Sequence[str], methods: Sequence[dict[str, Any]], spec: NoiseSpec,
            distribution: SigmaDistribution, sigmas: Sequence[float], *, nodes: int, repeats: int, seed: int,
            out: Path, device: str | None = None, confidence: float = 0.95,
            progress: Reporter | None = None) -> CompareResult:
    """Robustness of each run under ``distribution`` plus its accuracy over ``sigmas``."""
    check_repeats(repeats, "--repeats")
    check_repeats(nodes, "--nodes")
    from nora.data import check_fits

    for other in runs[1:]:
        check_fits(runs[0].meta.get("input_shape"), runs[0].meta.get("num_classes"), other.model,
                   f"run {other.path} vs run {runs[0].path}")
    table, curves = [], {}
    node_count = len(distribution.nodes(nodes)[0])
    for loaded, label, method in zip(runs, labels, methods):
        with Engine(loaded.model, runs[0].test.x, runs[0].test.y, spec, seed=seed, repeats=repeats, device=device,
                    on_measured=_levels(progress, f"compare {label}", node_count + len(sigmas))) as engine:
            result = evaluate_robustness(engine, distribution, nodes=nodes, confidence=confidence)
            curves[label] = engine.summary(list(sigmas), confidence=confidence)
        table.append({"label": label, "run": loaded.path, **method, **result})
    meta = {"distribution": distribution.describe(), "distribution_spec": {"kind": distribution.kind,
                                                                          "params": list(distribution.params)},
            "noise": spec.to_dict(), "noise_description": spec.describe(level=False), "seed": seed, "repeats": repeats,
            "nodes": node_count, "test_samples": len(runs[0].test), "dataset": runs[0].meta.get("dataset"),
            "chance": chance_level(runs[0].test.num_classes)}
    return CompareResult(out, table, curves, list(sigmas), meta, confidence)


def trajectory(loaded: Loaded, spec: NoiseSpec, trajectory_path: str, *, out: Path | None = None,
               device: str | None = None, confidence: float = 0.95) -> TrajectoryResult:
    """Accuracy along a noise trajectory (times, sigma process, jitter, repeats, seed from the file)."""
    from nora.dynamic import evaluate_trajectory, load_trajectory

    path = load_trajectory(trajectory_path)
    with Engine(loaded.model, loaded.test.x, loaded.test.y, spec, seed=path.seed, repeats=path.repeats,
                device=device) as engine:
        rows = evaluate_trajectory(engine, path, confidence=confidence)
        meta = {**_meta(loaded, engine, spec), "trajectory": path.describe(), "process": path.process.model_dump(),
                "jitter": path.jitter.model_dump() if path.jitter else None, "time_unit": path.time_unit,
                "seed": path.seed, "name": path.name}
    stem = out if out is not None else loaded.run_dir / "eval" / f"dynamic-{path.name}"
    return TrajectoryResult(stem, rows, meta, f"{spec.describe(level=False)} along '{path.name}'", confidence)
