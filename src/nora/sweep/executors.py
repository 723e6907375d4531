"""Where sweep points run: in this process, or on a pool of local worker processes.

An executor runs tasks and hands each finished record to ``on_done`` in this process as soon as it
arrives, so the store writes it at once. Workers use one torch thread each: N single-threaded
trainings on N cores beat one N-threaded training at a time for the small models of a sweep.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

import torch

from nora.errors import NoraError
from nora.sweep.point import run_point

OnDone = Callable[[dict[str, Any]], None]


def failed_record(task: dict[str, Any], error: str) -> dict[str, Any]:
    return {"id": task["id"], "index": task["index"], "values": task["values"], "status": "failed", "error": error}


class SequentialExecutor:
    """One point after another in this process (the baseline, and handy for debugging)."""

    name = "sequential"
    workers = 1

    def run(self, tasks: Sequence[dict[str, Any]], on_done: OnDone) -> None:
        threads = torch.get_num_threads()
        try:
            for task in tasks:
                on_done(run_point(task))
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        pass


def _init_worker() -> None:
    torch.set_num_threads(1)


class LocalExecutor:
    """A pool of worker processes on this machine (spawned, so no state leaks in from the parent)."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = check_workers(workers)

    def run(self, tasks: Sequence[dict[str, Any]], on_done: OnDone) -> None:
        pending = list(tasks)
        while pending:
            pending = self._run_pool(pending, on_done)

    def _run_pool(self, tasks: Sequence[dict[str, Any]], on_done: OnDone) -> list[dict[str, Any]]:
        """Run ``tasks`` on one pool; returns those to run again if the pool broke under them."""
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=context,
                                 initializer=_init_worker) as pool:
            futures = {pool.submit(run_point, task): task for task in tasks}
            try:
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for future in done:
                        task = futures.pop(future)
                        try:
                            on_done(future.result())
                        except BrokenProcessPool:
                            # A worker died (killed, out of memory) and took the pool with it. Blame this
                            # point; finished neighbours are kept, the others start again on a fresh pool.
                            on_done(failed_record(task, "its worker process died (killed or out of memory)"))
                            return self._salvage(futures, on_done)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return []

    @staticmethod
    def _salvage(futures, on_done: OnDone) -> list[dict[str, Any]]:
        again = []
        for future, task in futures.items():
            if future.done() and future.exception() is None:
                on_done(future.result())
            else:
                again.append(task)
        return again

    def close(self) -> None:
        pass


def check_workers(workers: int | None) -> int:
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise NoraError(f"workers must be an integer >= 1, got {workers!r}")
    return workers
