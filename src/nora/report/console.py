"""Tables on the terminal: full width when piped or logged, never cut at 80 columns."""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from nora.report.document import cell

_LEFT = ("name", "type", "noise", "module", "curve", "run", "line", "path", "status", "note", "method")


def table_console(stderr: bool = False) -> Console:
    """A console on the current stdout (stderr), resolved at every print, so redirection works."""
    return Console(stderr=stderr)


def print_table(console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A titled table; when the stream is not a terminal (logs, nohup, batch jobs) nothing is cut."""
    console.print(title, highlight=False, soft_wrap=True)
    table = Table()
    for col in columns:
        table.add_column(col, justify="left" if col in _LEFT else "right", overflow="fold")
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else cell(v) for v in row])
    if console.is_terminal:
        console.print(table)
        return
    width = console.width
    console.width = 10_000  # nothing to fit on a log: every cell at its full width
    try:
        console.print(table)
    finally:
        console.width = width
