"""The compression-policy search loop (Galen): agents propose per-layer actions, each candidate is
compressed, its accuracy evaluated and its latency measured on this host, and the reward fed back.

Everything needed to continue lives in the search folder and is written atomically after each step
of candidates: ``search.json`` (settings and the reference), ``episodes.json`` (every evaluated
policy), ``agent.pt`` (the agent's networks, optimisers and replay; loaded with
``weights_only=True``), ``latency-cache.json`` and ``sensitivity.json``. A killed search resumes at
the last finished step; with a deterministic latency (the ``bitops`` cost model, or a warm cache) it
gives exactly the episodes an uninterrupted search gives, with measured latencies it differs only
by the timing noise of the configurations measured after the restart.

Candidates' accuracy is evaluated in this process, on a local fork pool or as Ray tasks (the
``engine``); latency is always measured here, one layer at a time, so timings are not disturbed.
The engine is how a search runs, not what it is: the same candidates give the same numbers on every
engine, and a search killed on one engine resumes on another.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nora.compress.actions import (
    FP32,
    MODES,
    LayerInfo,
    LayerPolicy,
    apply_policy,
    check_mode,
    compute_layers,
    policy_from_actions,
)
from nora.compress.agents import AGENTS, make_agent
from nora.compress.sensitivity import layer_sensitivity
from nora.errors import NoraError
from nora.io import atomic_write_bytes, atomic_write_json
from nora.measure import clean_accuracy
from nora.perf.latency import BACKENDS, LatencyCache, LatencyMeter, LayerSpec, check_backend
from nora.perf.layers import layer_specs, model_latency
from nora.seeds import SeedTree

REWARDS = ("abs", "hinge")
ENGINES = ("local", "ray", "sequential")
#: Settings that choose how candidates are evaluated, not which: a folder may continue under others.
EXECUTION = ("engine", "address", "workers")


@dataclass
class SearchSettings:
    """What a search is; stored in ``search.json`` so that ``--resume`` needs nothing else."""

    checkpoint: str
    agent: str = "ddpg"
    mode: str = "joint"
    target: float = 0.25
    episodes: int = 200
    reward: str = "abs"
    beta: float = 5.0
    backend: str = "tvm"
    round_to: int = 8
    max_sparsity: float = 0.8
    eval_samples: int = 1000
    sensitivity_samples: int = 128
    ddpg_warmup: int = 10
    batch: int = 1
    workers: int = 1
    engine: str = "local"
    address: str | None = None
    timing_repeats: int = 5
    timing_warmup: int = 3
    retrain_epochs: int = 1
    retrain_lr: float = 0.01
    retrain_samples: int | None = None
    data_root: str | None = None
    seed: int = 0

    def check(self) -> "SearchSettings":
        if not (isinstance(self.target, (int, float)) and 0 < self.target <= 1):
            raise NoraError(f"--target is the latency as a share of the original and must lie in (0, 1], "
                            f"got {self.target}")
        if self.agent not in AGENTS:
            raise NoraError(f"unknown agent {self.agent!r}; choose one of {', '.join(AGENTS)}")
        check_mode(self.mode)
        check_backend(self.backend)
        if self.reward not in REWARDS:
            raise NoraError(f"unknown reward {self.reward!r}; choose one of {', '.join(REWARDS)}")
        if self.engine not in ENGINES:
            raise NoraError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.address and self.engine != "ray":
            raise NoraError("--address is for the Ray engine (--engine ray)")
        for key in ("episodes", "eval_samples", "sensitivity_samples", "batch", "workers", "timing_repeats"):
            if int(getattr(self, key)) < 1:
                raise NoraError(f"{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.retrain_epochs < 0 or self.ddpg_warmup < 0 or self.timing_warmup < 0 or self.round_to < 0:
            raise NoraError("retrain-epochs, ddpg-warmup, timing-warmup and round-to must be >= 0")
        if not 0 <= self.max_sparsity < 1:
            raise NoraError(f"max-sparsity must lie in [0, 1), got {self.max_sparsity}")
        return self

    def identity(self) -> dict:
        """The settings that make a search what it is (everything but the ``EXECUTION`` ones)."""
        return {k: v for k, v in asdict(self).items() if k not in EXECUTION}


def reward_of(accuracy: float, latency: float, reference: float, settings: SearchSettings) -> float:
    """``acc - beta |lat / (target lat_ref) - 1|`` (abs, Galen's default) or only above the target (hinge)."""
    excess = latency / (settings.target * reference) - 1.0
    penalty = abs(excess) if settings.reward == "abs" else max(excess, 0.0)
    return accuracy - settings.beta * penalty


class LayerWalk:
    """The environment the agents walk: one state vector per layer (methods.md section 12)."""

    def __init__(self, layers: Sequence[LayerInfo], mode: str, sensitivity: dict[str, list[float]],
                 max_sparsity: float):
        self.layers = list(layers)
        self.mode = mode
        self.action_keys = MODES[mode]
        self.action_dim = len(self.action_keys)
        self.n_layers = len(layers)
        self.max_sparsity = max_sparsity
        raw = np.array([[i, l.macs, l.macs * FP32 * FP32, l.in_channels, l.out_channels, l.kernel, l.stride, l.params]
                        for i, l in enumerate(layers)], dtype=float)
        span = raw.max(0) - raw.min(0)
        self.static = (raw - raw.min(0)) / np.where(span > 0, span, 1.0)
        sens = np.array([sensitivity[l.name] for l in layers], dtype=float)
        sens = np.log1p(np.maximum(sens, 0.0))
        self.sensitivity = sens / max(sens.max(), 1e-12)
        self.macs = np.array([l.macs for l in layers], dtype=float)
        self.state_dim = self.static.shape[1] + self.sensitivity.shape[1] + 2 + self.action_dim

    def _cost(self, i: int, action: np.ndarray) -> float:
        """Relative bit-operations of layer ``i`` under ``action`` (1 = uncompressed)."""
        from nora.compress.actions import bits_of

        values = dict(zip(self.action_keys, action))
        keep = 1.0 - (values.get("prune", 0.0) * self.max_sparsity if self.layers[i].prunable else 0.0)
        w, a = bits_of(values.get("w_bits", 1.0)), bits_of(values.get("a_bits", 1.0))
        return keep * (w * a / FP32 ** 2 if w < FP32 and a < FP32 else 1.0)

    def state(self, index: int, actions: Sequence[np.ndarray]) -> np.ndarray:
        total = self.macs.sum()
        done = sum(self.macs[j] * self._cost(j, actions[j]) for j in range(index)) / total
        rest = self.macs[index + 1:].sum() / total
        previous = actions[index - 1] if index > 0 else np.zeros(self.action_dim)
        return np.concatenate([self.static[index], self.sensitivity[index], [done, rest], previous]).astype(np.float32)

    def sensitivity_order(self) -> list[int]:
        """Layers from least to most sensitive (mean KL over the candidate settings per MAC share)."""
        score = self.sensitivity.mean(1) / np.maximum(self.macs / self.macs.sum(), 1e-12)
        return [int(i) for i in np.argsort(score, kind="stable")]


@dataclass
class SearchData:
    """The tensors a search evaluates on (validation from the training split, never the test split)."""

    val_x: torch.Tensor
    val_y: torch.Tensor
    calib_x: torch.Tensor
    train: object
    test: object


@dataclass
class Candidate:
    policy: list[LayerPolicy]
    specs: list[tuple[str, LayerSpec]]
    accuracy: float
    compress_s: float
    evaluate_s: float


@dataclass
class EvalContext:
    """What evaluating a candidate needs: the model and the validation/calibration tensors only, so
    that it is cheap to hand to worker processes and Ray tasks."""

    model: nn.Module
    input_shape: tuple
    layers: list[LayerInfo]
    settings: SearchSettings
    val_x: torch.Tensor
    val_y: torch.Tensor
    calib_x: torch.Tensor

    def evaluate(self, actions) -> Candidate:
        start = time.perf_counter()
        s = self.settings
        policy = policy_from_actions(self.layers, actions, s.mode, s.max_sparsity)
        pruned, compressed = apply_policy(self.model, self.input_shape, policy, self.calib_x, s.round_to)
        specs = layer_specs(pruned, self.input_shape, {p.name: (p.w_bits, p.a_bits) for p in policy})
        mid = time.perf_counter()
        accuracy = clean_accuracy(compressed, self.val_x, self.val_y)
        return Candidate(policy, specs, accuracy, mid - start, time.perf_counter() - mid)


class SequentialEvaluator:
    """Candidates one after another in this process."""

    name = "sequential"
    startup_seconds = 0.0

    def start(self, context: EvalContext) -> None:
        self.context = context

    def map(self, proposals: Sequence) -> list[Candidate]:
        return [self.context.evaluate(actions) for actions in proposals]

    def stop(self) -> None:
        self.context = None

    def close(self) -> None:
        pass


# Set in the parent just before the fork pool starts; the workers inherit it (never at import).
_WORKER_CONTEXT: dict = {}


def _evaluate_in_worker(actions) -> Candidate:
    torch.set_num_threads(1)
    return _WORKER_CONTEXT["context"].evaluate(actions)


class ForkPoolEvaluator(SequentialEvaluator):
    """A pool of forked processes on this machine: they inherit the model and data instead of copying them."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def start(self, context: EvalContext) -> None:
        _WORKER_CONTEXT["context"] = context
        self.pool = multiprocessing.get_context("fork").Pool(self.workers)

    def map(self, proposals: Sequence) -> list[Candidate]:
        return self.pool.map(_evaluate_in_worker, list(proposals))

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
        _WORKER_CONTEXT.clear()


# In a Ray worker process: the context of the run it serves, fetched from the object store once.
_RAY_CONTEXT: dict = {}


def _evaluate_on_ray(boxed: list, actions) -> Candidate:
    """``boxed`` holds the context's object reference unresolved, so that a worker deserialises the
    model and the data once per run rather than once per candidate."""
    import ray

    torch.set_num_threads(1)
    key = boxed[0].hex()
    if key not in _RAY_CONTEXT:
        _RAY_CONTEXT.clear()
        _RAY_CONTEXT[key] = ray.get(boxed[0])
    return _RAY_CONTEXT[key].evaluate(actions)


class RayEvaluator(SequentialEvaluator):
    """One Ray task (one CPU) per candidate. The cluster is started or joined by the sweep's
    ``RayExecutor``, so an address where nobody answers fails within seconds, before anything is
    written; the context goes to the object store once per run and each worker reads it once, and
    the candidates come back in proposal order."""

    name = "ray"

    def __init__(self, workers: int, address: str | None):
        from nora.sweep.ray_executor import RayExecutor

        self.cluster = RayExecutor(workers, address)
        self.ray = self.cluster.ray
        self.startup_seconds = self.cluster.startup_seconds
        self.remote = self.ray.remote(num_cpus=1, max_retries=0)(_evaluate_on_ray)
        self.context_ref = None
        self.by_value: list = []

    def start(self, context: EvalContext) -> None:
        from ray import cloudpickle

        self.by_value = _local_modules(context.model)
        for module in self.by_value:
            cloudpickle.register_pickle_by_value(module)
        self.context_ref = self.ray.put(context)

    def map(self, proposals: Sequence) -> list[Candidate]:
        ray = self.ray
        refs = [self.remote.remote([self.context_ref], actions) for actions in proposals]
        try:
            return ray.get(refs)
        except BaseException as exc:
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in pending:  # only those: cancelling a finished task upsets Ray 2.x
                ray.cancel(ref, force=True)
            if isinstance(exc, ray.exceptions.RayTaskError):
                if isinstance(exc.cause, NoraError):  # bad input met in the worker: its one line
                    raise exc.cause from None
                raise  # a bug: keep the worker's traceback
            if isinstance(exc, ray.exceptions.RayError):  # a worker or node died, an object was lost
                reason = str(exc).splitlines()[0] if str(exc) else ""
                raise NoraError(f"Ray lost a candidate evaluation ({type(exc).__name__}: {reason}); the finished "
                                "steps are saved, run the search again to continue") from None
            raise

    def stop(self) -> None:
        from ray import cloudpickle

        self.context_ref = None
        for module in self.by_value:
            cloudpickle.unregister_pickle_by_value(module)
        self.by_value = []

    def close(self) -> None:
        self.cluster.close()


def _local_modules(model: nn.Module) -> list:
    """The modules of the model's classes that a Ray worker cannot import by name: a model file loaded
    by its path (``model.arch: path/to/file.py:Factory``) or a module found beside the working folder.
    They are pickled by value, so the workers need neither the file nor this folder."""
    cwd = Path.cwd().resolve()
    found = []
    for name in sorted({type(m).__module__ for m in model.modules()}):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if module is None or path is None or name.split(".")[0] in ("nora", "torch"):
            continue
        if name.startswith("nora_user_model_") or Path(os.path.realpath(path)).is_relative_to(cwd):
            found.append(module)
    return found


def make_evaluator(settings: SearchSettings) -> SequentialEvaluator:
    """The evaluator of ``settings.engine``; Ray connects (or starts) here, so call it before writing anything."""
    if settings.engine == "ray":
        return RayEvaluator(settings.workers, settings.address)
    if settings.engine == "local" and settings.workers > 1:
        return ForkPoolEvaluator(settings.workers)
    return SequentialEvaluator()


class Search:
    """One search folder: settings, model, data, agent, caches; ``run()`` continues from where it stopped."""

    def __init__(self, out_dir: str | Path, settings: SearchSettings, model: nn.Module, data: SearchData,
                 progress: Callable[[dict], None] | None = None):
        self.out = Path(out_dir)
        self.settings = settings.check()
        self.model = model.eval()
        self.input_shape = tuple(model.input_shape)
        self.data = data
        self.progress = progress
        self.tree = SeedTree(settings.seed)
        self.layers = compute_layers(model, self.input_shape)
        self.cache = LatencyCache(self.out / "latency-cache.json")
        self.meter = LatencyMeter(settings.backend, self.cache, warmup=settings.timing_warmup,
                                  repeats=settings.timing_repeats)
        start = time.perf_counter()
        sensitivity = layer_sensitivity(model, self.input_shape, self.layers,
                                        data.calib_x[: settings.sensitivity_samples], settings.mode,
                                        round_to=settings.round_to, cache_path=self.out / "sensitivity.json")
        self.sensitivity_s = time.perf_counter() - start
        self.env = LayerWalk(self.layers, settings.mode, sensitivity, settings.max_sparsity)
        options = {"warmup": settings.ddpg_warmup} if settings.agent == "ddpg" else {}
        self.agent = make_agent(settings.agent, self.env, self.tree.child("agent"), **options)
        self.episodes: list[dict] = []
        self.reference = self._reference()

    # ------------------------------------------------------------------ state on disk
    def _reference(self) -> dict:
        meta = self.out / "search.json"
        if meta.exists():
            import json

            stored = json.loads(meta.read_text())
            return stored["reference"]
        start = time.perf_counter()
        latency, parts = model_latency(layer_specs(self.model, self.input_shape), self.meter)
        accuracy = clean_accuracy(self.model, self.data.val_x, self.data.val_y)
        reference = {"latency_s": latency, "accuracy": accuracy, "kernels": [p.kernel for p in parts],
                     "measured": all(p.measured for p in parts), "seconds": time.perf_counter() - start,
                     "sensitivity_s": self.sensitivity_s}
        atomic_write_json(meta, {"settings": asdict(self.settings), "reference": reference,
                                 "layers": [asdict(l) for l in self.layers]})
        self.cache.save()
        return reference

    def load(self) -> int:
        """Restore the agent and the finished episodes; returns how many episodes are done."""
        import json

        path = self.out / "agent.pt"
        if not path.exists():
            return 0
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise NoraError(f"search state {path} is corrupt ({type(exc).__name__}); delete it to restart") from None
        done = int(state["episodes_done"])
        self.agent.load_state_dict(state["agent"])
        episodes = json.loads((self.out / "episodes.json").read_text()) if (self.out / "episodes.json").exists() else []
        if len(episodes) < done:
            raise NoraError(f"{self.out}/episodes.json holds {len(episodes)} episodes but the agent saw {done}")
        self.episodes = episodes[:done]  # a kill between the two writes leaves extra ones: they are redone
        return done

    def _save(self) -> None:
        atomic_write_json(self.out / "episodes.json", self.episodes)
        buffer = io.BytesIO()
        torch.save({"episodes_done": len(self.episodes), "agent": self.agent.state_dict()}, buffer)
        atomic_write_bytes(self.out / "agent.pt", buffer.getvalue())
        self.cache.save()

    # ------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None = None, evaluator: SequentialEvaluator | None = None) -> list[dict]:
        """Run the remaining episodes (``stop_after``: only that many more, to simulate a kill in tests).

        ``evaluator`` (from ``make_evaluator``) is left open for the caller to close; without one the
        settings' engine is started here and closed at the end."""
        done = self.load()
        own = evaluator is None
        evaluator = make_evaluator(self.settings) if own else evaluator
        budget = self.settings.episodes if stop_after is None else min(self.settings.episodes, done + stop_after)
        try:
            # calib_x is a view of val_x: a clone is pickled alone, not with all of val_x's storage
            evaluator.start(EvalContext(self.model, self.input_shape, self.layers, self.settings,
                                        self.data.val_x, self.data.val_y, self.data.calib_x.clone()))
            try:
                while done < budget:
                    self._step(list(range(done, min(done + self.settings.batch, budget))), evaluator)
                    done = len(self.episodes)
            finally:
                evaluator.stop()
        finally:
            if own:
                evaluator.close()
        return self.episodes

    def _step(self, batch: Sequence[int], evaluator: SequentialEvaluator) -> None:
        start = time.perf_counter()
        proposals = [self.agent.propose(e) for e in batch]
        agent_s = time.perf_counter() - start
        candidates = evaluator.map([actions for _, actions in proposals])
        for episode, (states, actions), cand in zip(batch, proposals, candidates):
            started = time.perf_counter()
            compile_before, timing_before = self.meter.compile_s, self.meter.timing_s
            failures_before = len(self.meter.failures)
            latency, parts = model_latency(cand.specs, self.meter)
            measure_s = time.perf_counter() - started
            reward = reward_of(cand.accuracy, latency, self.reference["latency_s"], self.settings)
            start = time.perf_counter()
            self.agent.observe(episode, states, actions, reward)
            observe_s = time.perf_counter() - start
            kernels: dict[str, int] = {}
            for p in parts:
                kernels[p.kernel] = kernels.get(p.kernel, 0) + 1
            record = {
                "episode": episode, "accuracy": cand.accuracy, "latency_s": latency,
                "latency_ratio": latency / self.reference["latency_s"], "reward": reward,
                "policy": [p.to_dict() for p in cand.policy], "actions": [np.asarray(a).tolist() for a in actions],
                "kernels": kernels, "estimated_layers": sum(not p.measured for p in parts),
                "failures": self.meter.failures[failures_before:],
                "seconds": {"compress": cand.compress_s, "evaluate": cand.evaluate_s,
                            "compile": self.meter.compile_s - compile_before,
                            "timing": self.meter.timing_s - timing_before,
                            "latency_other": measure_s - (self.meter.compile_s - compile_before)
                            - (self.meter.timing_s - timing_before),
                            "agent": agent_s / len(batch) + observe_s},
            }
            self.episodes.append(record)
            if self.progress:
                self.progress(record)
        self._save()

    # ------------------------------------------------------------------ choice
    def best(self) -> dict:
        """Most accurate policy that meets the target; the highest reward if none does."""
        if not self.episodes:
            raise NoraError(f"search {self.out} has no evaluated episode yet")
        meeting = [e for e in self.episodes if e["latency_ratio"] <= self.settings.target + 1e-9]
        if meeting:
            return max(meeting, key=lambda e: (e["accuracy"], -e["latency_s"]))
        return max(self.episodes, key=lambda e: e["reward"])

    def policy(self, record: dict) -> list[LayerPolicy]:
        return [LayerPolicy(**p) for p in record["policy"]]


def split_data(train, test, settings: SearchSettings, tree: SeedTree) -> SearchData:
    """A seeded validation subset of the training split for the search; the rest retrains."""
    n = len(train.y)
    if n < 2:
        raise NoraError("the training split needs at least 2 samples to hold out a validation subset")
    order = tree.child("split").numpy().permutation(n)
    n_val = min(settings.eval_samples, n // 2)
    val = train.subset(torch.as_tensor(order[:n_val]))
    rest = train.subset(torch.as_tensor(order[n_val:]))
    if settings.retrain_samples:
        rest = rest.subset(settings.retrain_samples)
    return SearchData(val.x, val.y, val.x[: max(settings.sensitivity_samples, 32)], rest, test)


__all__ = ["BACKENDS", "ENGINES", "EXECUTION", "Search", "SearchData", "SearchSettings", "make_evaluator", "reward_of",
           "split_data"]
