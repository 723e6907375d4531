"""A sweep against an existing multi-node Ray cluster: two nodes started here on 127.0.0.1.

The head and one worker node are separate ``ray start`` processes, as on two machines; the sweep
connects by address, the records are gathered in the one sweep folder of this process, and after the
worker node dies a second run on what is left of the cluster finishes exactly the points not yet done.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nora.errors import NoraError
from nora.sweep import ResultStore, parse_sweep, run_sweep
from nora.sweep.runner import make_executor

pytestmark = pytest.mark.ray

BASE = {
    "data": {"dataset": "digits", "batch_size": 32, "train_subset": 800, "test_subset": 150},
    "model": {"arch": "mlp", "kwargs": {"hidden": [64, 64]}},
    "train": {"epochs": 2, "lr": 0.01},
    "train_noise": {"kind": "additive", "sigma": 0.0},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    cli = Path(sys.executable).with_name("ray")
    return str(cli) if cli.exists() else (shutil.which("ray") or "ray")


def _node(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """One blocking ``ray start`` in its own process group, so the test ends it (and only it)."""
    return subprocess.Popen([_ray_cli(), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             "--disable-usage-stats", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill(node: subprocess.Popen) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(10)


@pytest.fixture
def cluster():
    pytest.importorskip("ray")
    # A private cluster: its own port and session folder (short: Ray's sockets live there); no token
    # (RAY_AUTH_MODE, set for the whole test session in conftest.py).
    env = {**os.environ, "RAY_worker_niceness": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="nora-ray-", dir="/tmp")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"], env)
    worker = None
    try:
        _wait_for_nodes(address, 1)
        worker = _node([f"--address={address}"], env)
        _wait_for_nodes(address, 2)
        yield address, worker
    finally:
        for node in (worker, head):
            if node is not None:
                _kill(node)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, timeout: float = 45.0) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while True:  # the head takes a few seconds before it answers
        try:
            ray.init(address=address, log_to_driver=False, _node_ip_address="127.0.0.1")
            break
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    try:
        deadline = time.monotonic() + timeout
        while sum(n["Alive"] for n in ray.nodes()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes")
            time.sleep(0.5)
    finally:
        ray.shutdown()


def test_a_sweep_runs_on_a_two_node_cluster_and_resumes_after_the_worker_node_dies(cluster, tmp_path):
    address, worker = cluster
    spec, base = parse_sweep({"name": "cluster", "base": BASE, "grid": {"train_noise.sigma": [0.1, 0.2, 0.3, 0.5, 0.7, 1.0]},
                              "seeds": [0], "evaluate": {"repeats": 1}}, "cluster sweep")
    # Half the sweep on the two-node cluster, as if the sweep had been stopped there ...
    first = run_sweep(spec, base, engine="ray", address=address, output_dir=str(tmp_path), limit=3)
    assert (first.ok, first.failed, first.remaining) == (3, 0, 3)
    # ... then the worker node dies; the same command resumes on what is left (the head) and runs only the rest.
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    second = run_sweep(spec, base, engine="ray", address=address, output_dir=str(tmp_path))
    assert second.skipped == 3 and second.ok == 3 and second.failed == 0
    # Every record, from both nodes, is in the one sweep folder of this process.
    store = ResultStore.open_existing(tmp_path / "cluster")
    assert len(store.finished()) == 6 and len(store.records()) == 6
    assert all(r["status"] == "ok" and "result" in r for r in store.records())


def test_an_absent_cluster_is_one_clear_error_within_seconds():
    pytest.importorskip("ray")
    started = time.monotonic()
    with pytest.raises(NoraError, match="cannot reach the Ray cluster at 127.0.0.1"):
        make_executor("ray", workers=1, address=f"127.0.0.1:{_free_port()}")
    assert time.monotonic() - started < 10
