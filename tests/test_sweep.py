"""Training sweeps: grid expansion and checks, fingerprints, the result store, resume, failures, executors."""

from __future__ import annotations

import json

import pytest

from nora.errors import NoraError
from nora.sweep import ResultStore, expand, fingerprint, make_executor, parse_sweep, run_sweep
from nora.sweep.executors import LocalExecutor

BASE = {
    "data": {"dataset": "digits", "batch_size": 64, "train_subset": 300, "test_subset": 150},
    "model": {"arch": "mlp", "kwargs": {"hidden": [16]}},
    "train": {"epochs": 1, "lr": 0.01},
    "train_noise": {"kind": "additive", "sigma": 0.0},
}


def sweep(grid=None, seeds=(0,), **extra):
    data = {"name": "tiny", "base": BASE, "grid": grid or {"train_noise.sigma": [0.1, 0.5]}, "seeds": list(seeds),
            "evaluate": {"repeats": 2}, **extra}
    return parse_sweep(data, "test sweep")


def test_grid_expands_over_keys_and_seeds(tmp_path):
    spec, base = sweep({"train_noise.sigma": [0.1, 0.5], "model.kwargs.hidden": [[16], [8, 8]]}, seeds=(0, 1))
    points = expand(spec, base, tmp_path / "tiny")
    assert len(points) == 8
    assert len({p.id for p in points}) == 8
    first = points[0]
    assert first.values == {"train_noise.sigma": 0.1, "model.kwargs.hidden": [16], "seed": 0}
    assert first.config.train_noise.sigma == 0.1 and first.config.seed == 0
    assert first.config.model.kwargs == {"hidden": [16]}
    assert first.config.run_dir().parent == (tmp_path / "tiny" / "runs").resolve()
    assert not first.config.train.progress and first.config.train.threads == 1
    assert points[-1].values == {"train_noise.sigma": 0.5, "model.kwargs.hidden": [8, 8], "seed": 1}


@pytest.mark.parametrize("grid,message", [
    ({"train.epoch": [1]}, "grid key 'train.epoch' is not a config key"),
    ({"train_noise.sigmaa": [0.1]}, "not a config key"),
    ({"seed": [0, 1]}, "seeds: \\[...\\]"),
    ({"train_noise.sigma": []}, "non-empty list"),
    ({"name": ["a"]}, "set by the sweep itself"),
])
def test_bad_grid_keys(grid, message):
    with pytest.raises(NoraError, match=message):
        sweep(grid)


def test_bad_values_and_empty_grid_are_caught_before_running(tmp_path):
    with pytest.raises(NoraError, match="grid is empty"):
        parse_sweep({"name": "x", "base": BASE, "grid": {}})
    spec, base = sweep({"train.epochs": [1, 0]})
    with pytest.raises(NoraError, match="sweep point 0001.*train.epochs"):
        expand(spec, base, tmp_path / "x")
    with pytest.raises(NoraError, match="unknown key 'grids'"):
        parse_sweep({"name": "x", "base": BASE, "grid": {"train.lr": [0.1]}, "grids": {}})
    with pytest.raises(NoraError, match="seeds must not repeat"):
        sweep(seeds=(1, 1))


def test_fingerprint_tracks_what_is_computed():
    spec, base = sweep()
    same = fingerprint(*sweep())
    assert fingerprint(spec, base) == same
    assert fingerprint(*sweep({"train_noise.sigma": [0.1, 0.6]})) != same
    assert fingerprint(*sweep(seeds=(0, 1))) != same
    moved = dict(BASE, data={**BASE["data"], "root": "/elsewhere"})
    assert fingerprint(*parse_sweep({"name": "tiny", "base": moved, "grid": {"train_noise.sigma": [0.1, 0.5]},
                                     "evaluate": {"repeats": 2}})) == same  # where the data lie: not part of it
    assert fingerprint(*sweep(report={"x": "train_noise.sigma"})) == same


def test_store_refuses_another_sweep_or_a_foreign_folder(tmp_path):
    ResultStore.create_or_open(tmp_path / "s", "a" * 64, {}, 2)
    assert ResultStore.create_or_open(tmp_path / "s", "a" * 64, {}, 2).meta["points"] == 2
    with pytest.raises(NoraError, match="holds a different sweep"):
        ResultStore.create_or_open(tmp_path / "s", "b" * 64, {}, 2)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(NoraError, match="not a sweep folder"):
        ResultStore.create_or_open(tmp_path / "other", "a" * 64, {}, 2)


def test_killed_sweep_resumes_without_recomputing(tmp_path):
    spec, base = sweep(seeds=(0, 1))
    first = run_sweep(spec, base, engine="sequential", output_dir=str(tmp_path), limit=2)
    assert (first.ok, first.failed, first.remaining) == (2, 0, 2)
    stored = {p.name: p.stat().st_mtime_ns for p in (first.folder / "points").glob("*.json")}
    assert len(stored) == 2
    second = run_sweep(spec, base, engine="sequential", output_dir=str(tmp_path))
    assert (second.skipped, second.ok, second.remaining) == (2, 2, 0)
    for name, mtime in stored.items():
        assert (first.folder / "points" / name).stat().st_mtime_ns == mtime  # finished points untouched
    records = second.records
    assert [r["status"] for r in records] == ["ok"] * 4
    result = records[0]["result"]
    assert 0 <= result["noisy"]["mean"] <= 1 and len(result["noisy"]["values"]) == 2
    assert result["weights"]["max_abs"] >= result["weights"]["mean_abs"] > 0
    assert (tmp_path / "tiny" / "runs" / records[0]["id"] / "model.safetensors").exists()
    third = run_sweep(spec, base, engine="sequential", output_dir=str(tmp_path))
    assert (third.skipped, third.ok) == (4, 0)
    changed, changed_base = sweep({"train_noise.sigma": [0.2]})
    with pytest.raises(NoraError, match="different sweep"):
        run_sweep(changed, changed_base, engine="sequential", output_dir=str(tmp_path))


def test_a_bad_point_stops_the_sweep_before_any_point_runs(tmp_path):
    spec, base = sweep({"model.kwargs.hidden": [[16], [0]]})
    with pytest.raises(NoraError, match=r"sweep point .* cannot run .*hidden.*nothing was started"):
        run_sweep(spec, base, engine="sequential", output_dir=str(tmp_path))
    assert not list((tmp_path / spec.name).glob("points/*.json"))  # the good point did not train either
    bad_site, _ = sweep({"train_noise.sigma": [0.5], "train_noise.sites": [[1], [99]]})
    with pytest.raises(NoraError, match="site index 99 out of range"):
        run_sweep(bad_site, base, engine="sequential", output_dir=str(tmp_path / "sites"))


def test_local_pool_gives_the_same_numbers_as_sequential(tmp_path):
    spec, base = sweep(seeds=(0, 1))
    pooled = run_sweep(spec, base, engine="local", workers=2, output_dir=str(tmp_path / "pool"))
    serial = run_sweep(spec, base, engine="sequential", output_dir=str(tmp_path / "serial"))
    assert pooled.engine == "local" and pooled.ok == 4
    for a, b in zip(pooled.records, serial.records):
        assert a["id"] == b["id"]
        assert a["result"]["test_accuracy"] == b["result"]["test_accuracy"]
        assert a["result"]["noisy"]["values"] == b["result"]["noisy"]["values"]


def test_unreachable_ray_cluster_is_an_error_unless_fallback_is_asked(tmp_path):
    with pytest.raises(NoraError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        make_executor("ray", workers=1, address="127.0.0.1:1")
    warnings = []
    executor = make_executor("ray", workers=1, address="127.0.0.1:1", fallback_local=True, warn=warnings.append)
    assert isinstance(executor, LocalExecutor)
    assert "falling back to the local executor" in warnings[0]
    with pytest.raises(NoraError, match="not host:port"):
        make_executor("ray", address="nowhere")
    with pytest.raises(NoraError, match="unknown engine"):
        make_executor("dask")


@pytest.mark.ray
def test_ray_engine_runs_points_like_sequential(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        spec, base = sweep()
        on_ray = run_sweep(spec, base, engine="ray", workers=1, output_dir=str(tmp_path / "ray"))
        port = ray.get_runtime_context().gcs_address.rpartition(":")[2]
        make_executor("ray", address=f"127.0.0.1:{port}")          # the cluster this process is on
        with pytest.raises(NoraError, match="already connected"):  # another one would be ignored
            make_executor("ray", address="10.255.255.1:6379")
    finally:
        ray.shutdown()
    serial = run_sweep(spec, base, engine="sequential", output_dir=str(tmp_path / "serial"))
    assert on_ray.engine == "ray" and on_ray.ok == 2
    assert [r["result"]["noisy"]["values"] for r in on_ray.records] == \
        [r["result"]["noisy"]["values"] for r in serial.records]


def test_sweep_analysis_draws_curves_midpoints_and_heatmap(tmp_path):
    from nora.report import write_report

    spec, base = sweep({"train_noise.ratio": [0.0, 1.0], "train_noise.sigma": [0.05, 0.5, 5.0]}, seeds=(0, 1),
                       report={"x": "train_noise.sigma", "lines": "train_noise.ratio",
                               "heatmap": ["train_noise.ratio", "train_noise.sigma"]})
    spec.base["train_noise"]["kind"] = "combined"
    spec, base = parse_sweep(spec.model_dump(mode="json"), "test sweep")
    outcome = run_sweep(spec, base, engine="sequential", output_dir=str(tmp_path))
    write_report(outcome.folder)
    analysis = json.loads((outcome.folder / "analysis.json").read_text())
    assert set(analysis["curves"]) == {"ratio=0.0", "ratio=1.0"}
    assert [len(rows) for rows in analysis["curves"].values()] == [3, 3]
    assert all(row["n"] == 2 for rows in analysis["curves"].values() for row in rows)  # mean over 2 seeds
    assert len(analysis["heatmap"]["cells"]) == 2 and len(analysis["heatmap"]["cells"][0]) == 3
    for name in ("results.csv", "sweep_curves.png", "sweep_heatmap.svg", "report.md", "report.html"):
        assert (outcome.folder / name).exists(), name
    assert "![accuracy vs sigma per line](sweep_curves.png)" in (outcome.folder / "report.md").read_text()


def test_points_can_also_get_a_curve_and_a_walk(tmp_path):
    spec, base = sweep({"train_noise.sigma": [0.3]}, evaluate={
        "repeats": 1, "curve": {"sigma_range": [0.1, 10.0], "per_decade": 1},
        "walk": {"sites": "0-2", "sigma_range": [0.01, 100.0]}})
    (record,) = run_sweep(spec, base, engine="sequential", output_dir=str(tmp_path)).records
    result = record["result"]
    assert [r["sigma"] for r in result["curve"]["rows"]] == [0.1, 1.0, 10.0]
    assert [s["index"] for s in result["walk"]["sites"]] == [0, 1, 2]
    assert {s["path"] for s in result["walk"]["sites"]} == {"split"}
