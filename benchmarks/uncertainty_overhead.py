"""Training cost of M repulsive heads vs one model vs a deep ensemble of M, measured in one run.

Every variant trains on the same batches (MNIST subset, or the bundled digits without --data-root)
with the same step (forward, objective, backward, Adam); the variants take turns in slices of a few
steps, so changes in machine load hit all of them alike. Each variant's median step time times the
steps of one epoch is its epoch time, as wall-clock and as the thread's CPU time (robust to other
processes on a shared machine); ratios are to the single model and to the deep ensemble (its M
members trained jointly: one optimizer over their parameters, the same batches). ``--repeats R``
repeats the whole measurement and reports the median of each ratio. Targets (issue 13): repulsive
heads <= 1.2x a single model's epoch and <= 1/M of the deep ensemble's.

    python benchmarks/uncertainty_overhead.py --data-root ../shared/data/mnist --subset 10000 --rounds 60 --repeats 3
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


def measure(variants, models, objectives, optimizers, batches, per_epoch, rounds, slice_steps, StepContext):
    """One round-robin measurement: per variant the median wall and CPU seconds of one step."""
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    cursor = 0
    for rnd in range(rounds + 1):  # round 0 warms up and is dropped
        for key in variants:
            model, objective, optimizer = models[key], objectives[key], optimizers[key]
            model.train()
            started, cpu_started = time.perf_counter(), time.thread_time()
            for i in range(slice_steps):
                xb, yb = batches[(cursor + i) % len(batches)]
                optimizer.zero_grad(set_to_none=True)
                objective.loss(model, xb, yb, StepContext(0, (cursor + i) % per_epoch, per_epoch, 1)).backward()
                optimizer.step()
            if rnd:
                wall[key].append((time.perf_counter() - started) / slice_steps)
                cpu[key].append((time.thread_time() - cpu_started) / slice_steps)
        cursor += slice_steps
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder of --dataset (default: the bundled digits)")
    parser.add_argument("--dataset", default="mnist", help="data set read from --data-root (mnist, cifar10, ...)")
    parser.add_argument("--backbone", default="lenet5", help="zoo model for every variant")
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=60, help="round-robin rounds (median over them)")
    parser.add_argument("--slice", type=int, default=5, help="training steps per variant per round")
    parser.add_argument("--repeats", type=int, default=1, help="whole measurements; the median ratio is reported")
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
    ensemble_key = f"ensemble-{m}"
    variants[ensemble_key] = ("ensemble", {"member": args.backbone, "members": m}, "heads_nll", {})

    models = {k: build_seeded(arch, 0, input_shape=shape, num_classes=classes, **kw)
              for k, (arch, kw, _, _) in variants.items()}
    objectives = {k: make_objective(obj, **opts) for k, (_, _, obj, opts) in variants.items()}
    optimizers = {k: torch.optim.Adam([p for p in models[k].parameters() if p.requires_grad], lr=1e-3)
                  for k in variants}
    loader = make_loader(data, batch_size=128, shuffle=True, seed=0, drop_last=True)
    batches = list(loader)
    per_epoch = len(loader)
    load_before = os.getloadavg()
    runs = [measure(variants, models, objectives, optimizers, batches, per_epoch, args.rounds, args.slice, StepContext)
            for _ in range(args.repeats)]
    load_after = os.getloadavg()

    def median_of(clock: int, key: str, ref: str | None = None) -> float:
        return statistics.median(run[clock][key] / (run[clock][ref] if ref else 1.0 / per_epoch) for run in runs)

    rows = []
    for key in variants:
        rows.append({
            "variant": key,
            "epoch_seconds": median_of(0, key), "cpu_epoch_seconds": median_of(1, key),
            "vs_single": median_of(0, key, "single"), "vs_ensemble": median_of(0, key, ensemble_key),
            "cpu_vs_single": median_of(1, key, "single"), "cpu_vs_ensemble": median_of(1, key, ensemble_key),
            "per_repeat_vs_single": [run[0][key] / run[0]["single"] for run in runs],
            "per_repeat_cpu_vs_single": [run[1][key] / run[1]["single"] for run in runs],
            "parameters": sum(p.numel() for p in models[key].parameters()),
            "trainable": sum(p.numel() for p in models[key].parameters() if p.requires_grad),
        })
    result = {"data": f"{name} train, {len(data)} samples, batch 128", "backbone": args.backbone, "heads": m,
              "threads": args.threads, "rounds": args.rounds, "slice": args.slice, "repeats": args.repeats,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "load_average_before": list(load_before),
              "load_average_after": list(load_after), "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"{args.backbone} on {result['data']}; M = {m}; {args.repeats} x {args.rounds} rounds of {args.slice} steps; "
          f"load average {' '.join(f'{v:.2f}' for v in load_before)} before, "
          f"{' '.join(f'{v:.2f}' for v in load_after)} after")
    print(f"{'variant':44s} {'s/epoch':>8s} {'x single':>9s} {'x ens.':>7s} {'cpu s':>7s} {'cpu x single':>12s} "
          f"{'cpu x ens.':>10s} {'params':>8s} {'trainable':>9s}")
    for r in rows:
        print(f"{r['variant']:44s} {r['epoch_seconds']:8.3f} {r['vs_single']:9.3f} {r['vs_ensemble']:7.3f} "
              f"{r['cpu_epoch_seconds']:7.3f} {r['cpu_vs_single']:12.3f} {r['cpu_vs_ensemble']:10.3f} "
              f"{r['parameters']:8d} {r['trainable']:9d}")
    print(f"(M independent single models would cost {m}.000 x single by construction; the jointly trained "
          f"ensemble above costs {rows[-1]['vs_single']:.3f} x wall, {rows[-1]['cpu_vs_single']:.3f} x CPU)")


if __name__ == "__main__":
    main()
