"""Search wall time per episode when candidates are evaluated in this process, on a local fork pool
and as Ray tasks, with 1 and 2 workers, in one run (so the ratios share the machine's load).

A first, untimed search fills the latency cache and the sensitivity cache; every timed search starts
from copies of them, so all of them measure no latency afresh and compute no sensitivity: what is
left per episode is the agent, compressing the candidate and evaluating its accuracy (the part the
engines parallelise) plus bookkeeping. Ray's start-up (``ray.init`` of a local instance) is reported
apart; the steady rate leaves out the first step, which on Ray also starts the worker processes.
The runs are repeated in turn (``--rounds``) and medians reported, so a change of the machine's load
hits all of them alike; ratios are taken within a round. The episodes of every timed search are
checked to be identical to the baseline's; the mean time per candidate of each part (compress and
evaluate: in the workers; the rest: in this process) is printed.

    python benchmarks/compress_parallel.py --checkpoint runs/mnist-lenet5 --data-root ../shared/data/mnist \
        --episodes 40 --batch 2 --rounds 3
Writes <output>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nora.compress.workflow import compress
from nora.io import atomic_write_json

DETERMINISTIC = ("episode", "accuracy", "latency_s", "reward", "policy", "actions")
CACHES = ("latency-cache.json", "sensitivity.json")


def _search(checkpoint: str, folder: Path, warm: Path | None, options: dict) -> dict:
    if warm is not None:
        folder.mkdir(parents=True)
        for name in CACHES:
            shutil.copy(warm / name, folder / name)
    stamps: list[float] = []
    started = time.perf_counter()
    result = compress(checkpoint, folder, progress=lambda record: stamps.append(time.perf_counter()), **options)
    wall = time.perf_counter() - started
    episodes = json.loads((folder / "episodes.json").read_text())
    batch = options["batch"]
    steps = stamps[batch - 1::batch]  # one stamp per finished step
    n = len(episodes)
    parts = {k: sum(e["seconds"][k] for e in episodes) / n for k in episodes[0]["seconds"]}
    return {"episodes": n, "wall_s": wall, "parts_s": parts, "search_s": result["final"]["search_s"],
            "per_episode_s": result["final"]["search_s"] / n,
            "steady_per_episode_s": (steps[-1] - steps[0]) / (n - batch) if n > batch else None,
            "startup_s": result["execution"]["startup_s"], "cache_hit_rate": result["final"]["cache_hit_rate"],
            "records": [{k: e[k] for k in DETERMINISTIC} for e in episodes]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--agent", default="random")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--batch", type=int, default=2, help="candidates per step (the most workers can share)")
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--runs", nargs="+", default=["sequential:1", "local:2", "ray:1", "ray:2"],
                   help="engine:workers pairs; the first is the baseline of the ratios")
    p.add_argument("--rounds", type=int, default=3, help="the runs are repeated in turn; medians are reported")
    p.add_argument("--output", default="benchmarks/results/issue14/compress_parallel")
    args = p.parse_args()
    torch.set_num_threads(1)
    options = dict(agent=args.agent, episodes=args.episodes, batch=args.batch, backend=args.backend,
                   eval_samples=args.eval_samples, retrain_epochs=0, data_root=args.data_root)
    root = Path(tempfile.mkdtemp(prefix="compress-parallel-"))
    trials: dict[str, list[dict]] = {run: [] for run in args.runs}
    try:
        load_before = os.getloadavg()
        cold = _search(args.checkpoint, root / "warm-up", None, dict(options, engine="sequential"))
        print(f"warm-up (sequential, cold caches): {cold['per_episode_s']:.3f} s per episode, "
              f"cache hit rate {cold['cache_hit_rate']:.0%}")
        for r in range(args.rounds):
            for run in args.runs:
                engine, workers = run.split(":")
                trial = _search(args.checkpoint, root / f"{run.replace(':', '-')}-{r}", root / "warm-up",
                                dict(options, engine=engine, workers=int(workers)))
                trial["load"] = os.getloadavg()
                trials[run].append(trial)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = trials[args.runs[0]]
    rows = []
    for run, runs in trials.items():
        engine, workers = run.split(":")
        ratios = [b["steady_per_episode_s"] / t["steady_per_episode_s"] for b, t in zip(base, runs)]
        row = {"engine": engine, "workers": int(workers),
               "per_episode_s": statistics.median(t["per_episode_s"] for t in runs),
               "steady_per_episode_s": statistics.median(t["steady_per_episode_s"] for t in runs),
               "speedup_median": statistics.median(ratios), "speedups": ratios,
               "startup_s": statistics.median(t["startup_s"] for t in runs),
               "parts_s": {k: statistics.median(t["parts_s"][k] for t in runs) for k in runs[0]["parts_s"]},
               "identical_to_baseline": all(t["records"] == base[0]["records"] for t in runs),
               "load": [t["load"][0] for t in runs]}
        rows.append(row)
        parts = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in row["parts_s"].items() if v >= 5e-4)
        print(f"{engine:10s} {workers} workers: {row['per_episode_s']:.3f} s per episode, steady "
              f"{row['steady_per_episode_s']:.3f} s (x{row['speedup_median']:.2f} of {args.runs[0]}; rounds: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}), start-up {row['startup_s']:.1f} s, identical episodes: "
              f"{row['identical_to_baseline']}, load {', '.join(f'{x:.1f}' for x in row['load'])}\n"
              f"    per candidate: {parts}")
    atomic_write_json(f"{args.output}.json", {
        "args": vars(args), "warm_up": {k: v for k, v in cold.items() if k != "records"}, "rows": rows,
        "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S")})


if __name__ == "__main__":
    main()
