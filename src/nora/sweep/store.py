"""The results folder of a sweep: its fingerprint, one JSON record per finished point, run folders.

Layout::

    <sweep>/sweep.json          fingerprint, the sweep config, the number of points
    <sweep>/points/<id>.json    one record per finished point (status ok or failed), written atomically
    <sweep>/runs/<id>/          the point's training run (checkpoints, metrics)

A record is written the moment its point finishes, so a killed sweep loses at most the points in
flight; on restart the points with an ``ok`` record are skipped (failed ones run again). A folder
holding another sweep (another fingerprint), or anything that is not a sweep, is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nora.errors import NoraError
from nora.io import atomic_write_json

SWEEP_FILE = "sweep.json"
POINTS_DIR = "points"


class ResultStore:
    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder = Path(folder)
        self.meta = meta

    @classmethod
    def create_or_open(cls, folder: str | Path, fingerprint: str, spec: dict[str, Any], points: int) -> ResultStore:
        folder = Path(folder)
        marker = folder / SWEEP_FILE
        if marker.exists():
            meta = _read_json(marker)
            if meta.get("fingerprint") != fingerprint:
                raise NoraError(
                    f"{folder} holds a different sweep (fingerprint {str(meta.get('fingerprint'))[:12]}, this config "
                    f"{fingerprint[:12]}); refusing to mix results: choose another name or output_dir"
                )
            return cls(folder, meta)
        if folder.exists() and any(folder.iterdir()):
            raise NoraError(f"{folder} exists and is not a sweep folder (no {SWEEP_FILE}); choose another name")
        meta = {"fingerprint": fingerprint, "spec": spec, "points": points}
        atomic_write_json(marker, meta)
        return cls(folder, meta)

    @classmethod
    def open_existing(cls, folder: str | Path) -> ResultStore:
        folder = Path(folder)
        marker = folder / SWEEP_FILE
        if not marker.exists():
            raise NoraError(f"{folder} is not a sweep folder (no {SWEEP_FILE})")
        return cls(folder, _read_json(marker))

    def record(self, record: dict[str, Any]) -> Path:
        return atomic_write_json(self.folder / POINTS_DIR / f"{record['id']}.json", record)

    def records(self) -> list[dict[str, Any]]:
        folder = self.folder / POINTS_DIR
        if not folder.is_dir():
            return []
        out = [_read_json(path) for path in folder.glob("*.json")]
        return sorted(out, key=lambda r: r.get("index", 0))

    def finished(self) -> set[str]:
        """Ids of the points that finished successfully (they are never recomputed)."""
        return {r["id"] for r in self.records() if r.get("status") == "ok"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise NoraError(f"{path} is not readable JSON (corrupt or truncated); move it away to recompute") from None
