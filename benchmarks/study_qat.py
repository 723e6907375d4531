"""Study: is a quantisation-aware-trained network with constant activation scales more robust to
additive noise than the float network, and how does it compare with noisy training?

    nice -n 5 python benchmarks/study_qat.py --data-root ../shared/data/mnist [--epochs 6] [--quick]

MNIST, LeNet-5 (no BN, max-pool), Adam 1e-3 with cosine annealing, batch 128. Variants:

- ``float``: the float network;
- ``qat8 const s``: 8-bit weights and activations, activation clipping value M[8] * s = 256 s
  fixed (s = 1/64, 1/16, 1/4, 1, 4: activations clipped at 4, 16, 64, 256, 1024, in steps of
  about s);
- ``qat8 learned s0``: the same quantisers with the clipping value learned, initialised at 256 s0;
- ``qat4 const``: 4-bit weights and activations, clipping value 15 s with s = 1/4 (3.75);
- ``float NT``: float network trained with additive noise sigma_train at every site;
- ``qat8 const + NT``: both.

Every model is evaluated with global additive noise (every site, input included, noise after the
quantised activation) over a log grid of sigma, 4 points per decade from 0.01 to 100, R repeats on
the first N test images. The midpoint mu (accuracy halfway between clean and chance) comes from
``nora.analysis.midpoint`` (sigmoid fit, falling back to interpolation). The main variants are
trained with several seeds; mu is reported as mean and spread over seeds. The RMS of the clean
activations after the ReLUs is reported beside mu: absolute noise hurts less where activations
are large.

Runs resume (checkpoints under --runs); each model's curve is cached as JSON under --out.
Writes <out>/study.json, <out>/study.md and the plots.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nora.analysis.curves import accuracy_curve, log_grid
from nora.analysis.midpoint import aggregate
from nora.analysis.plots import accuracy_vs_sigma, bars
from nora.config import parse_config
from nora.io import atomic_write_json, atomic_write_text
from nora.noise import GaussianAdditive
from nora.train import train
from nora.train.setup import load_data

SIGMA_TRAIN = 0.5


def variants(quick: bool) -> dict[str, dict[str, Any]]:
    """label -> model arch/kwargs and training noise; ``seeds`` says how many seeds each gets."""
    main = {
        "float": {"arch": "lenet5", "kwargs": {}},
        "qat8 const s=1/16": {"arch": "lenet5-qat", "kwargs": {"act_scale": 1 / 16}},
        "qat8 learned s0=1/16": {"arch": "lenet5-qat", "kwargs": {"act_scale": 1 / 16, "scaling": "learned"}},
        "qat8 const s=1": {"arch": "lenet5-qat", "kwargs": {"act_scale": 1.0}},
        "qat8 const s=4": {"arch": "lenet5-qat", "kwargs": {"act_scale": 4.0}},
        f"float NT {SIGMA_TRAIN}": {"arch": "lenet5", "kwargs": {}, "noise": SIGMA_TRAIN},
    }
    extra = {
        "qat8 const s=1/64": {"arch": "lenet5-qat", "kwargs": {"act_scale": 1 / 64}},
        "qat8 const s=1/4": {"arch": "lenet5-qat", "kwargs": {"act_scale": 1 / 4}},
        "qat8 learned s0=4": {"arch": "lenet5-qat", "kwargs": {"act_scale": 4.0, "scaling": "learned"}},
        "qat4 const s=1/4": {"arch": "lenet5-qat", "kwargs": {"bits": 4, "act_scale": 1 / 4}},
        f"qat8 const s=1/16 + NT {SIGMA_TRAIN}": {"arch": "lenet5-qat", "kwargs": {"act_scale": 1 / 16},
                                                   "noise": SIGMA_TRAIN},
    }
    if quick:
        return {"float": main["float"], "qat8 const s=1/16": main["qat8 const s=1/16"]}
    return {**{k: {**v, "main": True} for k, v in main.items()}, **{k: {**v, "main": False} for k, v in extra.items()}}


def run_name(label: str, seed: int) -> str:
    safe = label.replace(" ", "_").replace("/", "-").replace("=", "").replace("+", "plus")
    return f"{safe}_seed{seed}"


def make_config(args, label: str, spec: dict[str, Any], seed: int):
    noise = {"kind": "additive", "sigma": spec["noise"], "sites": "all"} if spec.get("noise") else None
    return parse_config({
        "name": run_name(label, seed),
        "output_dir": args.runs,
        "seed": seed,
        "data": {"dataset": "mnist", "root": args.data_root, "batch_size": 128, "test_batch_size": 1000,
                 "train_subset": args.train_subset},
        "model": {"arch": spec["arch"], "kwargs": spec["kwargs"]},
        "train": {"epochs": args.epochs, "lr": 1e-3, "scheduler": "cosine", "progress": False,
                  "threads": args.threads},
        "train_noise": noise,
    }, f"study {label}")


@torch.no_grad()
def relu_rms(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Mean over the ReLU sites of the RMS of their clean outputs: the signal the noise competes with."""
    values = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: values.append(float(out.pow(2).mean().sqrt())))
             for m in model.modules() if type(m).__name__ in ("ReLU", "QuantReLU")]
    model.eval()
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return float(np.mean(values))


def evaluate(args, label: str, seed: int, model, x, y, grid) -> dict[str, Any]:
    cache = Path(args.out) / "curves" / f"{run_name(label, seed)}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    started = time.perf_counter()
    curve = accuracy_curve(model, x, y, GaussianAdditive(0.0), grid, num_classes=10, repeats=args.repeats,
                           seed=1000 + seed, label=label)
    result = {**curve.to_dict(), "seed": seed, "relu_rms": relu_rms(model, x[:1000]),
              "eval_seconds": time.perf_counter() - started}
    atomic_write_json(cache, result)
    return result


def summary_rows(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    from nora.analysis.midpoint import Midpoint

    rows = []
    for label, runs in results.items():
        mids = [Midpoint(r["midpoint"]["mu"], r["midpoint"]["status"]) for r in runs]
        agg = aggregate(mids)
        rows.append({
            "label": label,
            "seeds": len(runs),
            "clean": float(np.mean([r["clean_accuracy"] for r in runs])),
            "mu_mean": agg["mu_mean"],
            "mu_std": agg["mu_std"],
            "mu_values": [r["midpoint"]["mu"] for r in runs],
            "mu_status": [r["midpoint"]["status"] for r in runs],
            "relu_rms": float(np.mean([r["relu_rms"] for r in runs])),
        })
    return rows


def markdown(rows: list[dict[str, Any]], args, grid) -> str:
    lines = [
        (f"MNIST LeNet-5, {args.epochs} epochs, global additive noise, {args.repeats} repeats on "
         f"{args.test_subset} test images, sigma grid {grid[0]:g}..{grid[-1]:g} ({len(grid)} points)"),
        "",
        "| variant | seeds | clean acc | midpoint mu (mean +- std over seeds) | mu per seed | ReLU output RMS |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = "" if r["mu_std"] is None or r["seeds"] < 2 or not math.isfinite(r["mu_std"]) else f" +- {r['mu_std']:.3f}"
        mean = "n/a" if r["mu_mean"] is None else f"{r['mu_mean']:.3f}{spread}"
        per_seed = ", ".join("n/a" if v is None else f"{v:.3f}" for v in r["mu_values"])
        lines.append(f"| {r['label']} | {r['seeds']} | {r['clean']:.4f} | {mean} | {per_seed} | {r['relu_rms']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder with the MNIST idx files")
    parser.add_argument("--runs", default="runs/study_qat", help="checkpoints (resumable)")
    parser.add_argument("--out", default="benchmarks/results/issue5", help="results, plots and curve cache")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the main variants (others get one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-subset", type=int, default=5000)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny setting to prove the script runs")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds, args.repeats = 1, 1, 1
        args.train_subset, args.test_subset = 2000, 500
    grid = log_grid(0.01, 100.0, 2 if args.quick else 4)
    torch.set_num_threads(args.threads)

    results: dict[str, list[dict[str, Any]]] = {}
    test = None
    for label, spec in variants(args.quick).items():
        seeds = range(args.seeds if spec.get("main", True) else 1)
        for seed in seeds:
            config = make_config(args, label, spec, seed)
            if test is None:
                _, test = load_data(config.data)
                x, y = test.x[: args.test_subset], test.y[: args.test_subset]
            started = time.perf_counter()
            run = train(config)
            result = evaluate(args, label, seed, run.model, x, y, grid)
            results.setdefault(label, []).append(result)
            mu = result["midpoint"]["mu"]
            print(f"{label:>32} seed {seed}: clean {result['clean_accuracy']:.4f}  mu "
                  f"{'n/a' if mu is None else f'{mu:.3f}'} ({result['midpoint']['status']})  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)

    out = Path(args.out)
    rows = summary_rows(results)
    atomic_write_json(out / "study.json", {"grid": grid, "epochs": args.epochs, "repeats": args.repeats,
                                           "test_subset": args.test_subset, "summary": rows, "runs": results})
    table = markdown(rows, args, grid)
    atomic_write_text(out / "study.md", table)
    curves = {label: runs[0]["rows"] for label, runs in results.items()}
    accuracy_vs_sigma(curves, out / "accuracy_vs_sigma.png", chance=0.1,
                      title="MNIST LeNet-5: global additive noise (seed 0)")
    found = [r for r in rows if r["mu_mean"] is not None]
    bars([r["label"] for r in found], [r["mu_mean"] for r in found], out / "midpoints.png",
         errors=[r["mu_std"] if r["mu_std"] is not None and math.isfinite(r["mu_std"]) else 0.0 for r in found],
         ylabel="midpoint noise level mu", title="MNIST LeNet-5: global additive midpoint")
    print(table)


if __name__ == "__main__":
    main()
