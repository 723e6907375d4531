"""Every quantised zoo model through hls4ml, in both quantisation presets, after the same short training.

    nice -n 5 python benchmarks/hls4ml_zoo.py --data ../shared/data [--models lenet5-8 kws ...] [--epochs 2] \
        [--train-subset 2000] [--out benchmarks/results/issue11]

For each model and preset (``research``: the research's float scales; ``fpga``: power-of-two scales):
train briefly on real data (MNIST, FSDD, CIFAR-10; the autoencoder on FSDD-free standard-normal
vectors, only for the export path), export QONNX (timed), run the first 64 test inputs through
PyTorch, qonnx and hls4ml 1.3's compiled C++ emulation (conversion and g++ compile timed), and
record max |hls4ml - qonnx|, max |qonnx - PyTorch|, top-1 agreement hls4ml vs PyTorch, the test
accuracy of the trained model, and the export-time warnings. hls4ml reports resources only after
a Vitis/Vivado HLS synthesis, which is not installed here; the weight memory (bits) is given instead.
Runs resume from --out/runs. Writes <out>/hls4ml_zoo.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from nora.config import parse_config
from nora.errors import NoraError
from nora.export import FlowWarning, export_model, load_onnx, run_hls4ml, run_qonnx
from nora.io import atomic_write_json, atomic_write_text
from nora.quant import quantised_layers
from nora.train import train
from nora.train.setup import load_data

#: name -> (arch, kwargs, data set, data folder under --data)
ZOO = {
    "lenet5-8": ("lenet5-qat", {"bits": 8, "act_scale": 1 / 16}, "mnist", "mnist"),
    "lenet5-4": ("lenet5-qat", {"bits": 4, "act_scale": 1 / 8}, "mnist", "mnist"),
    "lenet5-8-learned": ("lenet5-qat", {"bits": 8, "act_scale": 1 / 16, "scaling": "learned"}, "mnist", "mnist"),
    "lenet5-bipolar": ("lenet5-qat", {"bits": 4, "weight_bits": 1, "act_scale": 0.25, "batch_norm": True}, "mnist", "mnist"),
    "mlp": ("mlp-qat", {}, "mnist", "mnist"),
    "kws-w3a3": ("kws-mlp-w3a3", {}, "fsdd", "fsdd"),
    "resnet8": ("resnet8-qat", {}, "cifar10", "cifar10"),
    "autoencoder": ("autoencoder-qat", {}, None, None),
}
SAMPLES = 64


def weight_bits(model) -> int:
    total = 0
    for layer in quantised_layers(model):
        if layer.weight_bits:
            module = model.get_submodule(layer.name)
            total += module.weight.numel() * layer.weight_bits
    return total


def trained(name: str, preset: str, args) -> tuple[torch.nn.Module, np.ndarray, np.ndarray | None, float | None]:
    arch, kwargs, dataset, folder = ZOO[name]
    kwargs = {**kwargs, "preset": preset}
    if preset == "fpga" and arch in ("lenet5-qat", "mlp-qat"):
        kwargs |= {"input_bits": 8, "input_max": 4.0}  # a float input makes the first layer compute in float
    if dataset is None:  # the autoencoder: no labelled task here, export path only
        from nora.models import build_model

        torch.manual_seed(0)
        model = build_model(arch, **kwargs)
        generator = torch.Generator().manual_seed(0)
        model.train()
        with torch.no_grad():
            model(torch.randn(256, *model.input_shape, generator=generator))
        return model.eval(), torch.randn(SAMPLES, *model.input_shape, generator=generator).numpy(), None, None
    config = parse_config({
        "name": f"{name}-{preset}", "output_dir": str(args.out / "runs"), "seed": 0,
        "data": {"dataset": dataset, "root": str(args.data / folder), "batch_size": 64,
                 "train_subset": args.train_subset, "test_subset": 500},
        "model": {"arch": arch, "kwargs": kwargs},
        "train": {"epochs": args.epochs, "optimizer": "adam", "lr": 0.001, "progress": False},
    }, "benchmark")
    result = train(config)
    _, test = load_data(config.data)
    x = np.asarray(test.x[:SAMPLES], dtype=np.float32)
    y = np.asarray(test.y[:SAMPLES])
    return result.model.eval(), x, y, result.test_accuracy


def measure(name: str, preset: str, args) -> dict:
    model, x, y, accuracy = trained(name, preset, args)
    path = args.out / "onnx" / f"{name}-{preset}.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FlowWarning)
        started = time.perf_counter()
        summary = export_model(model, path, "qonnx")
        export_s = time.perf_counter() - started
    row = {"model": name, "preset": preset, "test_accuracy": accuracy, "export_s": export_s,
           "weight_memory_bits": weight_bits(model), "folded": list(summary.folded),
           "warnings": [str(w.message) for w in caught if issubclass(w.category, FlowWarning)]}
    with torch.no_grad():
        torch_out = model(torch.as_tensor(x)).numpy()
    proto = load_onnx(path)
    qonnx_out = run_qonnx(proto, x)
    row["max_qonnx_vs_torch"] = float(np.abs(qonnx_out - torch_out).max())
    try:
        result = run_hls4ml(proto, x, str(path))
    except NoraError as exc:
        row["hls4ml"] = f"refused: {exc}"
        return row
    hls = result.outputs
    row |= {"hls4ml": "ok", "convert_s": result.convert_seconds, "compile_s": result.compile_seconds,
            "max_hls4ml_vs_qonnx": float(np.abs(hls - qonnx_out).max()),
            "max_hls4ml_vs_torch": float(np.abs(hls - torch_out).max()),
            "bit_exact": bool(np.array_equal(hls, qonnx_out))}
    if hls.ndim == 2 and y is not None:
        row["top1_agreement_hls4ml_torch"] = float((hls.argmax(1) == torch_out.argmax(1)).mean())
        row["hls4ml_accuracy_64"] = float((hls.argmax(1) == y).mean())
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | preset | test acc | export s | hls4ml convert + compile s | max hls4ml-qonnx | max qonnx-torch "
            "| top-1 agree | weight bits | hls4ml |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        acc = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.3f}"
        ok = r["hls4ml"] == "ok"
        times = f"{r['convert_s']:.1f} + {r['compile_s']:.1f}" if ok else "-"
        diff = (f"{r['max_hls4ml_vs_qonnx']:.2g}" + (" (exact)" if r["bit_exact"] else "")) if ok else "-"
        verdict = "ok" if ok else r["hls4ml"][:160]
        lines.append(f"| {r['model']} | {r['preset']} | {acc} | {r['export_s']:.2f} | {times} | {diff} | "
                     f"{r['max_qonnx_vs_torch']:.2g} | {r.get('top1_agreement_hls4ml_torch', '-')} | "
                     f"{r['weight_memory_bits']} | {verdict} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", nargs="*", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--presets", nargs="*", default=["research", "fpga"], choices=["research", "fpga"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/issue11"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        for preset in args.presets:
            rows.append(measure(name, preset, args))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    meta = {"machine": platform.platform(), "torch": torch.__version__, "epochs": args.epochs,
            "train_subset": args.train_subset, "samples": SAMPLES}
    atomic_write_json(args.out / "hls4ml_zoo.json", {"meta": meta, "rows": rows})
    atomic_write_text(args.out / "hls4ml_zoo.md", table(rows))


if __name__ == "__main__":
    main()
