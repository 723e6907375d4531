"""The three export formats and what each can express.

- ``qonnx``: Brevitas' QONNX export (Quant / BipolarQuant / Trunc nodes of the
  ``qonnx.custom_op.general`` domain), then the ``qonnx`` cleanup (shape inference, constant
  folding, readable names): the input of the FINN and hls4ml flows. Float models export too (a
  graph without quantisers).
- ``qcdq``: Brevitas' standard-ONNX export, QuantizeLinear -> Clip -> DequantizeLinear; runs in
  onnxruntime. QuantizeLinear at this opset has 8-bit types only, so neither 16-bit nor bipolar
  layers can be written.
- ``onnx``: ``torch.onnx.export`` of a float model.

All use the TorchScript exporter (``dynamo=False``): it works offline with torch 2.13, is about ten
times faster than the dynamo path here and does not attempt an opset conversion that fails for
these graphs. Graphs have a fixed batch of 1, which is what the FPGA flows expect.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nora.errors import NoraError
from nora.quant.backend import require
from nora.quant.inspect import quantised_layers

FORMATS = ("qonnx", "qcdq", "onnx")
QCDQ_MAX_BITS = 8
#: opset of the written graphs: what Brevitas targets for QONNX/QCDQ and recent enough for every
#: operator of the zoo.
OPSET = 13
INPUT_NAME, OUTPUT_NAME = "input", "output"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise NoraError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def refuse_inexpressible(model: nn.Module, fmt: str) -> None:
    """Name the first layer ``fmt`` cannot express, before the exporter fails somewhere inside."""
    layers = quantised_layers(model)
    if fmt == "onnx" and layers:
        first = layers[0]
        raise NoraError(
            f"layer '{first.name}' ({first.module_type}) is quantised and --format onnx writes float models only; "
            "use --format qonnx or qcdq"
        )
    if fmt == "qcdq":
        for layer in layers:
            for kind, bits in (("weights", layer.weight_bits), ("activations", layer.act_bits)):
                if bits == 1:
                    raise NoraError(
                        f"layer '{layer.name}' ({layer.module_type}) has bipolar (1-bit) {kind}, which QCDQ cannot "
                        "express; use --format qonnx (BipolarQuant)"
                    )
                if bits is not None and bits > QCDQ_MAX_BITS:
                    raise NoraError(
                        f"layer '{layer.name}' ({layer.module_type}) has {bits}-bit {kind}; QCDQ expresses at most "
                        f"{QCDQ_MAX_BITS} bits; use --format qonnx"
                    )


def _export_options() -> dict:
    return {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": OPSET,
        "keep_initializers_as_inputs": False,
        "do_constant_folding": True,
        "dynamo": False,
    }


@contextlib.contextmanager
def quiet():
    """Silence exporters: they print graphs on failure and warnings from C++ (straight to the file
    descriptors, hence the descriptor-level redirect); the caller reports one clear line instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _brevitas(fmt: str) -> Callable[[nn.Module, torch.Tensor], bytes]:
    export = require("brevitas.export", f"--format {fmt}")
    function = export.export_qonnx if fmt == "qonnx" else export.export_onnx_qcdq

    def run(module: nn.Module, example: torch.Tensor) -> bytes:
        # Through a file: Brevitas 0.13.4's QCDQ export returns nothing when asked for the model object.
        with tempfile.TemporaryDirectory(prefix="nora-export-") as folder:
            target = Path(folder) / "model.onnx"
            function(module, args=example, export_path=str(target), **_export_options())
            return target.read_bytes()

    return run


def _torch(module: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (example,), buffer, **_export_options())
    return buffer.getvalue()


def exporter(fmt: str) -> Callable[[nn.Module, torch.Tensor], bytes]:
    """``f(module, example_input) -> serialized ONNX`` for ``fmt`` (module in eval mode)."""
    return _torch if check_format(fmt) == "onnx" else _brevitas(fmt)
