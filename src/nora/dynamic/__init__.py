"""Noise that changes at inference: sigma processes over time, jitter per inference, and accuracy
along a trajectory (methods.md section 6, "dynamic noise at inference")."""

from nora.dynamic.evaluate import evaluate_trajectory
from nora.dynamic.processes import PROCESSES, Jitter, SigmaProcess, process_from_dict, register_process
from nora.dynamic.trajectory import Trajectory, load_trajectory, parse_trajectory

__all__ = [
    "PROCESSES",
    "Jitter",
    "SigmaProcess",
    "Trajectory",
    "evaluate_trajectory",
    "load_trajectory",
    "parse_trajectory",
    "process_from_dict",
    "register_process",
]
