"""Latency-measurement repeatability: the same layers measured again and again, on each backend.

For every compute layer of a model (fp32, int8 and one sub-8-bit width), ``--trials`` independent
measurements, each a fresh ``LatencyMeter`` with an empty cache (compile, warm-up, ``--repeats``
timed rounds, fastest round net of the no-op overhead). Reports the coefficient of variation within one
measurement (robust: 1.4826 MAD / median over its rounds) and across the independent measurements
(std / mean of their estimates), per backend and kernel, plus the whole compiled model for comparison
with the per-layer sum. The load average is recorded.

    python benchmarks/compress_latency.py --model resnet8 --input-shape 3 32 32 --trials 5
Writes <output>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import replace

import torch

from nora.io import atomic_write_json
from nora.models import build_model
from nora.perf.latency import LatencyMeter, backend_available
from nora.perf.layers import layer_specs
from nora.perf.profile import whole_model_latency


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8")
    p.add_argument("--input-shape", type=int, nargs="+", default=[3, 32, 32])
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "tvm"])
    p.add_argument("--bits", type=int, nargs="+", default=[32, 8, 4])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", default="benchmarks/results/issue14/compress_latency")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = build_model(args.model, input_shape=tuple(args.input_shape)).eval()
    base = layer_specs(model, tuple(args.input_shape))
    load_before = os.getloadavg()
    rows, summary = [], {}
    for backend in [b for b in args.backends if backend_available(b)]:
        for bits in args.bits:
            within, across, sums = [], [], []
            per_layer = {name: [] for name, _ in base}
            for _ in range(args.trials):
                meter = LatencyMeter(backend, repeats=args.repeats)
                total = 0.0
                for name, spec in base:
                    result = meter.layer(replace(spec, w_bits=bits, a_bits=bits))
                    per_layer[name].append(result.seconds)
                    within.append(result.cv)
                    total += result.seconds
                    kernel = result.kernel
                sums.append(total)
            for name, values in per_layer.items():
                across.append(statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0)
                rows.append({"backend": backend, "bits": bits, "layer": name, "seconds": statistics.fmean(values),
                             "cv_across": across[-1]})
            summary[f"{backend} {bits}-bit"] = {
                "kernel": kernel, "median_cv_within": statistics.median(within),
                "median_cv_across": statistics.median(across), "max_cv_across": max(across),
                "sum_mean_s": statistics.fmean(sums),
                "sum_cv_across": statistics.stdev(sums) / statistics.fmean(sums) if len(sums) > 1 else 0.0}
            print(f"{backend:12s} {bits:2d}-bit ({kernel:9s}): per-layer cv within {summary[f'{backend} {bits}-bit']['median_cv_within']:.3f}, "
                  f"across trials median {summary[f'{backend} {bits}-bit']['median_cv_across']:.3f} "
                  f"max {summary[f'{backend} {bits}-bit']['max_cv_across']:.3f}; layer sum {statistics.fmean(sums) * 1e6:.1f} us "
                  f"(cv {summary[f'{backend} {bits}-bit']['sum_cv_across']:.3f})", flush=True)
        whole = [whole_model_latency(model, tuple(args.input_shape), backend, repeats=args.repeats)
                 for _ in range(args.trials)]
        ok = [w["seconds"] for w in whole if w["ok"]]
        if ok:
            summary[f"{backend} whole model fp32"] = {
                "mean_s": statistics.fmean(ok),
                "cv_across": statistics.stdev(ok) / statistics.fmean(ok) if len(ok) > 1 else 0.0}
            print(f"{backend:12s} whole model fp32: {statistics.fmean(ok) * 1e6:.1f} us, cv across trials "
                  f"{summary[f'{backend} whole model fp32']['cv_across']:.3f}", flush=True)
    result = {"model": args.model, "input_shape": args.input_shape, "trials": args.trials, "repeats": args.repeats,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_before": load_before, "load_after": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "summary": summary, "layers": rows}
    atomic_write_json(f"{args.output}.json", result)
    print(f"load average before {load_before}, after {result['load_after']}; wrote {args.output}.json")


if __name__ == "__main__":
    main()
