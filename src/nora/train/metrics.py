"""Per-epoch metrics as JSON and CSV, rewritten atomically after each epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from nora.tables import write_table


def write_metrics(run_dir: str | Path, metrics: Sequence[dict[str, Any]]) -> None:
    write_table(Path(run_dir) / "metrics", metrics)
