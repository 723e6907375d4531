"""Measuring robustness: accuracy under noise and its summaries."""

from nora.analysis.evaluate import accuracy, noisy_accuracy
from nora.analysis.stats import summarize

__all__ = ["accuracy", "noisy_accuracy", "summarize"]
