"""Sweep speed: 8 short training runs sequentially, on the local process pool, and on Ray.

Every engine runs the same 8 points (LeNet-5, noisy training at 4 sigmas x 2 seeds) into its own
fresh sweep folder. Sequential runs them one after another in this process with one torch thread;
the local pool and Ray run ``--workers`` points at a time with one thread each. Ray's start-up
(``ray.init`` of a local cluster) is timed separately from its run.

Target (issues 3 and 10): >= 1.7x for the local pool with 2 workers and for Ray with 2 workers, against
sequential, on an otherwise idle 2-core machine (the load average is recorded beside the figures).

    python benchmarks/sweep_speed.py --data-root /path/to/mnist
    python benchmarks/sweep_speed.py --dataset digits --epochs 2 --output /tmp/sweep_speed   # a quick check

Writes <output>.json and <output>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from nora.io import atomic_write_json, atomic_write_text
from nora.sweep import parse_sweep, run_sweep


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root")
    p.add_argument("--epochs", type=int, default=2, help="per point; short points are dominated by worker start-up")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N samples only")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--engines", nargs="+", default=["sequential", "local", "ray"],
                   choices=["sequential", "local", "ray"])
    p.add_argument("--output", default="benchmarks/results/sweep_speed", help="output path stem (.json, .md)")
    return p.parse_args()


def spec_for(args):
    base = {"data": {"dataset": args.dataset, "root": args.data_root, "train_subset": args.train_subset},
            "model": {"arch": "lenet5"}, "train": {"epochs": args.epochs},
            "train_noise": {"kind": "additive", "sigma": 0.0}}
    return parse_sweep({"name": "sweep-speed", "base": base, "grid": {"train_noise.sigma": [0.1, 0.3, 1.0, 3.0]},
                        "seeds": [0, 1], "evaluate": {"repeats": 2}}, "sweep_speed")


def main() -> None:
    args = parse_args()
    spec, base = spec_for(args)
    timings = {}
    scratch = Path(tempfile.mkdtemp(prefix="nora-sweep-speed-"))
    try:
        for engine in args.engines:
            started = time.perf_counter()
            outcome = run_sweep(spec, base, engine=engine, workers=args.workers, output_dir=str(scratch / engine))
            total = time.perf_counter() - started
            if outcome.failed:
                raise SystemExit(f"{engine}: {outcome.failed} points failed: "
                                 + "; ".join(r.get("error", "") for r in outcome.records if r["status"] != "ok"))
            timings[engine] = {"total_seconds": total, "startup_seconds": outcome.startup_seconds,
                               "run_seconds": total - outcome.startup_seconds, "points": outcome.ok,
                               "mean_point_seconds": sum(r["result"]["seconds"] for r in outcome.records) / outcome.ok}
            print(f"{engine}: {total:.1f} s ({outcome.startup_seconds:.1f} s start-up)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sequential = timings.get("sequential", {}).get("total_seconds")
    for engine, t in timings.items():
        if sequential and engine != "sequential":
            t["speedup_total"] = sequential / t["total_seconds"]
            t["speedup_without_startup"] = sequential / t["run_seconds"]
    summary = {"dataset": args.dataset, "epochs": args.epochs, "train_subset": args.train_subset,
               "workers": args.workers, "points": 8, "engines": timings, "load_average": os.getloadavg(),
               "machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "cpu": platform.processor(), "cpu_count": os.cpu_count()}}
    out = Path(args.output)
    atomic_write_json(out.with_suffix(".json"), summary)
    lines = [f"# Sweep speed: 8 LeNet-5 trainings on {args.dataset} ({args.epochs} epoch(s)), {args.workers} workers, "
             f"load average {os.getloadavg()[0]:.1f} at the end",
             "", "| engine | total (s) | start-up (s) | mean point (s) | speedup vs sequential | without start-up |",
             "|---|---|---|---|---|---|"]
    for engine, t in timings.items():
        speed = f"{t['speedup_total']:.2f}x" if "speedup_total" in t else "-"
        bare = f"{t['speedup_without_startup']:.2f}x" if "speedup_without_startup" in t else "-"
        lines.append(f"| {engine} | {t['total_seconds']:.1f} | {t['startup_seconds']:.1f} | "
                     f"{t['mean_point_seconds']:.1f} | {speed} | {bare} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
