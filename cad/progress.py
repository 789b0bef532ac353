"""Progress a person can see: a tqdm bar (rate, ETA) at a terminal, one log line per step of the total elsewhere.

A 5,000-image run under SLURM or with its output in a file must not be hours without a sign of life, and a bar's
carriage returns are noise in a log file, so where stderr is not a terminal the same loop logs
"generate toy_objects@v1 [edited]: 120/400 (30%), 2.1 img/s, ETA 2m13s" every `every` of the total instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("cad.progress")

EVERY = 0.1  # a log line per 10% of the total where no bar can be drawn


def interactive() -> bool:
    """Whether a bar can be drawn: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class LogProgress:
    """tqdm's update/close/iteration interface, writing a log line each time another `every` of the total is done
    (and at the end)."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, every: float = EVERY, logger: logging.Logger = log):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n, self.every, self.log = desc, unit, initial, every, logger
        self._start_n, self._start = initial, time.perf_counter()
        self._next = self._threshold(initial)
        self._closed = False

    def _threshold(self, n: int) -> int:
        if not self.total:
            return 0
        step = max(1, int(round(self.total * self.every)))
        return (n // step + 1) * step

    def line(self) -> str:
        done = self.n - self._start_n
        elapsed = time.perf_counter() - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} ({100 * self.n // self.total}%)"
        text += f", {rate:.2f} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        elif self.n and self.total and self.n >= self.total:
            text += f", {_duration(elapsed)}"
        return text

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n >= self._next:
            self._next = self._threshold(self.n)
            if self.n < self.total:
                self.log.info(self.line())

    def set_postfix_str(self, *_: Any, **__: Any) -> None:  # tqdm's interface; nothing to add to a log line
        pass

    def close(self) -> None:
        if not self._closed and self.n > self._start_n:
            self.log.info(self.line())
        self._closed = True

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(LogProgress):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self._closed = True


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, enabled: bool = True, leave: bool = True):
    """A tqdm bar at a terminal, a LogProgress elsewhere, nothing when not `enabled`; use it as tqdm is used
    (iterate over it, or update/close it, or `with`)."""
    if not enabled:
        return _Silent(iterable, total=total, desc=desc, unit=unit, initial=initial)
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
