"""Measuring robustness: accuracy under noise and its summaries."""

from nora.analysis.evaluate import accuracy, noisy_accuracy
from nora.analysis.stats import summarize

__all__ = ["accuracy", "noisy_accuracy", "summarize"]

from nora.analysis.curves import accuracy_curve, chance_level, log_grid  # noqa: E402
from nora.analysis.midpoint import Midpoint, midpoint, search_midpoint  # noqa: E402
from nora.analysis.walk import naive_walk, split_chain, walk  # noqa: E402

__all__ += ["Midpoint", "accuracy_curve", "chance_level", "log_grid", "midpoint", "naive_walk", "search_midpoint",
            "split_chain", "walk"]
