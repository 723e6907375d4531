"""Tables of result rows as JSON and CSV, written atomically (the bottom of every result file)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from nora.io import atomic_write_json, atomic_write_text


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields and not isinstance(row[k], (list, dict))]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_table(path_stem: str | Path, rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """``<stem>.json`` with the rows (and any extra fields) and ``<stem>.csv`` beside it."""
    stem = Path(path_stem)
    atomic_write_json(stem.with_suffix(".json"), {**(extra or {}), "rows": list(rows)})
    atomic_write_text(stem.with_suffix(".csv"), rows_to_csv(rows))
