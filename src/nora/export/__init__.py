"""Export trained models to QONNX, QCDQ or plain ONNX, and check the files against PyTorch.

Needs the ``export`` extra (Brevitas, qonnx, onnx, onnxruntime); every entry point says
"install nora[export]" when a package is missing. ``run_hls4ml`` (``nora check --flow hls4ml``)
needs the ``fpga`` extra (hls4ml) and g++.
"""

from nora.export.check import (
    DEFAULT_ATOL,
    FLOAT_MIN_MATCH,
    FLOAT_RTOL,
    QUANTISED_MIN_MATCH,
    QUANTISED_RTOL,
    CheckReport,
    EngineResult,
    check_export,
)
from nora.export.execute import engines_for, load_onnx, run_onnxruntime, run_qonnx
from nora.export.flows import FLOWS, FlowWarning, Hls4mlResult, Problem, flow_problems, run_hls4ml
from nora.export.fold import fold_global_pools
from nora.export.formats import FORMATS
from nora.export.writer import ExportSummary, export_model

__all__ = [
    "DEFAULT_ATOL",
    "FLOAT_MIN_MATCH",
    "FLOAT_RTOL",
    "FLOWS",
    "FlowWarning",
    "Hls4mlResult",
    "Problem",
    "FORMATS",
    "QUANTISED_MIN_MATCH",
    "QUANTISED_RTOL",
    "CheckReport",
    "EngineResult",
    "ExportSummary",
    "check_export",
    "engines_for",
    "export_model",
    "flow_problems",
    "fold_global_pools",
    "load_onnx",
    "run_onnxruntime",
    "run_hls4ml",
    "run_qonnx",
]
