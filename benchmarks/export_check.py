"""Export + check of the reference models: time, and how far each engine is from PyTorch.

    python benchmarks/export_check.py [--run kws=runs/kws-mlp-w3a3-fsdd --run resnet8=runs/qat-resnet8-cifar10 \
        --run autoencoder=runs/ae-qat-fsdd --run lenet5=runs/mnist-lenet5-qat8-const] [--data-root-for kws=DIR ...] \
        [--samples 64] [--out benchmarks/out/export_check.json]
    python benchmarks/export_check.py --quick      # proves the script runs

Reference models: the MLPerf Tiny KWS MLP W3A3, ResNet-8 (8-bit), the anomaly-detection autoencoder
(8-bit) and LeNet-5 (8-bit, constant scale), plus float LeNet-5 for the plain ONNX path. A trained
checkpoint is used where ``--run name=DIR`` gives one (inputs: the first ``--samples`` test samples
of the run's data set when its config names one, else standard-normal inputs, which match the
standardised features); otherwise the model is built from seed 0 with BatchNorm statistics from one
training-mode pass on random inputs.

For every model and format it can be written in (QONNX always; QCDQ for widths up to 8 bits; ONNX
for float models) it records: export time, check time per engine, and max |difference| from
PyTorch for qonnx execution, for onnxruntime executing the graph as written (the check), and for
onnxruntime with its default graph optimisations (engine "onnxruntime-opt" of ``check_export``: QDQ
fusion into integer kernels, what a deployment runs; informational, not part of the check).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nora.export import check_export, export_model
from nora.io import atomic_write_json
from nora.models import build_model

REFERENCE = {
    "kws": ("kws-mlp-w3a3", {"num_classes": 10}),
    "resnet8": ("resnet8-qat", {}),
    "autoencoder": ("autoencoder-qat", {}),
    "lenet5": ("lenet5-qat", {"act_scale": 1 / 16}),
    "lenet5-float": ("lenet5", {}),
}
QUICK = {
    "kws": ("kws-mlp-w3a3", {"num_classes": 10, "input_shape": (1, 10, 8)}),
    "lenet5-float": ("lenet5", {"input_shape": (1, 8, 8)}),
}


def pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for value in values or []:
        if "=" not in value:
            raise SystemExit(f"{option} expects name=path, got {value!r}")
        name, path = value.split("=", 1)
        if name not in REFERENCE:
            raise SystemExit(f"{option}: unknown model {name!r}; choose from {', '.join(REFERENCE)}")
        out[name] = path
    return out


def untrained(arch: str, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, *model.input_shape))
    return model.eval()


def inputs_for(model: nn.Module, meta: dict | None, data_root: str | None, samples: int) -> tuple[torch.Tensor, str]:
    if meta is not None and "config" in meta:
        from nora.config import apply_overrides, parse_config
        from nora.train.setup import load_data

        overrides = {"data.test_subset": samples, **({"data.root": data_root} if data_root else {})}
        config = apply_overrides(parse_config(meta["config"], "saved config"), overrides)
        _, test = load_data(config.data)
        return test.x, f"{config.data.dataset} test set"
    generator = torch.Generator().manual_seed(0)
    return torch.randn(samples, *model.input_shape, generator=generator), "standard normal"


def formats_for(model: nn.Module) -> list[str]:
    from nora.quant import quantised_layers

    layers = quantised_layers(model)
    if not layers:
        return ["onnx", "qonnx"]
    widths = [b for layer in layers for b in (layer.weight_bits, layer.act_bits) if b is not None]
    return ["qonnx", "qcdq"] if max(widths) <= 8 and min(widths) > 1 else ["qonnx"]


def measure(name: str, model: nn.Module, x: torch.Tensor, source: str, folder: Path) -> list[dict]:
    rows = []
    with torch.no_grad():
        reference = model(x).numpy()
    for fmt in formats_for(model):
        path = folder / f"{name}.{fmt}.onnx"
        started = time.perf_counter()
        summary = export_model(model, path, fmt)
        export_seconds = time.perf_counter() - started
        report = check_export(path, model, x)
        row = {"model": name, "arch": getattr(model, "arch", ""), "format": fmt, "inputs": source,
               "samples": len(x), "size_kib": summary.size_bytes / 1024, "export_s": export_seconds,
               "passed": report.passed}
        for result in report.results:
            row[f"{result.engine}_s"] = result.seconds
            row[f"{result.engine}_max_abs_diff"] = result.max_abs_diff
            row[f"{result.engine}_exact"] = result.exact
        row["output_max_abs"] = float(np.abs(reference).max())
        rows.append(row)
        print(f"{name:>12} {fmt:>5}: export {export_seconds:.2f} s, " + ", ".join(
            f"{r.engine} {r.seconds:.2f} s max|diff| {r.max_abs_diff:.3g} ({r.exact:.0%} exact)"
            for r in report.results), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", help="name=run folder of a trained reference model")
    parser.add_argument("--data-root-for", action="append", help="name=data root for that run's test set")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/export_check.json")
    parser.add_argument("--quick", action="store_true", help="two small untrained models, 4 samples")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs, roots = pairs(args.run, "--run"), pairs(args.data_root_for, "--data-root-for")
    models = QUICK if args.quick else REFERENCE
    samples = 4 if args.quick else args.samples
    rows = []
    with tempfile.TemporaryDirectory(prefix="nora-export-check-") as folder:
        for name, (arch, kwargs) in models.items():
            if name in runs:
                from nora.train.checkpoint import load_model

                model, meta = load_model(runs[name])
            else:
                model, meta = untrained(arch, kwargs), None
            x, source = inputs_for(model, meta, roots.get(name), samples)
            rows.extend(measure(name, model, x, source, Path(folder)))
    atomic_write_json(Path(args.out), {"rows": rows, "threads": args.threads, "quick": args.quick,
                                       "torch": torch.__version__, "machine": platform.platform()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
