"""Measuring robustness on top of the measurement engine: curves, midpoints, walks, robustness."""

from nora.analysis.curves import Curve, accuracy_curve, chance_level, log_grid
from nora.analysis.midpoint import Midpoint, midpoint, search_midpoint
from nora.analysis.walk import SiteWalk, WalkResult, naive_walk, walk

__all__ = ["Curve", "Midpoint", "SiteWalk", "WalkResult", "accuracy_curve", "chance_level", "log_grid", "midpoint",
           "naive_walk", "search_midpoint", "walk"]
