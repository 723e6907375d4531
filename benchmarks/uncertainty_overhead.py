"""Training cost of M repulsive heads vs one model vs a deep ensemble of M, measured in one run.

Every variant trains on the same batches (MNIST subset, or the bundled digits without --data-root)
with the same step (forward, objective, backward, Adam); the variants take turns in slices of a few
steps, so changes in machine load hit all of them alike, and the median step time times the steps
of one epoch is reported with ratios to the single model. Targets (issue 13):
repulsive heads <= 1.2x a single model's epoch and <= 1/M of the deep ensemble's.

    python benchmarks/uncertainty_overhead.py --data-root ../shared/data/mnist --subset 10000 --rounds 40
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder of --dataset (default: the bundled digits)")
    parser.add_argument("--dataset", default="mnist", help="data set read from --data-root (mnist, cifar10, ...)")
    parser.add_argument("--backbone", default="lenet5", help="zoo model for every variant")
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=40, help="round-robin rounds (median over them)")
    parser.add_argument("--slice", type=int, default=5, help="training steps per variant per round")
    parser.add_argument("--heads", type=int, default=5)
    parser.add_argument("--repulsion-batch", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="benchmarks/results/uncertainty_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from nora.data import load_dataset, make_loader
    from nora.train.objectives import StepContext, make_objective
    from nora.uncertainty.fit import build_seeded

    name = args.dataset if args.data_root else "digits"
    data = load_dataset(name, "train", root=args.data_root)
    data = data.subset(args.subset) if args.subset else data
    shape, classes, m = data.input_shape, data.num_classes, args.heads
    heads = {"backbone": args.backbone, "heads": m}
    variants = {"single": (args.backbone, {}, "cross_entropy", {})}
    variants[f"multihead-{m} no repulsion"] = ("multihead", heads, "heads_nll", {})
    for b in args.repulsion_batch:
        variants[f"multihead-{m} repulsive (augment, {b}/step)"] = ("multihead", heads, "repulsive", {"batch_size": b})
    variants[f"multihead-{m} repulsive, frozen backbone"] = (
        "multihead", {**heads, "freeze_backbone": True}, "repulsive", {"batch_size": args.repulsion_batch[0]})
    variants[f"ensemble-{m}"] = ("ensemble", {"member": args.backbone, "members": m}, "heads_nll", {})

    models = {k: build_seeded(arch, 0, input_shape=shape, num_classes=classes, **kw)
              for k, (arch, kw, _, _) in variants.items()}
    objectives = {k: make_objective(obj, **opts) for k, (_, _, obj, opts) in variants.items()}
    optimizers = {k: torch.optim.Adam([p for p in models[k].parameters() if p.requires_grad], lr=1e-3)
                  for k in variants}
    loader = make_loader(data, batch_size=128, shuffle=True, seed=0, drop_last=True)
    batches = list(loader)
    per_epoch = len(loader)
    step_times: dict[str, list[float]] = {k: [] for k in variants}
    # Round-robin in short slices (a few steps per variant), so load changes hit every variant alike;
    # the per-step median times the steps of one epoch is the epoch time.
    cursor = 0
    for rnd in range(args.rounds + 1):  # round 0 warms up and is dropped
        for key in variants:
            model, objective, optimizer = models[key], objectives[key], optimizers[key]
            model.train()
            started = time.perf_counter()
            for i in range(args.slice):
                xb, yb = batches[(cursor + i) % len(batches)]
                optimizer.zero_grad(set_to_none=True)
                objective.loss(model, xb, yb, StepContext(0, (cursor + i) % per_epoch, per_epoch, 1)).backward()
                optimizer.step()
            if rnd:
                step_times[key].append((time.perf_counter() - started) / args.slice)
        cursor += args.slice
    single = statistics.median(step_times["single"]) * per_epoch
    ensemble = statistics.median(step_times[f"ensemble-{m}"]) * per_epoch
    rows = []
    for key, values in step_times.items():
        med = statistics.median(values) * per_epoch
        params = sum(p.numel() for p in models[key].parameters())
        trainable = sum(p.numel() for p in models[key].parameters() if p.requires_grad)
        rows.append({"variant": key, "epoch_seconds": med, "vs_single": med / single,
                     "vs_ensemble": med / ensemble, "parameters": params, "trainable": trainable})
    load = os.getloadavg()
    result = {"data": f"{name} train, {len(data)} samples, batch 128", "backbone": args.backbone, "heads": m, "threads": args.threads,
              "rounds": args.rounds, "slice": args.slice,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average": list(load), "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"{args.backbone} on {result['data']}; M = {m}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'variant':48s} {'s/epoch':>8s} {'x single':>9s} {'x ensemble':>10s} {'params':>8s} {'trainable':>9s}")
    for r in rows:
        print(f"{r['variant']:48s} {r['epoch_seconds']:8.3f} {r['vs_single']:9.3f} {r['vs_ensemble']:10.3f} "
              f"{r['parameters']:8d} {r['trainable']:9d}")


if __name__ == "__main__":
    main()
