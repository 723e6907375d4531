"""Progress of long jobs, readable live on a terminal and in a log file.

On a terminal a transient rich bar; without one (nohup, a batch scheduler, ``| tee``) plain lines
at most every ``interval`` seconds, each with the count, the rate and the time left, because a
silent seven-minute job cannot be told from a hung one.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

#: Seconds between two plain progress lines.
LINE_INTERVAL = 10.0


def duration(seconds: float) -> str:
    """'45 s', '3 min 05 s', '2 h 03 min': short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Reporter:
    """One task's progress: ``advance`` after each unit of work, ``start`` to begin the next task.

    ``fields`` passed to ``advance`` (a running loss) are shown beside the count; a field may be a
    callable, read only when a line or the bar's text is drawn (at most every ``BAR_INTERVAL``), so a
    loss that lives on a GPU is not copied to the host at every step.
    """

    #: Seconds between refreshes of the bar's text.
    BAR_INTERVAL = 0.25

    def __init__(self, console: Console, *, unit: str = "steps", enabled: bool = True,
                 interval: float | None = None, clock=time.monotonic):
        self.console, self.unit, self.clock = console, unit, clock
        self.interval = LINE_INTERVAL if interval is None else interval
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self._bar: Progress | None = None
        self._task = None
        self.description, self.total, self.done, self.fields = "", None, 0, {}
        self._started = self._last_line = 0.0

    def __enter__(self) -> "Reporter":
        if self.live:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
                                 transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def start(self, description: str, total: int | None = None) -> None:
        """Begin a task (an epoch, a curve); the previous one is finished."""
        if self._bar is not None and self._task is not None:
            self._bar.remove_task(self._task)
        self.description, self.total, self.done, self.fields = description, total, 0, {}
        self._started = self._last_line = self.clock()
        if self._bar is not None:
            self._task = self._bar.add_task(description, total=total, info="")

    def advance(self, steps: int = 1, **fields: Any) -> None:
        if not self.enabled:
            return
        self.done += steps
        self.fields = fields
        if self._bar is not None:
            if self.clock() - self._last_line >= self.BAR_INTERVAL:
                self._last_line = self.clock()
                self._bar.update(self._task, advance=steps, info=self._fields())
            else:
                self._bar.update(self._task, advance=steps)
        elif not self.live and self.clock() - self._last_line >= self.interval:
            self._last_line = self.clock()
            self.console.print(self.line(), soft_wrap=True, highlight=False)

    def line(self) -> str:
        """'epoch 2/10: 300/938 batches (32%), 120 batches/s, 5 s left, loss 0.4312'."""
        elapsed = max(self.clock() - self._started, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)" if self.total else (
            f"{self.done} {self.unit}")
        left = f", {duration((self.total - self.done) / rate)} left" if self.total and rate > 0 else ""
        info = self._fields()
        return f"{self.description}: {count}, {rate:.3g} {self.unit}/s{left}" + (f", {info}" if info else "")

    def _fields(self) -> str:
        values = {k: v() if callable(v) else v for k, v in self.fields.items()}
        return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
