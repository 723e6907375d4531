"""Fast against exact noise mode: accuracy-vs-sigma curves of LeNet-5 on MNIST, and their cost.

    python benchmarks/fast_noise_curves.py --data-root ../shared/data/mnist --checkpoint RUN_DIR \
        [--noise additive multiplicative] [--sigmas 0.1 0.2 0.5 1 2] [--repeats 5]

Without --checkpoint a LeNet-5 is trained first (--train-epochs, default 2). For each noise kind,
both modes measure the same sigma grid with the measurement engine (noise at all 12 sites, relative
to each site's clean std, the 10,000 test images, ``--repeats`` noise realisations each). At each
sigma the two means must agree within five standard errors of their difference; the standard error
comes from the spread of the repeat values (the inputs are shared, so that spread is the noise's
own). Writes <output>.json and <output>.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from nora import NoiseSpec
from nora.config import parse_config
from nora.data import load_dataset
from nora.io import atomic_write_json, atomic_write_text
from nora.measure import Engine
from nora.noise import make_noise
from nora.train import load_model, train


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root")
    p.add_argument("--checkpoint", help="a trained LeNet-5 MNIST run folder; without it one is trained first")
    p.add_argument("--work-dir", default="runs/bench")
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--noise", nargs="+", default=["additive", "multiplicative"])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.5, 1.0, 2.0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="benchmarks/results/fast_noise_curves")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = load_model(args.checkpoint)[0]
    else:
        config = parse_config({"name": "mnist-lenet5-fast-noise", "output_dir": args.work_dir, "seed": args.seed,
                               "data": {"dataset": "mnist", "root": args.data_root}, "model": {"arch": "lenet5"},
                               "train": {"epochs": args.train_epochs, "progress": False}})
        model = train(config).model
    model.eval()
    test = load_dataset("mnist", "test", root=args.data_root)
    rows, seconds = [], {}
    for kind in args.noise:
        curves = {}
        for mode in ("exact", "fast"):
            spec = NoiseSpec(activation=make_noise(kind, 1.0, relative="std"), noise_mode=mode)
            started = time.perf_counter()
            with Engine(model, test.x, test.y, spec, repeats=args.repeats, seed=args.seed) as engine:
                curves[mode] = [m.values for m in engine.accuracy(args.sigmas)]
                clean = engine.clean
            seconds[f"{kind}_{mode}"] = time.perf_counter() - started
        for sigma, exact, fast in zip(args.sigmas, curves["exact"], curves["fast"]):
            spread = np.var(exact, ddof=1) / len(exact) + np.var(fast, ddof=1) / len(fast)
            se = math.sqrt(spread + 1 / len(test) ** 2)
            diff = float(np.mean(fast) - np.mean(exact))
            rows.append({"noise": kind, "sigma": sigma, "exact_mean": float(np.mean(exact)),
                         "fast_mean": float(np.mean(fast)), "difference": diff, "se": se, "z": diff / se,
                         "agree": abs(diff) < 5 * se, "exact": exact, "fast": fast})
    summary = {"model": "LeNet-5", "checkpoint": args.checkpoint, "clean_accuracy": clean,
               "test_samples": len(test), "repeats": args.repeats, "sites": "all 12, relative std",
               "seconds": seconds, "all_agree": all(r["agree"] for r in rows),
               "max_abs_z": max(abs(r["z"]) for r in rows),
               "load_average": os.getloadavg(), "threads": args.threads,
               "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count()}}
    out = Path(args.output)
    atomic_write_json(out.with_suffix(".json"), {**summary, "rows": rows})
    title = (f"# Fast vs exact noise mode: LeNet-5 / MNIST ({len(test)} test images, clean {clean:.4f}), "
             f"all 12 sites, relative sigma, {args.repeats} repeats")
    verdict = (f"all sigmas agree within 5 standard errors: **{summary['all_agree']}** "
               f"(largest |z| {summary['max_abs_z']:.2f}); load average {os.getloadavg()[0]:.1f}")
    lines = [title, "", verdict, "",
             "| noise | sigma | exact mean | fast mean | difference | s.e. | z |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['noise']} | {r['sigma']:g} | {r['exact_mean']:.4f} | {r['fast_mean']:.4f} | "
              f"{r['difference']:+.4f} | {r['se']:.4f} | {r['z']:+.2f} |" for r in rows]
    lines += ["", "| run | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in seconds.items()]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
