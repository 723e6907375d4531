"""The one measurement engine: every accuracy nora reports, clean or under a noise specification."""

from nora.measure.accuracy import DEFAULT_CHUNK, clean_accuracy
from nora.measure.chain import Chain, split_chain
from nora.measure.engine import FULL_FORWARD, SPLIT, Engine, Measurement, Tally, check_repeats

__all__ = ["DEFAULT_CHUNK", "FULL_FORWARD", "SPLIT", "Chain", "Engine", "Measurement", "Tally", "check_repeats",
           "clean_accuracy", "split_chain"]
