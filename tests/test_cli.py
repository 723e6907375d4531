"""The command line: happy paths and one clear error line (exit 2) for each kind of bad input."""

import hashlib
import json

import pytest

from nora.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["demo", "--epochs", "4", "--output-dir", str(root)]) == 0
    return root / "demo-digits-lenet5"


def test_demo_writes_tables_and_plots(trained_run):
    for kind in ("additive", "multiplicative"):
        data = json.loads((trained_run / "eval" / f"{kind}.json").read_text())
        assert [r["sigma"] for r in data["rows"]] == [0.03, 0.1, 0.3, 1.0, 3.0]
        assert data["rows"][0]["mean"] > data["rows"][-1]["mean"]
        assert (trained_run / "eval" / f"{kind}.png").stat().st_size > 1000
        assert (trained_run / "eval" / f"{kind}.csv").read_text().startswith("sigma,")


def test_sites_lists_every_site(capsys):
    code, out, _ = run(capsys, "sites", "--model", "lenet5", "--json")
    assert code == 0
    sites = json.loads(out)
    assert len(sites) == 12 and sites[0]["name"] == "input" and sites[1]["module_type"] == "Conv2d"
    code, out, _ = run(capsys, "sites", "--model", "mlp", "--kwarg", "batch_norm=true", "--json")
    assert len(json.loads(out)) == 11


def test_a_kernel_build_notice_reaches_stderr_once(capsys):
    """nora's notices (a kernel being built takes a minute) are shown on stderr, not lost; running
    the command twice in one process does not print them twice."""
    import logging

    run(capsys, "sites", "--model", "mlp", "--json")
    code, out, _ = run(capsys, "sites", "--model", "mlp", "--json")
    assert code == 0 and json.loads(out)
    logging.getLogger("nora.compiled").info("building nora's %s (once per machine; about a minute)", "test kernel")
    err = capsys.readouterr().err
    assert err.count("building nora's test kernel") == 1


def test_eval_reports_mean_std_ci(capsys, trained_run, tmp_path):
    code, out, _ = run(capsys, "eval", "--checkpoint", str(trained_run), "--noise", "additive",
                       "--sigma", "0.1", "1.0", "--repeats", "3", "--sites", "0-3", "--output", str(tmp_path / "e"))
    assert code == 0, out
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [3, 3]
    assert all(r["ci_low"] <= r["mean"] <= r["ci_high"] for r in rows)
    assert "95% CI" in out


def _digest(folder):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sigma", "-0.1"], "sigma must be a finite number >= 0"),
        (["--sigma", "nan"], "sigma must be a finite number >= 0"),
        (["--sigma", "inf"], "sigma must be a finite number >= 0"),
        (["--sigma", "0.1", "--sites", "99"], "site index 99 out of range"),
        (["--sigma", "0.1", "--sites", "conv9"], "unknown site 'conv9'"),
        (["--sigma", "0.1", "--sites", "type:LSTM"], "no site of type 'LSTM'"),
    ],
)
def test_eval_bad_input_is_one_clear_line(capsys, trained_run, argv, message):
    before = _digest(trained_run)
    code, _, err = run(capsys, "eval", "--checkpoint", str(trained_run), "--repeats", "1", *argv)
    assert code == 2
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert _digest(trained_run) == before


def test_eval_corrupt_and_foreign_checkpoints(capsys, trained_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((trained_run / "model.json").read_text())
    data = (trained_run / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    code, _, err = run(capsys, "eval", "--checkpoint", str(broken), "--sigma", "0.1")
    assert code == 2 and "corrupt or truncated" in err

    meta = json.loads((trained_run / "model.json").read_text())
    meta["arch"], meta["arch_kwargs"] = "mlp", {}
    (broken / "model.json").write_text(json.dumps(meta))
    (broken / "model.safetensors").write_bytes(data)
    code, _, err = run(capsys, "eval", "--checkpoint", str(broken), "--sigma", "0.1")
    assert code == 2 and "does not match the model architecture" in err


def test_train_bad_inputs(capsys, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model: {arch: lenet5}\ntrain: {epochz: 2}\n")
    code, _, err = run(capsys, "train", "--config", str(typo))
    assert code == 2 and "unknown key 'train.epochz'" in err

    missing = tmp_path / "mnist.yaml"
    missing.write_text(f"output_dir: {tmp_path}\ndata: {{dataset: mnist, root: {tmp_path / 'nothing'}}}\n")
    code, _, err = run(capsys, "train", "--config", str(missing))
    assert code == 2 and str(tmp_path / "nothing") in err
    assert not (tmp_path / "mnist-lenet5").exists()

    code, _, err = run(capsys, "train", "--set", "train.epochs=-1")
    assert code == 2 and "train.epochs" in err


def test_truncated_data_file_is_reported(capsys, tmp_path, shared_data):
    import gzip

    root = tmp_path / "mnist"
    root.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (root / name).write_bytes((shared_data / "mnist" / name).read_bytes())
    raw = gzip.decompress((root / "t10k-images-idx3-ubyte.gz").read_bytes())
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    code, _, err = run(capsys, "train", "--set", "data.dataset=mnist", f"data.root={root}",
                       f"output_dir={tmp_path}", "train.epochs=1")
    assert code == 2 and "t10k-images" in err and ("corrupt" in err or "truncated" in err)
