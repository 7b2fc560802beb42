"""Progress of a benchmark run on stderr: case i of n, elapsed, and an ETA from the cases done.

A Rich progress bar when stderr is a terminal, one plain line per case otherwise (logs, CI, the
sidecar's benchmark child). The bar is redrawn only between cases, never by a timer thread while a
case is being timed.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``)."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Remaining time at the mean pace of the cases done so far (None before the first is done)."""
    if done <= 0:
        return None
    return elapsed / done * (total - done)


class RunProgress:
    """``start(label)`` before each case, ``finish()`` after it, ``close()`` at the end; ``done`` counts
    the cases that ran, so the ETA is their mean pace times the cases left."""

    def __init__(self, total: int, stream: TextIO | None = None, rich: bool | None = None) -> None:
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self.started = time.monotonic()
        use_rich = self.stream.isatty() if rich is None else rich
        self._bar = None
        if use_rich and total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[timing]}"),
                console=Console(file=self.stream),
                auto_refresh=False,
                transient=False,
            )
            self._task = self._bar.add_task("bench", total=total, timing="")
            self._bar.start()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def timing(self) -> str:
        eta = eta_seconds(self.elapsed, self.done, self.total)
        return f"elapsed {clock(self.elapsed)}, ETA {'?' if eta is None else clock(eta)}"

    def start(self, label: str) -> None:
        i = self.done + 1
        if self._bar is not None:
            self._bar.update(self._task, description=label, timing=self.timing(), refresh=True)
        else:
            print(f"[bench] case {i}/{self.total} {label} | {self.timing()}", file=self.stream, flush=True)

    def finish(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, timing=self.timing(), refresh=True)

    def close(self, note: str = "") -> None:
        if self._bar is not None:
            self._bar.stop()
        print(f"[bench] {self.done}/{self.total} cases in {clock(self.elapsed)}{note}", file=self.stream,
              flush=True)  # fmt: skip
