"""VANT overhead: training time per epoch of clean, NT and VANT on the same model and data, in one run.

    python benchmarks/vant_overhead.py [--dataset cifar10 --data-root ../shared/data/cifar10] \
        [--noise additive] [--out benchmarks/out/vant_overhead.json]

Targets (issue 10): VANT / NT <= 1.05 (VANT only samples sigma differently: B numbers per batch) and
NT / clean <= 1.3, both in fast noise mode (the Gaussian bank); NT in exact mode is measured beside
them. Each variant trains the same LeNet-5 from the same initial weights over the same
batches with the trainer's own per-batch steps (schedule -> ``injector.sigma_scale`` -> forward,
backward, Adam step), each on its own copy of the model and optimiser. The variants take turns in
slices of a few steps (``--slice``) for ``--rounds`` rounds, so changes in machine speed hit all of
them alike; a variant's epoch is its median step time times the batches of an epoch, and the whole
measurement is repeated ``--repeats`` times with the median of each ratio reported (this VM's speed
wanders by 10-20 % within seconds, which whole-epoch timings caught unevenly). Without --data-root
the images are random (timing does not depend on the pixel values). Record figures only on an
otherwise idle machine.
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
from torch import nn

import nora
from nora.models import build_model
from nora.noise import make_noise
from nora.train.schedules import make_schedule

SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}


def data(dataset: str, data_root: str | None, samples: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if data_root:
        from nora.data import load_dataset

        train = load_dataset(dataset, split="train", root=data_root).subset(samples)
        return train.x, train.y, f"{dataset} train set, first {len(train)} images"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *SHAPES[dataset], generator=generator)
    return x, torch.randint(0, 10, (samples,), generator=generator), f"{samples} random {dataset}-shaped images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(SHAPES), default="cifar10")
    parser.add_argument("--data-root")
    parser.add_argument("--samples", type=int, default=50_000, help="images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--noise", choices=["additive", "multiplicative", "combined"], default="additive")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=40, help="round-robin rounds (median over them)")
    parser.add_argument("--slice", type=int, default=4, help="training steps per variant per round")
    parser.add_argument("--repeats", type=int, default=3, help="whole measurements; the median ratio is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/vant_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y, source = data(args.dataset, args.data_root, args.samples)
    batches = [(x[i : i + args.batch_size], y[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)]
    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=tuple(x.shape[1:]), num_classes=10, pool="avg")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = nn.CrossEntropyLoss()
    vant = make_schedule("vant", sigma=args.sigma, epochs=1, seed=0)

    def variant(mode: str | None, schedule=None):
        """A model, optimiser and step of one variant (noise attached in ``mode``, levels from ``schedule``)."""
        model = build_model("lenet5", input_shape=tuple(x.shape[1:]), num_classes=10, pool="avg")
        model.load_state_dict(initial)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        injector = None
        if mode is not None:
            spec = nora.NoiseSpec(activation=make_noise(args.noise, args.sigma), noise_mode=mode)
            injector = nora.attach(model, spec, seed=0, example_input=x[:2], when="train")

        def step(index: int) -> None:
            xb, yb = batches[index % len(batches)]
            if schedule is not None:
                injector.sigma_scale = schedule.scale(0, index % len(batches), len(yb))
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            optimizer.step()

        return step

    steps = {"clean": variant(None), "nt": variant("fast"), "vant": variant("fast", vant),
             "nt_exact": variant("exact"), "vant_exact": variant("exact", vant)}

    def measure() -> dict[str, float]:
        """One round-robin measurement: per variant the median seconds of one step."""
        times: dict[str, list[float]] = {k: [] for k in steps}
        cursor = 0
        for rnd in range(args.rounds + 1):  # round 0 warms up and is dropped
            for name, step in steps.items():
                started = time.perf_counter()
                for i in range(args.slice):
                    step(cursor + i)
                if rnd:
                    times[name].append((time.perf_counter() - started) / args.slice)
            cursor += args.slice
        return {k: statistics.median(v) for k, v in times.items()}

    runs = [measure() for _ in range(args.repeats)]

    def ratio(a: str, b: str) -> float:
        return statistics.median(run[a] / run[b] for run in runs)

    timings = {k: statistics.median(run[k] for run in runs) * len(batches) for k in steps}
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "load_average": os.getloadavg(),
        "data": source,
        "model": "lenet5 (avg pool), noise at all sites",
        "noise": f"{args.noise}, sigma {args.sigma}, fast mode (nt, vant) and exact mode; VANT: {vant.describe()}",
        "batches_per_epoch": len(batches),
        "epoch_seconds": timings,
        "rounds": args.rounds, "slice": args.slice, "repeats": args.repeats,
        "vant_over_nt": ratio("vant", "nt"),
        "nt_over_clean": ratio("nt", "clean"),
        "exact_nt_over_clean": ratio("nt_exact", "clean"),
        "exact_vant_over_nt": ratio("vant_exact", "nt_exact"),
        "per_repeat": {"vant_over_nt": [run["vant"] / run["nt"] for run in runs],
                       "nt_over_clean": [run["nt"] / run["clean"] for run in runs]},
        "targets": {"vant_over_nt": 1.05, "nt_over_clean": 1.3},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
