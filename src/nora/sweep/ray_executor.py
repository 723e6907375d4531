"""Sweep points on Ray: a local cluster by default, or an existing cluster by address.

``ray.init`` on an address nobody answers keeps retrying for minutes, so the address is probed
with a plain TCP connection first and an unreachable cluster is one clear error. Point records
come back to this process and are stored here; run folders are written by the workers, so a
multi-machine cluster needs the sweep folder on a shared filesystem.

Ray starts its workers at niceness 15 by default, so on a machine busy with anything else its
points yield the CPU to every other process, while local-pool points do not. The local cluster
started here runs its workers at niceness 0, on equal terms with the local pool; start an existing
cluster's nodes with ``RAY_worker_niceness=0 ray start ...`` for the same.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Sequence

from nora.errors import NoraError
from nora.sweep.executors import OnDone, check_workers, failed_record
from nora.sweep.point import run_point

PROBE_TIMEOUT_S = 5.0
#: Ray configuration of the local cluster started here: workers as nice as the driver (see above).
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise a NoraError unless something listens at a Ray ``host:port`` (or ``ray://host:port``)."""
    target = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise NoraError(f"Ray address {address!r} is not host:port (or ray://host:port, or 'auto')")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise NoraError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _check_same_cluster(ray, address: str | None) -> None:
    """This process already talks to a Ray cluster: another ``address`` would be silently ignored."""
    if not address or address == "auto":
        return
    current = ray.get_runtime_context().gcs_address
    host, _, port = address.removeprefix("ray://").rsplit("/", 1)[0].rpartition(":")
    current_host, _, current_port = current.rpartition(":")
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    same_host = host == current_host or (loopback and current_host == ray.util.get_node_ip_address())
    if port != current_port or not same_host:
        raise NoraError(f"this process is already connected to the Ray cluster at {current}; "
                        f"it cannot also use {address} (call ray.shutdown() first, or leave the address out)")


class RayExecutor:
    """One Ray task per point, one CPU each; records are handed on as they finish."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise NoraError("the Ray engine needs ray: pip install 'nora[distributed]'") from None
        self.ray = ray
        self.workers = check_workers(workers)
        self.address = address
        self._started_here = False
        started = time.perf_counter()
        if ray.is_initialized():
            _check_same_cluster(ray, address)
        elif address:
            if address != "auto":
                probe_address(address)
            env = {k: v for k, v in os.environ.items() if k.startswith("NORA_")}
            host = address.removeprefix("ray://").rsplit(":", 1)[0]
            # A cluster on loopback is reached on loopback: the driver must not announce another interface.
            local = {"_node_ip_address": "127.0.0.1"} if host in ("localhost", "::1") or host.startswith("127.") else {}
            try:
                ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False,
                         **local)
            except (ConnectionError, RuntimeError) as exc:
                raise NoraError(f"cannot connect to the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
            self._started_here = True
        else:
            ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                     _system_config=LOCAL_SYSTEM_CONFIG)
            self._started_here = True
        self.startup_seconds = time.perf_counter() - started

    def run(self, tasks: Sequence[dict[str, Any]], on_done: OnDone) -> None:
        ray = self.ray
        remote = ray.remote(num_cpus=1, max_retries=0)(run_point)
        refs = {remote.remote(task): task for task in tasks}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    task = refs.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as exc:  # the worker died or Ray lost the task: record it, go on
                        reason = str(exc).splitlines()[0] if str(exc) else ""
                        record = failed_record(task, f"Ray task failed: {type(exc).__name__}: {reason}")
                    on_done(record)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self._started_here:
            self.ray.shutdown()
