"""Workflows: what each command does, as functions that return result objects (no printing)."""

from nora.workflows.analyses import Loaded, compare, curve, evaluate, load_checkpoint, trajectory, vary, walk_study
from nora.workflows.results import CompareResult, CurveResult, EvalResult, TrajectoryResult, UncertaintyResult, WalkStudy
from nora.workflows.training import TrainOutcome, demo, evaluation_name, train_run, training_plot

__all__ = ["CompareResult", "CurveResult", "EvalResult", "Loaded", "TrainOutcome", "TrajectoryResult", "UncertaintyResult", "WalkStudy",
           "compare", "curve", "demo", "evaluate", "evaluation_name", "load_checkpoint", "train_run", "training_plot",
           "trajectory", "vary", "walk_study"]
