"""Exact-mode draws on CPU: nanoseconds per value of each way to draw N(0, 1) noise, in one run.

    python benchmarks/exact_draws.py [--values 47000000] [--threads 2] [--out benchmarks/results/exact_draws.json]

Passes, interleaved round after round (each pass's fastest round): nora's counter-based kernel filling
a tensor and adding ``sigma * z`` into one; the same generator without the kernel (numpy words, torch
floats; on a tenth of the values, it is slow); torch's Mersenne Twister filling the tensor on the
configured threads and on one thread (``torch.randn``); and a naive draw-then-add
(``x + sigma * torch.randn_like(x)``). 47 M values is what one exact PCM pass of LeNet-5 over the
10,000 MNIST test images draws. Record figures only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from nora.noise import kernels, philox
from nora.perf.latency import interleaved_rounds

STREAM = (0x12345678, 0x9ABCDEF0, 0x0F1E2D3C, 0x4B5A6978)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=47_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/exact_draws.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if kernels._extension() is None:
        raise SystemExit("the noise kernels cannot be built here (no C++ compiler?): nothing to compare")
    n, small = args.values, args.values // 10
    buffer, x = torch.empty(n), torch.zeros(n)
    generator = torch.Generator().manual_seed(0)

    def one_thread_randn():
        torch.set_num_threads(1)
        try:
            torch.randn(n, generator=generator, out=buffer)
        finally:
            torch.set_num_threads(args.threads)

    passes = {
        "counter_kernel_fill": lambda: kernels.counter_normal(buffer, None, STREAM, 0),
        "counter_kernel_add": lambda: kernels.counter_normal(x, x, STREAM, 0, 0.1),
        "counter_without_kernel_fill": lambda: philox.normal(small, STREAM),
        "mersenne_twister_fill": lambda: buffer.normal_(generator=generator),
        "mersenne_twister_fill_one_thread": one_thread_randn,
        "naive_draw_then_add": lambda: x + 0.1 * torch.randn_like(x),
    }
    rounds = interleaved_rounds(passes, args.rounds)
    counts = {name: small if name == "counter_without_kernel_fill" else n for name in passes}
    result = {
        "machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "load_average": list(os.getloadavg()),
        "values": n,
        "ns_per_value": {name: min(times) / counts[name] * 1e9 for name, times in rounds.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
