"""Training, checkpoints and resume: nothing finished is lost, a resumed run equals an uninterrupted one."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nora.config import parse_config
from nora.errors import NoraError
from nora.train import checkpoint, train


def digits_config(tmp_path, **extra):
    base = {
        "name": "run",
        "output_dir": str(tmp_path),
        "data": {"dataset": "digits", "batch_size": 64, "test_batch_size": 512},
        "model": {"arch": "lenet5"},
        "train": {"epochs": 3, "lr": 0.002, "progress": False},
    }
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(base)


def test_clean_training_learns_digits(tmp_path):
    result = train(digits_config(tmp_path, train={"epochs": 8}))
    assert result.test_accuracy > 0.85
    assert [m["epoch"] for m in result.metrics] == list(range(1, 9))
    for name in ("model.safetensors", "model.json", "state.pt", "metrics.json", "metrics.csv", "config.yaml"):
        assert (result.run_dir / name).exists()


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    full = train(digits_config(tmp_path / "a"))
    partial = train(digits_config(tmp_path / "b"), stop_after_epochs=2)
    assert len(partial.metrics) == 2
    resumed = train(digits_config(tmp_path / "b"))
    assert resumed.resumed_from == 2
    assert [m["test_accuracy"] for m in resumed.metrics] == [m["test_accuracy"] for m in full.metrics]
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_noisy_training_same_seed_same_numbers(tmp_path):
    noise = {"train_noise": {"kind": "multiplicative", "sigma": 0.2}}
    a = train(digits_config(tmp_path / "a", **noise))
    b = train(digits_config(tmp_path / "b", **noise))
    c = train(digits_config(tmp_path / "c"))
    assert [m["train_loss"] for m in a.metrics] == [m["train_loss"] for m in b.metrics]
    assert [m["train_loss"] for m in a.metrics] != [m["train_loss"] for m in c.metrics]


def test_weight_noise_and_clamping_in_training(tmp_path):
    result = train(digits_config(tmp_path, train={"clamp_weights": [-0.05, 0.05]},
                                 train_noise={"weight": {"kind": "additive", "sigma": 0.01}}))
    weights = [p for n, p in result.model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    assert max(float(w.detach().abs().max()) for w in weights) <= 0.05 + 1e-7
    model, _ = checkpoint.load_model(result.run_dir)
    assert "parametrizations" not in " ".join(model.state_dict())


def test_different_config_in_same_run_dir_is_refused(tmp_path):
    train(digits_config(tmp_path, train={"epochs": 1}))
    before = _digest(tmp_path / "run")
    with pytest.raises(NoraError, match="different config"):
        train(digits_config(tmp_path, train={"epochs": 1, "lr": 0.01}))
    assert _digest(tmp_path / "run") == before


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*")) if p.is_file()}


def test_checkpoint_round_trip_and_errors(tmp_path):
    result = train(digits_config(tmp_path, train={"epochs": 1}))
    model, meta = checkpoint.load_model(result.run_dir)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), result.model(x))
    assert meta["arch"] == "lenet5" and meta["epochs_done"] == 1

    weights = result.run_dir / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(NoraError, match="corrupt or truncated"):
        checkpoint.load_model(result.run_dir)
    weights.write_bytes(good)

    meta_path = result.run_dir / "model.json"
    meta_text = meta_path.read_text()
    meta_path.write_text(meta_text.replace('"batch_norm": false', '"batch_norm": true'))
    with pytest.raises(NoraError, match="does not match the model architecture"):
        checkpoint.load_model(result.run_dir)
    meta_path.write_text(meta_text[:40])
    with pytest.raises(NoraError, match="not valid JSON"):
        checkpoint.load_model(result.run_dir)
    with pytest.raises(NoraError, match="no checkpoint"):
        checkpoint.load_model(tmp_path / "nowhere")


def test_corrupt_training_state_is_reported(tmp_path):
    cfg = digits_config(tmp_path, train={"epochs": 2})
    train(cfg, stop_after_epochs=1)
    state = cfg.run_dir() / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(NoraError, match="corrupt or truncated"):
        train(cfg)


EVERY_NOISE = (
    "data: {dataset: digits, batch_size: 32}\n"
    "model: {arch: mlp, kwargs: {hidden: [48, 32], dropout: 0.2}}\n"
    "train: {epochs: 8, progress: false, threads: 1, noise_schedule: {name: vant}}\n"
    "train_noise: {kind: combined, sigma: 0.3, ratio: 0.5, relative: std, calibration_samples: 300,\n"
    "              weight: {kind: additive, sigma: 0.02}}\n"
)


def test_killed_process_resumes_with_bit_identical_numbers(tmp_path):
    """SIGKILL a real training process with every noise kind on (activation, relative, VANT draws,
    weight noise, dropout); the resumed run equals an uninterrupted one bit for bit."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"name: killed\noutput_dir: {tmp_path}\n" + EVERY_NOISE)
    command = [sys.executable, "-m", "nora", "train", "--config", str(cfg)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = tmp_path / "killed" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "training exited before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= saved < 8
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming {tmp_path / 'killed'} after epoch {saved}" in " ".join(done.stderr.split())
    resumed = torch.load(state, weights_only=True)
    assert resumed["epoch"] == 8 and len(resumed["metrics"]) == 8

    import yaml

    whole = train(parse_config({**yaml.safe_load(EVERY_NOISE), "name": "whole", "output_dir": str(tmp_path)}))
    assert [m["train_loss"] for m in resumed["metrics"]] == [m["train_loss"] for m in whole.metrics]
    assert [m["test_accuracy"] for m in resumed["metrics"]] == [m["test_accuracy"] for m in whole.metrics]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed["model"][key]), key


def test_relative_training_noise_is_calibrated_each_epoch(tmp_path):
    config = digits_config(tmp_path, train={"epochs": 2},
                           train_noise={"kind": "additive", "sigma": 0.5, "relative": "std"})
    result = train(config)
    assert len(result.metrics) == 2
    clean = train(digits_config(tmp_path / "clean", train={"epochs": 2}))
    assert result.metrics[-1]["train_loss"] != clean.metrics[-1]["train_loss"]


def test_training_never_touches_torchs_global_generator(tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    train(digits_config(tmp_path, train={"epochs": 1},
                        train_noise={"kind": "additive", "sigma": 0.3, "weight": {"sigma": 0.01}}))
    assert torch.equal(torch.random.get_rng_state(), before)
