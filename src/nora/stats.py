"""Summaries of repeated noisy measurements (the bottom of every reported mean and interval)."""

from __future__ import annotations

import math
from typing import Sequence

from scipy import stats


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict[str, float | None]:
    """Mean, sample std and a Student-t confidence interval of the mean.

    One value has no spread: std and the interval are None (shown as "-"), never a fake 0.
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": None, "ci_low": None, "ci_high": None, "n": 1}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def summarize_accuracy(values: Sequence[float], confidence: float = 0.95) -> dict[str, float | None]:
    """``summarize`` with the interval clipped to [0, 1], where an accuracy lies."""
    out = summarize(values, confidence)
    if out["ci_low"] is not None:
        out["ci_low"], out["ci_high"] = max(0.0, out["ci_low"]), min(1.0, out["ci_high"])
    return out
