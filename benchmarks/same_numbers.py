"""The same question through every command gives the same numbers (issue 8).

Trains (or loads) LeNet-5 on MNIST, then asks one question four ways through the real command line,
``nora eval``, ``nora curve``, ``nora walk --naive`` and ``nora walk`` (fast), at the same sites,
sigmas and seed, with absolute and with relative (std, maxabs) sigma, on more test images than the
calibration window. Reports whether the per-repeat accuracies are identical, and compares the fast
and the naive walk's mu at every site (issue 8 reproduced mu 0.604 vs 0.628 with --relative maxabs on
8,000 MNIST test images before the engine was unified).

    python benchmarks/same_numbers.py --data-root ../shared/data/mnist            # about 5 minutes idle
    python benchmarks/same_numbers.py --checkpoint runs/mnist-lenet5 --data-root ../shared/data/mnist

Writes <output>.json and <output>.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from nora.cli import main as nora
from nora.config import parse_config
from nora.io import atomic_write_json, atomic_write_text
from nora.train import train


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="the MNIST idx files")
    p.add_argument("--checkpoint", help="a trained LeNet-5 run; without it one is trained (2 epochs)")
    p.add_argument("--work-dir", default="runs/bench")
    p.add_argument("--test-subset", type=int, default=8000)
    p.add_argument("--calibration-samples", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="benchmarks/results/same_numbers")
    return p.parse_args()


def run(*argv) -> None:
    code = nora([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"nora {' '.join(map(str, argv))} exited with {code}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    checkpoint = args.checkpoint
    if checkpoint is None:
        config = parse_config({"name": "mnist-lenet5-same-numbers", "output_dir": args.work_dir,
                               "data": {"dataset": "mnist", "root": args.data_root}, "model": {"arch": "lenet5"},
                               "train": {"epochs": 2, "progress": False}})
        checkpoint = str(train(config).run_dir)
    out = Path(args.output)
    work = Path(args.work_dir) / "same-numbers"
    common = ["--checkpoint", checkpoint, "--data-root", args.data_root, "--test-subset", args.test_subset,
              "--repeats", args.repeats, "--seed", args.seed,
              "--set", f"eval.noise.calibration_samples={args.calibration_samples}"]
    grid = ["--sigma-range", "0.01", "100", "--per-decade", "1"]
    sigmas = ["0.01", "0.1", "1", "10", "100"]
    cases = []
    for relative in (None, "std", "maxabs"):
        rel = ["--relative", relative] if relative else []
        tag = relative or "absolute"
        timings = {}
        for name, argv in (("eval", ["eval", *common, *rel, "--sites", 3, "--sigma", *sigmas,
                                     "--output", work / f"eval-{tag}"]),
                           ("curve", ["curve", *common, *rel, "--sites", 3, *grid, "--output", work / f"curve-{tag}"]),
                           ("walk_naive", ["walk", *common, *rel, *grid, "--naive", "--output", work / f"naive-{tag}"]),
                           ("walk_fast", ["walk", *common, *rel, *grid, "--output", work / f"fast-{tag}"])):
            started = time.perf_counter()
            run(*argv)
            timings[name] = time.perf_counter() - started
        evaluated = [r["values"] for r in json.loads((work / f"eval-{tag}.json").read_text())["rows"]]
        curve = [r["values"] for r in
                 json.loads((work / f"curve-{tag}" / "curve.json").read_text())["curves"][0]["rows"]]
        naive = json.loads((work / f"naive-{tag}" / "walk.json").read_text())["runs"][0]
        fast = json.loads((work / f"fast-{tag}" / "walk.json").read_text())["runs"][0]
        naive_site3 = [r["values"] for r in next(s for s in naive["sites"] if s["site"]["index"] == 3)["rows"]]
        sites = []
        for a, b in zip(naive["sites"], fast["sites"]):
            mu_a, mu_b = a["midpoint"]["mu"], b["midpoint"]["mu"]
            sites.append({"site": a["site"]["index"], "name": a["site"]["name"], "path_fast": b["path"],
                          "mu_naive": mu_a, "mu_fast": mu_b, "identical_values": a["rows"] == b["rows"],
                          "delta_decades": abs(math.log10(mu_b / mu_a)) if mu_a and mu_b else None})
        cases.append({"sigma": tag, "eval_equals_curve": evaluated == curve, "eval_equals_naive_walk":
                      evaluated == naive_site3, "fast_equals_naive_every_site": all(s["identical_values"] for s in sites),
                      "max_mu_delta_decades": max((s["delta_decades"] for s in sites if s["delta_decades"] is not None),
                                                  default=None),
                      "eval_values_site3": evaluated, "sites": sites, "seconds": timings,
                      "calibration": naive["measurement"]["calibration"]})
    load = os.getloadavg()
    summary = {"checkpoint": checkpoint, "test_samples": args.test_subset, "calibration_samples": args.calibration_samples,
               "repeats": args.repeats, "seed": args.seed, "load_average": load, "cases": cases}
    atomic_write_json(out.with_suffix(".json"), summary)
    lines = [f"# Same numbers from every command: LeNet-5 / MNIST, {args.test_subset} test images, "
             f"calibration on {args.calibration_samples}, {args.repeats} repeats, seed {args.seed}", "",
             f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", "",
             "| sigma | eval = curve | eval = naive walk | fast walk = naive walk (all sites) | max mu difference (decades) "
             "| naive walk s | fast walk s |", "|---|---|---|---|---|---|---|"]
    for c in cases:
        delta = "-" if c["max_mu_delta_decades"] is None else f"{c['max_mu_delta_decades']:.3g}"
        lines.append(f"| {c['sigma']} | {c['eval_equals_curve']} | {c['eval_equals_naive_walk']} | "
                     f"{c['fast_equals_naive_every_site']} | {delta} | {c['seconds']['walk_naive']:.1f} | "
                     f"{c['seconds']['walk_fast']:.1f} |")
    maxabs = next(c for c in cases if c["sigma"] == "maxabs")
    lines += ["", "relative maxabs, mu per site (naive / fast): " + ", ".join(
        f"{s['site']}: {s['mu_naive'] if s['mu_naive'] is None else round(s['mu_naive'], 4)} / "
        f"{s['mu_fast'] if s['mu_fast'] is None else round(s['mu_fast'], 4)}" for s in maxabs["sites"])]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
