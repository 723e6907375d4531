"""Tailored against uniform repeated execution at equal cost (the research's tailored multi-execution).

A walk gives each site of a trained network its midpoint noise level mu_i (additive noise, one site
at a time). Under additive noise of one sigma at every site, uniform repetition R everywhere is
compared with the tailored allocation (``nora.analysis.mitigation.tailored_repeats``) that spends
the same extra analog evaluations per sample (elements per site x (R_i - 1)), on the test set, for
several sigmas and noise seeds.

    python benchmarks/study_analog_mitigation.py --checkpoint RUN_DIR --data-root ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import nora
from nora.analysis import walk
from nora.analysis.mitigation import compare_at_equal_cost
from nora.data import load_dataset
from nora.sim.spec import NoiseSpec
from nora.train import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.5, 0.8])
    parser.add_argument("--uniform", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/issue9"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    model, _ = load_model(args.checkpoint)
    model.eval()
    test = load_dataset(args.dataset, "test", root=args.data_root)
    x, y = test.x[:args.test_subset], test.y[:args.test_subset]
    result = walk(model, x, y, NoiseSpec(activation=nora.GaussianAdditive(0.1)), num_classes=test.num_classes,
                  sigma_range=(1e-2, 1e2), repeats=3, seed=0)
    mu = [s.midpoint.mu for s in result.sites]
    sites = [s.site for s in result.sites]
    costs = [s.numel for s in sites]
    rows = []
    for sigma in args.sigmas:
        for uniform in args.uniform:
            out = compare_at_equal_cost(model, x, y, nora.GaussianAdditive(sigma), mu, costs, uniform,
                                        realisations=args.seeds)
            row = {"sigma": sigma, "uniform_R": uniform, **out}
            rows.append(row)
            print(sigma, uniform, {k: round(v["mean"], 4) for k, v in out["policies"].items()}, flush=True)
    report = {"checkpoint": args.checkpoint, "test_samples": len(y), "seeds": args.seeds,
              "clean": result.clean, "sites": [{"index": s.index, "name": s.name, "numel": s.numel, "mu": m}
                                               for s, m in zip(sites, mu)],
              "seconds": time.time() - started, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study_analog_mitigation.json").write_text(json.dumps(report, indent=2))
    lines = ["| sigma | uniform R | extra evals / sample | single | uniform | tailored | tailored R per site |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        p = row["policies"]

        def cell(name):
            accs = p[name]["accuracy"]
            half = 1.96 * float(np.std(accs, ddof=1)) / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
            return f"{np.mean(accs):.4f} ± {half:.4f}"
        lines.append(f"| {row['sigma']} | {row['uniform_R']} | {row['budget']:.0f} | {cell('single')} | "
                     f"{cell('uniform')} | {cell('tailored')} | {p['tailored']['repeats']} |")
    (args.out / "study_analog_mitigation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
