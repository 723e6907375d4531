"""Walking Noise speed: the naive dense-grid walk against the fast walk, with both walks' mu per site.

The naive walk is ``nora.analysis.naive_walk``: for every site, every sigma of the dense research
grid and every repeat, a full forward pass over the test set with the ``NoiseInjector``. The fast
walk is ``nora.analysis.walk`` in adaptive mode (only mu is asked for): prefix caching on the chain
split, repeats packed into one batch, a coarse early-stopped scan, bisection and a small fit.

Target (issue 10): LeNet-5 on all 10,000 MNIST test images, all sites, additive noise, 49 sigmas at
4 per decade (1e-2 .. 1e10: the layer-wise research grid, which goes far beyond 1e2) and 5 repeats:
the fast walk >= 20x faster, every site's mu within 0.05 decades of the dense-grid value.

    python benchmarks/walk_speed.py --data-root /path/to/mnist                     # trains LeNet-5 first
    python benchmarks/walk_speed.py --data-root /path/to/mnist --checkpoint runs/mnist-lenet5
    python benchmarks/walk_speed.py --dataset digits --test-subset 300 --sigma-range 1e-2 1e2 \
        --per-decade 2 --repeats 2 --train-epochs 10 --output /tmp/walk_speed            # a quick check

Writes <output>.json (everything) and <output>.md (the table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from nora import NoiseSpec
from nora.analysis import log_grid, naive_walk, walk
from nora.config import parse_config
from nora.data import load_dataset
from nora.io import atomic_write_json, atomic_write_text
from nora.noise import make_noise
from nora.train import load_model, train


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root", help="folder with the dataset files (e.g. the four MNIST idx files)")
    p.add_argument("--checkpoint", help="a trained LeNet-5 run folder; without it one is trained first")
    p.add_argument("--work-dir", default="runs/bench", help="where the quickly trained LeNet-5 goes")
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--noise", default="additive", choices=["additive", "multiplicative"])
    p.add_argument("--noise-mode", default="exact", choices=["exact", "fast"], help="for both walks")
    p.add_argument("--sigma-range", type=float, nargs=2, default=[1e-2, 1e10])
    p.add_argument("--per-decade", type=float, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--test-subset", type=int, help="first N test samples only (quick checks)")
    p.add_argument("--chunk-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="torch threads for both walks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="benchmarks/results/walk_speed", help="output path stem (.json, .md)")
    return p.parse_args()


def checkpoint_model(args):
    if args.checkpoint:
        return load_model(args.checkpoint)[0]
    config = parse_config({"name": f"{args.dataset}-lenet5-bench", "output_dir": args.work_dir, "seed": args.seed,
                           "data": {"dataset": args.dataset, "root": args.data_root},
                           "model": {"arch": "lenet5"}, "train": {"epochs": args.train_epochs, "progress": False}})
    return train(config).model


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = checkpoint_model(args).eval()
    test = load_dataset(args.dataset, "test", root=args.data_root)
    if args.test_subset:
        test = test.subset(args.test_subset)
    noise = NoiseSpec(activation=make_noise(args.noise, 0.0), noise_mode=args.noise_mode)
    grid = log_grid(*args.sigma_range, args.per_decade)
    started = time.perf_counter()
    naive = naive_walk(model, test.x, test.y, noise, grid, num_classes=test.num_classes, repeats=args.repeats,
                       seed=args.seed, chunk_size=args.chunk_size)
    naive_s = time.perf_counter() - started
    started = time.perf_counter()
    fast = walk(model, test.x, test.y, noise, num_classes=test.num_classes, sigma_range=tuple(args.sigma_range),
                repeats=args.repeats, seed=args.seed, chunk_size=args.chunk_size)
    fast_s = time.perf_counter() - started

    rows = []
    for a, b in zip(naive.sites, fast.sites):
        both = a.midpoint.found and b.midpoint.found
        rows.append({"site": a.site.index, "name": a.site.name, "type": a.site.module_type, "path": b.path,
                     "mu_dense": a.midpoint.mu, "mu_fast": b.midpoint.mu,
                     "status_dense": a.midpoint.status, "status_fast": b.midpoint.status,
                     "delta_decades": abs(math.log10(b.midpoint.mu / a.midpoint.mu)) if both else None,
                     "seconds_dense": a.seconds, "seconds_fast": b.seconds, "evaluations_fast": len(b.measurements),
                     "samples_fast": sum(m.samples for m in b.measurements)})
    deltas = [r["delta_decades"] for r in rows if r["delta_decades"] is not None]
    agree = all(r["status_dense"] == r["status_fast"] for r in rows)
    summary = {
        "dataset": args.dataset, "test_samples": len(test), "noise": args.noise, "noise_mode": args.noise_mode,
        "sigmas": len(grid),
        "sigma_range": args.sigma_range, "per_decade": args.per_decade, "repeats": args.repeats,
        "threads": args.threads, "chunk_size": args.chunk_size, "clean_accuracy": naive.clean,
        "naive_seconds": naive_s, "fast_seconds": fast_s, "speedup": naive_s / fast_s,
        "max_delta_decades": max(deltas) if deltas else None, "statuses_agree": agree,
        "target_met": naive_s / fast_s >= 20 and agree and bool(deltas) and all(d <= 0.05 for d in deltas),
        "load_average": os.getloadavg(),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
                    "cpu_count": os.cpu_count()},
    }
    out = Path(args.output)
    atomic_write_json(out.with_suffix(".json"), {**summary, "sites": rows})
    lines = [
        (f"# Walk speed: {args.dataset} LeNet-5, {len(test)} test images, {args.noise}, {len(grid)} sigmas "
         f"({args.sigma_range[0]:g}..{args.sigma_range[1]:g}, {args.per_decade:g}/decade), {args.repeats} repeats, "
         f"{args.threads} thread(s)"),
        "",
        (f"naive dense-grid walk {naive_s:.1f} s, fast walk {fast_s:.1f} s: **{naive_s / fast_s:.1f}x**; "
         f"largest mu difference {summary['max_delta_decades'] if deltas else float('nan'):.3f} decades; "
         f"target (>= 20x, <= 0.05 decades) {'met' if summary['target_met'] else 'NOT met'}."),
        "",
        "| site | name | type | fast path | mu dense grid | mu fast | difference (decades) | fast evaluations |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = "-" if r["delta_decades"] is None else f"{r['delta_decades']:.3f}"
        lines.append(f"| {r['site']} | {r['name']} | {r['type']} | {r['path']} | "
                     f"{_mu(r['mu_dense'], r['status_dense'])} | {_mu(r['mu_fast'], r['status_fast'])} | {delta} | "
                     f"{r['evaluations_fast']} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({k: v for k, v in summary.items() if k != "machine"}, indent=1))


def _mu(value, status):
    return f"{value:.4g}" if value is not None else status


if __name__ == "__main__":
    main()
