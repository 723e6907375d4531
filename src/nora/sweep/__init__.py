"""Training sweeps: a grid over config keys x seeds, each point a nora training run plus evaluation.

Points run on the embedded local executor (a process pool), sequentially, or on Ray; every finished
point is stored at once, so a killed sweep resumes where it stopped.
"""

from nora.sweep.runner import ENGINES, SweepOutcome, make_executor, run_sweep, sweep_folder
from nora.sweep.spec import Point, SweepSpec, expand, fingerprint, load_sweep, parse_sweep
from nora.sweep.store import ResultStore

__all__ = [
    "ENGINES",
    "Point",
    "ResultStore",
    "SweepOutcome",
    "SweepSpec",
    "expand",
    "fingerprint",
    "load_sweep",
    "make_executor",
    "parse_sweep",
    "run_sweep",
    "sweep_folder",
]
