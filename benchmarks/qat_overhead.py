"""QAT overhead: one quantisation-aware training step over one float training step of the same model.

    python benchmarks/qat_overhead.py [--threads 2] [--rounds 7] [--out benchmarks/out/qat_overhead.json]
    python benchmarks/qat_overhead.py --quick     # proves the script runs; no figures to record

A training step is forward + cross-entropy + backward + Adam step on random data of the model's
input shape (the values do not change the cost). Pairs (float, QAT twin from the same seed): LeNet-5
on MNIST shapes with 8-bit constant-scale activations, the KWS MLP against its W3A3 version, and
ResNet-8 against its 8-bit version. The two variants are timed interleaved, each round the mean of
``--steps`` steps after warm-up, and the best round is reported: on a shared machine the minimum is
the least disturbed estimate.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch import nn

from nora.io import atomic_write_json
from nora.models import build_model

PAIRS = {
    "lenet5 (MNIST, batch 128)": (("lenet5", {}), ("lenet5-qat", {"bits": 8, "act_scale": 1 / 16}), 128),
    "kws-mlp (10x49 MFCC, batch 512)": (("kws-mlp", {"num_classes": 10}), ("kws-mlp-w3a3", {"num_classes": 10}), 512),
    "resnet8 (CIFAR-10, batch 128)": (("resnet8", {}), ("resnet8-qat", {}), 128),
}


def step_timer(model: nn.Module, batch: int, steps: int):
    torch.manual_seed(0)
    x = torch.randn(batch, *model.input_shape)
    y = torch.randint(0, model.num_classes, (batch,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    model.train()

    def one_round() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(x), y).backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps

    one_round()  # warm-up: allocator, Brevitas' first-call caches
    return one_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/out/qat_overhead.json")
    parser.add_argument("--quick", action="store_true", help="one round of one step, LeNet-5 only")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 1, 1
    torch.set_num_threads(args.threads)
    pairs = dict(list(PAIRS.items())[:1]) if args.quick else PAIRS
    rows = []
    for label, ((float_arch, float_kwargs), (qat_arch, qat_kwargs), batch) in pairs.items():
        torch.manual_seed(0)
        float_model = build_model(float_arch, **float_kwargs)
        torch.manual_seed(0)
        qat_model = build_model(qat_arch, **qat_kwargs)
        timers = {"float": step_timer(float_model, batch, args.steps), "qat": step_timer(qat_model, batch, args.steps)}
        best = {name: float("inf") for name in timers}
        for _ in range(args.rounds):
            for name, timer in timers.items():
                best[name] = min(best[name], timer())
        row = {"model": label, "float_arch": float_arch, "qat_arch": qat_arch, "batch": batch,
               "float_step_ms": 1e3 * best["float"], "qat_step_ms": 1e3 * best["qat"],
               "overhead": best["qat"] / best["float"]}
        rows.append(row)
        print(f"{label:>34}: float {row['float_step_ms']:8.2f} ms  QAT {row['qat_step_ms']:8.2f} ms  "
              f"QAT/float {row['overhead']:.2f}x", flush=True)
    atomic_write_json(Path(args.out), {
        "rows": rows, "threads": args.threads, "rounds": args.rounds, "steps": args.steps, "quick": args.quick,
        "torch": torch.__version__, "machine": platform.platform(), "processor": platform.processor(),
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
