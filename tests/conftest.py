import os
from pathlib import Path

import pytest
import torch

# One intra-op thread per test worker: two torch processes with two threads each on two cores
# run many times slower than one.
torch.set_num_threads(1)



def pytest_configure(config):
    """Every Ray head the tests start, and every client, without token authentication. A process
    keeps the mode it first read, so a head started later under another mode refused that process's
    requests ("Missing authorization header") once a test had switched it."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests that start Ray share one xdist worker (with ``--dist loadgroup``): two Ray heads starting
    at the same moment on one machine can fail to bring up their control store. tryfirst: xdist's
    worker reads the group marks in its own hook of this name, which otherwise runs first."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))


SHARED_DATA = Path(os.environ.get("NORA_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (set NORA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep decoded-data caches out of the user's home directory, shared across one test session."""
    if "NORA_CACHE" not in os.environ:
        monkeypatch.setenv("NORA_CACHE", str(tmp_path_factory.getbasetemp() / "nora-cache"))


@pytest.fixture(scope="session")
def digits_lenet5_run(tmp_path_factory) -> str:
    """LeNet-5 trained briefly on the bundled digits (a real `nora train` run folder, ~92% test accuracy)."""
    from nora.config import parse_config
    from nora.train import train

    out = tmp_path_factory.mktemp("runs")
    config = parse_config({"name": "digits-lenet5", "output_dir": str(out),
                           "data": {"dataset": "digits", "batch_size": 64}, "model": {"arch": "lenet5"},
                           "train": {"epochs": 5, "lr": 0.01, "progress": False}})
    train(config)
    return str(out / "digits-lenet5")


@pytest.fixture
def killed_search():
    """Start ``nora compress ARGV --out FOLDER`` in its own process group and SIGKILL the whole group
    (a fork pool's workers too) once ``after`` episodes are stored; returns how many were stored."""
    import json
    import signal
    import subprocess
    import sys
    import time

    def run(argv, folder, after=4, timeout=120):
        episodes = Path(folder) / "episodes.json"
        proc = subprocess.Popen([sys.executable, "-m", "nora", "compress", *argv, "--out", str(folder)],
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline and proc.poll() is None:
                try:
                    if len(json.loads(episodes.read_text())) >= after:
                        break
                except (FileNotFoundError, json.JSONDecodeError):
                    pass
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return len(json.loads(episodes.read_text()))

    return run
