"""Sigma distributions, their quadrature, the robustness metric and ``nora compare``."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from nora import NoraError
from nora.analysis.robustness import (
    SigmaDistribution,
    accuracy_matrix,
    evaluate_robustness,
    parse_sigma_dist,
    robustness_from_rows,
)
from nora.cli import main
from nora.config import parse_config
from nora.noise import GaussianAdditive
from nora.train import train
from nora.train.setup import load_data


def expectation(dist: SigmaDistribution, fn, n=16) -> float:
    sigmas, weights = dist.nodes(n)
    assert weights.sum() == pytest.approx(1.0) and np.all(np.diff(sigmas) > 0)
    return float(np.sum(weights * fn(sigmas)))


def test_lognormal_is_parametrised_by_the_mean_and_std_of_sigma():
    dist = parse_sigma_dist("lognormal:1.5,0.3")
    sigmas, _ = dist.nodes(16)
    v = math.log1p((0.3 / 1.5) ** 2)
    # the nodes are the (i + 0.5)/16 quantiles of that lognormal
    assert sigmas == pytest.approx(stats.lognorm.ppf((np.arange(16) + 0.5) / 16, math.sqrt(v), scale=1.5 / math.sqrt(1 + 0.04)))
    assert expectation(dist, lambda s: s) == pytest.approx(1.5, rel=2e-3)
    assert math.sqrt(expectation(dist, lambda s: (s - 1.5) ** 2)) == pytest.approx(0.3, rel=0.06)
    # a smooth sigmoid accuracy curve: 16 nodes agree with a 4000-node reference to 1e-3
    def curve(s):
        return 0.1 + 0.8 / (1 + (s / 1.4) ** 4)

    assert expectation(dist, curve, 16) == pytest.approx(expectation(dist, curve, 4000), abs=1e-3)


def test_uniform_quadrature_is_exact_for_linear_accuracy():
    dist = parse_sigma_dist("uniform:0.2,0.6")
    assert expectation(dist, lambda s: 1 - s) == pytest.approx(1 - 0.4, abs=1e-12)
    assert dist.mean() == 0.4


def test_normal_is_clipped_at_zero():
    dist = parse_sigma_dist("normal:0.1,0.2")
    sigmas, weights = dist.nodes(16)
    assert sigmas[0] == 0.0
    # the node at 0 carries every node whose quantile is negative: P(N(0.1, 0.2^2) < 0) = 0.31 -> 5 of 16
    assert weights[0] == pytest.approx(5 / 16)
    assert expectation(dist, lambda s: s, 400) == pytest.approx(dist.mean(), rel=1e-3)


def test_grid_weights_equally_and_merges_repeats():
    sigmas, weights = parse_sigma_dist("grid:0.3,0.1,0.3").nodes()
    assert sigmas.tolist() == [0.1, 0.3] and weights == pytest.approx([1 / 3, 2 / 3])
    assert parse_sigma_dist("lognormal:0.5,0").nodes()[0].tolist() == [0.5]


@pytest.mark.parametrize(
    "text,message",
    [
        ("lognormal:0,0.1", "lognormal needs mean m > 0"),
        ("lognormal:1", "takes two parameters"),
        ("normal:1,-1", "normal needs std s >= 0"),
        ("uniform:0.5,0.1", "uniform needs 0 <= a <= b"),
        ("grid:0.1,-0.2", "grid sigmas must be >= 0"),
        ("grid:0.1,x", "parameters must be numbers"),
        ("gamma:1,2", "use one of lognormal:m,s"),
        ("0.1,0.2", "use one of"),
        ("normal:nan,1", "must be finite"),
    ],
)
def test_bad_distributions(text, message):
    with pytest.raises(NoraError, match=message):
        parse_sigma_dist(text)


def test_robustness_from_rows_is_weighted_mean_over_clean():
    rows = [{"sigma": 0.1, "values": [0.9, 0.8]}, {"sigma": 0.5, "values": [0.5, 0.6]}]
    result = robustness_from_rows(rows, [0.25, 0.75], clean=0.95)
    per_repeat = [0.25 * 0.9 + 0.75 * 0.5, 0.25 * 0.8 + 0.75 * 0.6]
    assert result["mean_accuracy"] == pytest.approx(np.mean(per_repeat))
    assert result["robustness"] == pytest.approx(np.mean(per_repeat) / 0.95)
    assert result["robustness_ci"][0] < result["robustness"] < result["robustness_ci"][1]
    with pytest.raises(NoraError, match="clean accuracy is 0"):
        robustness_from_rows(rows, [0.5, 0.5], clean=0.0)


def test_matrix_needs_a_common_grid():
    a = [{"sigma": 0.1, "mean": 0.9}, {"sigma": 0.3, "mean": 0.7}]
    assert accuracy_matrix([a, a]) == [[0.9, 0.7], [0.9, 0.7]]
    with pytest.raises(NoraError, match="same sigma grid"):
        accuracy_matrix([a, a[:1]])


def _config(tmp_path, name, schedule=None, sigma=None):
    return parse_config({
        "name": name, "output_dir": str(tmp_path), "seed": 0,
        "data": {"dataset": "digits", "batch_size": 64, "test_subset": 150},
        "model": {"arch": "mlp", "kwargs": {"hidden": [32]}},
        "train": {"epochs": 6, "lr": 0.005, "progress": False, "noise_schedule": schedule},
        "train_noise": {"kind": "additive", "sigma": sigma} if sigma else None,
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    nt = train(_config(root, "nt", sigma=0.5))
    vant = train(_config(root, "vant", {"name": "vant", "warmup_epochs": 1}, sigma=0.5))
    return root, nt, vant


def test_robustness_of_a_trained_model(runs):
    _, nt, _ = runs
    from nora.measure import Engine
    from nora.sim import NoiseSpec

    _, test = load_data(_config(runs[0], "nt", sigma=0.5).data)
    with Engine(nt.model, test.x, test.y, NoiseSpec(activation=GaussianAdditive(0.0)), repeats=2) as engine:
        at_zero = evaluate_robustness(engine, parse_sigma_dist("grid:0"))
        loud = evaluate_robustness(engine, parse_sigma_dist("lognormal:20,2"), nodes=4)
    assert at_zero["robustness"] == 1.0 and at_zero["mean_accuracy"] == at_zero["clean_accuracy"] == nt.test_accuracy
    assert loud["robustness"] < 0.5 and len(loud["nodes"]) == 4
    assert sum(r["weight"] for r in loud["nodes"]) == pytest.approx(1.0)


def test_compare_command_writes_table_matrix_and_plots(runs, tmp_path, capsys):
    _, nt, vant = runs
    out = tmp_path / "cmp"
    code = main(["compare", str(nt.run_dir), str(vant.run_dir), "--sigma-dist", "lognormal:0.5,0.2", "--nodes", "3",
                 "--repeats", "1", "--sigma", "0.1", "0.5", "1.5", "--output", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "robustness" in text and "NT 0.5" in text and "VANT 0.5" in text
    table = json.loads((out / "robustness.json").read_text())
    assert [(r["label"], r["method"]) for r in table["rows"]] == [("NT 0.5", "NT"), ("VANT 0.5", "VANT")]
    for row in table["rows"]:
        assert row["robustness"] == pytest.approx(row["mean_accuracy"] / row["clean_accuracy"])
    matrix = json.loads((out / "matrix.json").read_text())
    assert matrix["sigmas"] == [0.1, 0.5, 1.5] and len(matrix["rows"]) == 2
    for name in ("robustness.csv", "matrix.csv", "matrix.png", "accuracy.png"):
        assert (out / name).exists()


def test_compare_bad_input(runs, capsys):
    _, nt, vant = runs
    assert main(["compare", str(nt.run_dir), "--sigma-dist", "lognormal:-1,0.2"]) == 2
    assert "lognormal needs mean m > 0" in capsys.readouterr().err
    assert main(["compare", str(nt.run_dir), str(vant.run_dir), "--sigma-dist", "grid:0.1", "--labels", "one"]) == 2
    assert "--labels gives 1 names for 2 runs" in capsys.readouterr().err
    assert main(["compare", str(nt.run_dir), "--sigma-dist", "grid:0.1", "--sigma", "-1"]) == 2
    assert "sigma must be a finite number >= 0" in capsys.readouterr().err
