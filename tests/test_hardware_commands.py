"""Hardware models through the ordinary commands: --analog, --times, --vary on the one engine."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from nora.cli import main
from nora.config import parse_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from nora.train import train

    config = parse_config({"name": "hw-mlp", "output_dir": str(tmp_path_factory.mktemp("runs")),
                           "data": {"dataset": "digits", "batch_size": 64, "test_subset": 200},
                           "model": {"arch": "mlp", "kwargs": {"hidden": [32]}},
                           "train": {"epochs": 4, "lr": 0.005, "progress": False}})
    return train(config, console=Console(quiet=True)).run_dir


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def test_eval_follows_pcm_drift_with_one_chip_per_repeat(capsys, run_dir, tmp_path):
    code, out, err = _run(capsys, "eval", "--checkpoint", run_dir, "--analog", "pcm", "--times", "1", "86400",
                          "31536000", "--repeats", "2", "--output", tmp_path / "drift")
    assert code == 0, err
    data = json.loads((tmp_path / "drift.json").read_text())
    assert [r["time_s"] for r in data["rows"]] == [1.0, 86400.0, 31536000.0]
    assert data["noise"]["hardware"]["kind"] == "tile" and "time (s)" in out
    again = _run(capsys, "eval", "--checkpoint", run_dir, "--analog", "pcm", "--times", "1", "--repeats", "2",
                 "--output", tmp_path / "again")
    assert again[0] == 0
    # The same seed programs the same chips: the first time point is reproduced exactly.
    assert json.loads((tmp_path / "again.json").read_text())["rows"][0]["values"] == data["rows"][0]["values"]


def test_curve_varies_a_physical_parameter(capsys, run_dir, tmp_path):
    code, _, err = _run(capsys, "curve", "--checkpoint", run_dir, "--analog", "pcm", "--vary", "forward.out_noise",
                        "0.01", "10", "--per-decade", "1", "--repeats", "2", "--output", tmp_path / "v")
    assert code == 0, err
    data = json.loads((tmp_path / "v" / "curve.json").read_text())
    rows = data["curves"][0]["rows"]
    assert [r["sigma"] for r in rows] == [0.01, 0.1, 1.0, 10.0] and data["xlabel"] == "forward.out_noise"
    assert rows[0]["mean"] > rows[-1]["mean"]


@pytest.mark.parametrize("argv,message", [
    (["--times", "1", "10"], "--times follows an analog hardware model"),
    (["--analog", "pcm", "--times", "10", "1"], "increasing"),
    (["--analog", "pcm9"], "unknown analog preset 'pcm9'"),
])
def test_bad_hardware_requests_are_one_line(capsys, run_dir, tmp_path, argv, message):
    code, _, err = _run(capsys, "eval", "--checkpoint", run_dir, "--sigma", "0", *argv, "--output", tmp_path / "x")
    assert code == 2 and err.startswith("error:") and message in err
    assert not (tmp_path / "x.json").exists()


def test_curve_vary_needs_a_hardware_model_and_a_known_key(capsys, run_dir, tmp_path):
    code, _, err = _run(capsys, "curve", "--checkpoint", run_dir, "--vary", "forward.out_noise", "0.01", "1",
                        "--output", tmp_path / "x")
    assert code == 2 and "give --analog too" in err
    code, _, err = _run(capsys, "curve", "--checkpoint", run_dir, "--analog", "pcm", "--vary", "forward.nope", "0.01",
                        "1", "--output", tmp_path / "x")
    assert code == 2 and "nope" in err
