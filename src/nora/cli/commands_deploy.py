"""Deployment commands: export a checkpoint to QONNX/QCDQ/ONNX, and check an exported file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from nora.cli.common import console, print_table
from nora.errors import NoraError


def cmd_export(args) -> None:
    from nora.export import export_model
    from nora.export.flows import FlowWarning
    from nora.train.checkpoint import load_model

    model, _ = load_model(args.checkpoint)
    output = Path(args.output) if args.output else _run_dir(args.checkpoint) / f"model.{args.format}.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FlowWarning)
        summary = export_model(model, output, args.format)
    console.print(f"wrote {summary.describe()}")
    if summary.folded:
        console.print(f"folded the global pool {', '.join(summary.folded)} into the classifier (hls4ml cannot take it)")
    for warning in caught:
        if issubclass(warning.category, FlowWarning):
            console.print(f"warning: {warning.message}")
    console.print(f"suits: {summary.suits()}")


def _run_dir(checkpoint: str) -> Path:
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def _check_inputs(args, model, meta):
    """The first ``--samples`` test inputs of the run's data set, or None for random inputs."""
    if args.random_inputs:
        return None
    from nora.config import apply_overrides, parse_config
    from nora.train.setup import load_data

    if "config" not in meta:
        raise NoraError(
            f"checkpoint {args.against} records no training config (not made by `nora train`), so its test data "
            "is unknown; use --random-inputs"
        )
    config = parse_config(meta["config"], f"{args.against} (saved config)")
    overrides = {"data.test_subset": args.samples}
    if args.data_root:
        overrides["data.root"] = args.data_root
    _, test = load_data(apply_overrides(config, overrides).data)
    return test.x


def cmd_check(args) -> None:
    from nora.export import check_export
    from nora.train.checkpoint import load_model

    if args.samples < 1:
        raise NoraError(f"--samples must be >= 1, got {args.samples}")
    model = inputs = None
    if args.against:
        model, meta = load_model(args.against)
        inputs = _check_inputs(args, model, meta)
    limits = {key: getattr(args, key) for key in ("atol", "rtol", "min_match") if getattr(args, key) is not None}
    flows = (args.flow,) if args.flow else ()
    report = check_export(args.file, model, inputs, samples=args.samples, seed=args.seed, flows=flows, **limits)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        reference = f"PyTorch ({args.against})" if model is not None else "each other"
        print_table(
            f"{report.path}: {report.samples} samples, compared with {reference}",
            ["engine", "vs", "max |diff|", "tolerance", "within", "exact", "top-1", "s", "result"],
            [(r.engine, r.reference, f"{r.max_abs_diff:.3g}", f"{r.tolerance:.3g}", f"{r.within:.1%}", f"{r.exact:.1%}",
              "-" if r.argmax_agreement is None else f"{r.argmax_agreement:.1%}", r.seconds,
              ("pass" if r.passed else "FAIL") if r.required else "info") for r in report.results],
        )
    if not report.passed:
        failed = [r for r in report.results if r.required and not r.passed]
        raise NoraError(
            f"{report.path} does not match: " + "; ".join(
                f"{r.engine} vs {r.reference}: {r.within:.1%} of samples within {r.tolerance:.3g} (need "
                f"{r.min_match:.0%}), largest difference {r.max_abs_diff:.3g}" for r in failed)
        )


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to QONNX, QCDQ or float ONNX")
    p.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    p.add_argument("--format", default="qonnx", choices=["qonnx", "qcdq", "onnx"],
                   help="qonnx: Quant/BipolarQuant nodes (FINN, hls4ml); qcdq: QuantizeLinear/Clip/DequantizeLinear "
                        "(onnxruntime); onnx: float models")
    p.add_argument("-o", "--output", help="output file (default: <run>/model.<format>.onnx)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check", help="execute an exported ONNX file (qonnx, onnxruntime exact and optimised, "
                                     "optionally hls4ml) and compare with PyTorch")
    p.add_argument("file", help="the .onnx file")
    p.add_argument("--against", help="run folder or model.safetensors the file was exported from")
    p.add_argument("--samples", type=int, default=32, help="test samples to compare on")
    p.add_argument("--random-inputs", action="store_true", help="standard-normal inputs instead of test data")
    p.add_argument("--data-root", help="where the run's test data lies (config: data.root)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--atol", type=float, help="absolute tolerance per output value (default 1e-4)")
    p.add_argument("--rtol", type=float,
                   help="tolerance relative to the largest |output| (default 1e-4 for float graphs, 1e-2 for quantised "
                        "ones: a rounding boundary flipped by float rounding moves an output by one step)")
    p.add_argument("--min-match", type=float,
                   help="share of samples that must be within the tolerance (default 1 for float graphs, 0.9 for "
                        "quantised ones)")
    p.add_argument("--flow", choices=["hls4ml"],
                   help="also convert the file with this FPGA flow, compile its C++ emulation (g++) and compare it; "
                        "needs nora[fpga]")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)
