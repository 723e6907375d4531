"""Inference-noise processes, jitter, trajectory files and accuracy along a trajectory."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nora import NoraError
from nora.cli import main
from nora.config import parse_config
from nora.dynamic import PROCESSES, Jitter, evaluate_trajectory, load_trajectory, parse_trajectory, process_from_dict
from nora.dynamic.processes import BOLTZMANN_EV
from nora.noise import GaussianAdditive
from nora.train import train
from nora.train.setup import load_data


def sigmas_of(process: dict, times, seed=0):
    return process_from_dict(process).sigmas(np.asarray(times, dtype=float), seed)


def test_deterministic_processes_follow_their_formulas():
    t = [1.0, 10.0, 100.0]
    assert sigmas_of({"kind": "constant", "sigma": 0.3}, t).tolist() == [0.3, 0.3, 0.3]
    assert sigmas_of({"kind": "linear", "sigma0": 0.1, "rate": 0.01, "t0": 1}, t) == pytest.approx([0.1, 0.19, 1.09])
    assert sigmas_of({"kind": "power_law", "sigma0": 0.2, "t0": 1, "nu": 0.5}, t) == pytest.approx([0.2, 0.2 * 10**0.5, 2.0])


def test_temperature_laws():
    temps = [300.0, 330.0, 360.0]
    base = {"kind": "temperature", "temperatures": temps, "sigma_ref": 0.2, "temperature_ref": 300}
    linear = sigmas_of({**base, "law": "linear", "coefficient": 0.01}, [0, 1, 2])
    assert linear == pytest.approx([0.2, 0.26, 0.32])
    root = sigmas_of({**base, "law": "sqrt"}, [0, 1, 2])
    assert root == pytest.approx([0.2 * math.sqrt(t / 300) for t in temps])
    arrhenius = sigmas_of({**base, "law": "arrhenius", "activation_energy": 0.2}, [0, 1, 2])
    expected = [0.2 * math.exp(-(0.2 / BOLTZMANN_EV) * (1 / t - 1 / 300)) for t in temps]
    assert arrhenius == pytest.approx(expected) and arrhenius[0] == pytest.approx(0.2)
    assert np.all(np.diff(arrhenius) > 0)  # hotter is noisier for a positive activation energy


def test_random_walk_is_seeded_and_has_the_right_spread():
    times = np.arange(0.0, 20001.0)
    walk = {"kind": "random_walk", "sigma0": 0.5, "step": 0.01}
    a, b = sigmas_of(walk, times, seed=1), sigmas_of(walk, times, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, sigmas_of(walk, times, seed=2))
    assert a[0] == 0.5 and (a > 0).all()
    steps = np.diff(np.log(a))  # log space: N(0, step^2 dt), dt = 1
    assert abs(steps.std() - 0.01) < 0.01 * 5 / math.sqrt(2 * len(steps))
    linear = sigmas_of({**walk, "space": "linear", "sigma0": 0.0, "step": 0.1}, times[:100], seed=3)
    assert (linear >= 0).all() and linear.max() > 0  # reflected at zero


@pytest.mark.parametrize("distribution,spread", [("normal", 0.2), ("lognormal", 0.3), ("uniform", 0.5)])
def test_jitter_has_mean_one(distribution, spread):
    jitter = Jitter(distribution=distribution, spread=spread)
    f = jitter.factors(200_000, torch.Generator().manual_seed(0))
    assert f.shape == (200_000,) and (f >= 0).all()
    # every distribution has std <= 0.31 here: a 6-sigma bound on the mean
    assert abs(float(f.mean()) - 1) < 6 * 0.31 / math.sqrt(200_000)
    if distribution == "uniform":
        assert f.min() >= 0.5 and f.max() <= 1.5
    per_batch = Jitter(per="batch", distribution=distribution, spread=spread).factors(64, torch.Generator().manual_seed(0))
    assert per_batch.shape == (64,) and bool((per_batch == per_batch[0]).all())  # one factor per inference


def test_trajectory_time_grid_and_file(tmp_path):
    path = tmp_path / "drift.yaml"
    path.write_text(
        "time_unit: s\n"
        "times: {start: 1, stop: 1000, num: 4, spacing: log}\n"
        "process: {kind: power_law, sigma0: 0.1, t0: 1, nu: 0.2}\n"
        "jitter: {per: sample, distribution: lognormal, spread: 0.1}\n"
        "repeats: 2\n"
    )
    traj = load_trajectory(path)
    assert traj.name == "drift" and traj.repeats == 2 and traj.time_unit == "s"
    assert traj.times == pytest.approx([1, 10, 100, 1000])
    assert traj.sigmas == pytest.approx([0.1 * 10 ** (0.2 * k) for k in range(4)])
    assert "lognormal jitter per sample" in traj.describe()


BASE = {"times": [1, 2, 3], "process": {"kind": "constant", "sigma": 0.1}}


@pytest.mark.parametrize(
    "data,message",
    [
        ({**BASE, "times": [1, 3, 2]}, "bad value for 'times': times must increase strictly, but t[2]=2 follows t[1]=3"),
        ({**BASE, "times": [1, 1]}, "times must increase strictly"),
        ({**BASE, "times": []}, "needs at least one time"),
        ({"process": BASE["process"]}, "bad value for 'times': Field required"),
        ({"times": [1, 2]}, "bad value for 'process': Field required"),
        ({**BASE, "process": {"kind": "power_law", "sigma0": 0.1}}, "process: bad value for 'nu': Field required"),
        ({**BASE, "process": {"kind": "wobble"}}, "unknown process kind 'wobble'"),
        ({**BASE, "process": {"kind": "constant", "sigma": 0.1, "mu": 1}}, "process: unknown key 'mu'"),
        ({**BASE, "process": {"kind": "constant", "sigma": -0.1}}, "bad value for 'sigma'"),
        ({**BASE, "process": {"kind": "linear", "sigma0": 0.1, "rate": -0.1}}, "linear drift gives sigma -0.1 at t=2"),
        ({**BASE, "times": [0, 1], "process": {"kind": "power_law", "sigma0": 0.1, "nu": 0.1}}, "power-law drift needs times > 0"),
        ({**BASE, "process": {"kind": "temperature", "sigma_ref": 0.1, "law": "sqrt", "temperatures": [300, 310]}},
         "2 temperatures but there are 3 times"),
        ({**BASE, "process": {"kind": "temperature", "sigma_ref": 0.1, "law": "arrhenius", "temperatures": [300] * 3}},
         "temperature law 'arrhenius' needs 'activation_energy'"),
        ({**BASE, "jitter": {"distribution": "uniform", "spread": 1.5}}, "uniform jitter needs spread <= 1"),
        ({**BASE, "repeats": 0}, "bad value for 'repeats'"),
        ({**BASE, "times": {"start": 0, "stop": 5, "num": 3, "spacing": "log"}}, "log spacing needs start > 0"),
        ([1, 2, 3], "expected a mapping"),
    ],
)
def test_bad_trajectories_fail_with_one_line(data, message):
    with pytest.raises(NoraError) as info:
        parse_trajectory(data, "drift.yaml")
    text = str(info.value)
    assert text.startswith("drift.yaml") and message in text and "\n" not in text


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(NoraError, match="trajectory file not found"):
        load_trajectory(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("times: [1, 2\n")
    with pytest.raises(NoraError, match="not valid YAML"):
        load_trajectory(bad)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", [EXAMPLES / "drift.yaml", *sorted(EXAMPLES.glob("dynamic_*.yaml"))], ids=lambda p: p.name)
def test_example_trajectories_load(path):
    traj = load_trajectory(path)
    assert len(traj.times) == len(traj.sigmas) >= 2 and (traj.sigmas > 0).all()


def test_registry_holds_every_process():
    assert set(PROCESSES) >= {"constant", "linear", "power_law", "temperature", "random_walk"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = parse_config({
        "name": "dyn", "output_dir": str(tmp_path_factory.mktemp("runs")), "seed": 0,
        "data": {"dataset": "digits", "batch_size": 64, "test_subset": 200},
        "model": {"arch": "mlp", "kwargs": {"hidden": [32]}},
        "train": {"epochs": 8, "lr": 0.005, "progress": False},
    })
    result = train(config)
    _, test = load_data(config.data)
    return result, test


def _along(model, test, trajectory):
    from nora.measure import Engine
    from nora.sim import NoiseSpec

    with Engine(model, test.x, test.y, NoiseSpec(activation=GaussianAdditive(0.0)), seed=trajectory.seed,
                repeats=trajectory.repeats) as engine:
        return evaluate_trajectory(engine, trajectory)


def test_accuracy_follows_sigma_along_the_trajectory(trained):
    result, test = trained
    assert result.test_accuracy > 0.8
    traj = parse_trajectory({"times": [0, 1, 2], "process": {"kind": "linear", "sigma0": 0.0, "rate": 3.0}, "repeats": 2})
    rows = _along(result.model, test, traj)
    assert [r["sigma"] for r in rows] == [0.0, 3.0, 6.0]
    assert rows[0]["values"] == [result.test_accuracy] * 2  # sigma 0 is the clean model
    assert rows[2]["mean"] < 0.5 < rows[0]["mean"]
    assert rows == _along(result.model, test, traj)  # same seed, same numbers


def test_jitter_changes_accuracy_only_through_the_levels(trained):
    result, test = trained
    spec = {"times": [1, 2], "process": {"kind": "constant", "sigma": 1.0}, "repeats": 2, "seed": 5}
    plain = _along(result.model, test, parse_trajectory(spec))
    unit = parse_trajectory({**spec, "jitter": {"per": "sample", "distribution": "lognormal", "spread": 0.0}})
    assert _along(result.model, test, unit) == plain  # factor exactly 1
    wide = parse_trajectory({**spec, "jitter": {"per": "batch", "distribution": "uniform", "spread": 1.0}})
    assert _along(result.model, test, wide) != plain


def test_eval_dynamic_command(trained, tmp_path, capsys):
    result, _ = trained
    path = tmp_path / "temp.yaml"
    path.write_text(
        "name: heat\ntime_unit: h\ntimes: [0, 1, 2]\nrepeats: 1\n"
        "process: {kind: temperature, law: sqrt, sigma_ref: 0.5, temperatures: [300, 330, 360]}\n"
    )
    assert main(["eval", "--checkpoint", str(result.run_dir), "--dynamic", str(path)]) == 0
    out = capsys.readouterr().out
    assert "along 'heat'" in out and "time (h)" in out
    data = json.loads((result.run_dir / "eval" / "dynamic-heat.json").read_text())
    assert [r["time"] for r in data["rows"]] == [0, 1, 2] and data["rows"][0]["sigma"] == pytest.approx(0.5)
    assert (result.run_dir / "eval" / "dynamic-heat.csv").exists() and (result.run_dir / "eval" / "dynamic-heat.png").exists()


def test_eval_dynamic_bad_input(trained, tmp_path, capsys):
    result, _ = trained
    path = tmp_path / "bad.yaml"
    path.write_text("times: [3, 2]\nprocess: {kind: constant, sigma: 0.1}\n")
    assert main(["eval", "--checkpoint", str(result.run_dir), "--dynamic", str(path)]) == 2
    err = capsys.readouterr().err
    assert "times must increase strictly" in err and err.count("\n") == 1
    assert main(["eval", "--checkpoint", str(result.run_dir), "--dynamic", str(path), "--sigma", "0.1"]) == 2
    assert "either --sigma" in capsys.readouterr().err
