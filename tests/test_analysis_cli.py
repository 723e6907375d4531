"""nora curve / walk / sweep / report: outputs on disk, readable tables, one error line for bad input."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from rich.console import Console

from nora.cli import main
from nora.config import parse_config


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from nora.train import train

    config = parse_config({"name": "mlp-digits", "output_dir": str(tmp_path_factory.mktemp("runs")),
                           "data": {"dataset": "digits", "batch_size": 64},
                           "model": {"arch": "mlp", "kwargs": {"hidden": [32, 32]}},
                           "train": {"epochs": 6, "lr": 0.003, "progress": False}})
    return train(config, console=Console(quiet=True)).run_dir


def test_curve_writes_numbers_plots_and_a_table(capsys, checkpoint):
    code, out, err = run(capsys, "curve", "--checkpoint", checkpoint, "--noise", "additive", "--sigma-range", "1e-2",
                         "1e2", "--per-decade", "2", "--repeats", "2")
    assert code == 0, err
    folder = checkpoint / "curve" / "additive"
    data = json.loads((folder / "curve.json").read_text())
    rows = data["curves"][0]["rows"]
    assert [r["sigma"] for r in rows][::4] == [0.01, 1.0, 100.0] and len(rows) == 9
    assert rows[0]["mean"] > rows[-1]["mean"] and all(r["n"] == 2 for r in rows)
    assert data["curves"][0]["midpoint"]["status"] == "fit"
    for name in ("curve.csv", "curve.png", "curve.svg"):
        assert (folder / name).stat().st_size > 200, name
    assert "midpoint noise level" in out and "chance 0.10" in out


def test_curve_combined_ratios_give_a_heatmap(capsys, checkpoint, tmp_path):
    code, _, err = run(capsys, "curve", "--checkpoint", checkpoint, "--noise", "combined", "--ratio", "0", "1",
                       "--sigma-range", "0.1", "10", "--per-decade", "1", "--repeats", "1", "--output", tmp_path / "c")
    assert code == 0, err
    data = json.loads((tmp_path / "c" / "curve.json").read_text())
    assert len(data["curves"]) == 2 and data["heatmap"]["row_labels"] == [0.0, 1.0]
    assert (tmp_path / "c" / "heatmap.png").exists() and (tmp_path / "c" / "heatmap.csv").exists()
    code, _, err = run(capsys, "curve", "--checkpoint", checkpoint, "--noise", "combined", "--mul-add",
                       "--sigma-range", "0.1", "1", "--per-decade", "1", "--repeats", "1", "--output", tmp_path / "m")
    assert code == 0, err
    heat = json.loads((tmp_path / "m" / "curve.json").read_text())["heatmap"]
    assert heat["row_title"] == "sigma_add" and len(heat["cells"]) == 2 and len(heat["cells"][0]) == 2


@pytest.mark.parametrize("argv,message", [
    (["--sigma-range", "1", "1"], "sigma range is empty or not increasing: 1 .. 1"),
    (["--sigma-range", "10", "1"], "sigma range is empty or not increasing"),
    (["--sigma-range", "0", "1"], "start above 0"),
    (["--per-decade", "0"], "points per decade"),
    (["--sites", "99"], "site index 99 out of range"),
    (["--sites", "fc9"], "unknown site 'fc9'"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--ratio", "0", "1"], "for combined noise"),
])
def test_curve_bad_input(capsys, checkpoint, tmp_path, argv, message):
    code, out, err = run(capsys, "curve", "--checkpoint", checkpoint, "--output", tmp_path / "x", *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in out + err and not (tmp_path / "x").exists()


def test_walk_mu_only_over_seeds(capsys, checkpoint, tmp_path):
    code, out, err = run(capsys, "walk", "--checkpoint", checkpoint, "--noise", "multiplicative", "--sites", "0-3",
                         "--seeds", "2", "--mu-only", "--output", tmp_path / "w")
    assert code == 0, err
    summary = list(csv.DictReader((tmp_path / "w" / "walk.csv").open()))
    assert [int(r["index"]) for r in summary] == [0, 1, 2, 3]
    assert all(r["path"] == "split" and r["n"] == "2" for r in summary)
    data = json.loads((tmp_path / "w" / "walk.json").read_text())
    assert [r["noise_seed"] for r in data["runs"]] == [0, 1] and data["runs"][0]["mode"] == "adaptive"
    assert (tmp_path / "w" / "walk_curves.png").exists()
    assert "Walking Noise" in out and "split" in out


def test_walk_dense_and_naive_agree_and_report(capsys, checkpoint, tmp_path):
    common = ["--checkpoint", checkpoint, "--sites", "2", "5", "--sigma-range", "0.1", "10", "--per-decade", "2",
              "--repeats", "2", "--chunk-size", "150"]
    assert run(capsys, "walk", *common, "--output", tmp_path / "fast")[0] == 0
    assert run(capsys, "walk", *common, "--naive", "--output", tmp_path / "naive")[0] == 0
    fast = json.loads((tmp_path / "fast" / "walk.json").read_text())["summary"]
    naive = json.loads((tmp_path / "naive" / "walk.json").read_text())["summary"]
    assert [r["mu_mean"] for r in fast] == pytest.approx([r["mu_mean"] for r in naive], rel=0.02)
    assert {r["path"] for r in naive} == {"full-forward"}
    assert run(capsys, "report", tmp_path / "fast")[0] == 0
    markdown = (tmp_path / "fast" / "report.md").read_text()
    assert "![midpoint noise level per site](walk_mu.png)" in markdown and "| index | name |" in markdown
    page = (tmp_path / "fast" / "report.html").read_text()
    # One self-contained page: the same tables, every image embedded.
    assert "<td>" in page and "walk_curves.png" not in page.split("<body>")[1].replace('alt="', "")
    assert page.count('src="data:image/png;base64,') == 2


def test_walk_and_report_bad_input(capsys, checkpoint, tmp_path):
    code, _, err = run(capsys, "walk", "--checkpoint", checkpoint, "--sites", "99", "--output", tmp_path / "w")
    assert code == 2 and "out of range" in err
    code, _, err = run(capsys, "walk", "--checkpoint", tmp_path / "nothing", "--output", tmp_path / "w")
    assert code == 2 and "no checkpoint" in err
    code, _, err = run(capsys, "walk", "--checkpoint", checkpoint, "--mu-only", "--naive", "--output", tmp_path / "w")
    assert code == 2 and "cannot be combined" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "report", tmp_path / "empty")
    assert code == 2 and "holds no nora results" in err


def _sweep_file(tmp_path, grid, name="cli-sweep"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name,
        "base": {"data": {"dataset": "digits", "train_subset": 200, "test_subset": 100},
                 "model": {"arch": "mlp", "kwargs": {"hidden": [8]}}, "train": {"epochs": 1},
                 "train_noise": {"kind": "additive"}},
        "grid": grid, "seeds": [0], "evaluate": {"repeats": 1}}))
    return path


def test_sweep_runs_resumes_and_refuses_to_mix(capsys, tmp_path):
    config = _sweep_file(tmp_path, {"train_noise.sigma": [0.1, 1.0]})
    code, out, err = run(capsys, "sweep", "--config", config, "--engine", "sequential", "--output-dir", tmp_path)
    assert code == 0, err
    assert "2 ok and 0 failed" in " ".join(out.split())
    folder = tmp_path / "cli-sweep"
    assert (folder / "report.md").exists() and len(list((folder / "points").glob("*.json"))) == 2
    code, out, _ = run(capsys, "sweep", "--config", config, "--engine", "sequential", "--output-dir", tmp_path)
    assert code == 0 and "2 were already done" in " ".join(out.split())
    other = _sweep_file(tmp_path, {"train_noise.sigma": [0.2]})
    code, _, err = run(capsys, "sweep", "--config", other, "--engine", "sequential", "--output-dir", tmp_path)
    assert code == 2 and "holds a different sweep" in err and "refusing to mix" in err
    (folder / "report.md").unlink()
    assert run(capsys, "report", folder)[0] == 0
    assert "| id | status | train_noise.sigma |" in (folder / "report.md").read_text()


@pytest.mark.parametrize("extra,message", [
    (["--engine", "ray", "--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    (["--engine", "local", "--address", "127.0.0.1:1"], "--address is for the Ray engine"),
    (["--workers", "0"], "workers must be an integer >= 1"),
])
def test_sweep_bad_engine_options(capsys, tmp_path, extra, message):
    config = _sweep_file(tmp_path, {"train_noise.sigma": [0.1]})
    code, _, err = run(capsys, "sweep", "--config", config, "--output-dir", tmp_path, *extra)
    assert code == 2 and message in err


def test_sweep_bad_configs(capsys, tmp_path):
    code, _, err = run(capsys, "sweep", "--config", _sweep_file(tmp_path, {"train.epoch": [1]}))
    assert code == 2 and "grid key 'train.epoch' is not a config key" in err
    code, _, err = run(capsys, "sweep", "--config", tmp_path / "missing.yaml")
    assert code == 2 and "sweep config file not found" in err


def test_walk_aggregates_checkpoints_with_the_same_sites_only(capsys, checkpoint, tmp_path):
    from nora.train import train

    other = train(parse_config({"name": "lenet-digits", "output_dir": str(tmp_path), "data": {"dataset": "digits"},
                                "model": {"arch": "lenet5"}, "train": {"epochs": 1, "progress": False}}),
                  console=Console(quiet=True)).run_dir
    code, _, err = run(capsys, "walk", "--checkpoint", checkpoint, other, "--mu-only", "--sites", "1",
                       "--output", tmp_path / "w")
    assert code == 2 and "has other sites" in err
    code, _, err = run(capsys, "walk", "--checkpoint", checkpoint, checkpoint, "--mu-only", "--sites", "0",
                       "--output", tmp_path / "w")
    assert code == 0, err
    assert json.loads((tmp_path / "w" / "walk.json").read_text())["summary"][0]["n"] == 2
