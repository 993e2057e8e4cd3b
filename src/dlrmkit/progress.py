"""A progress line for long work: count, rate, ETA. Writes to stderr at most a few times a second."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """``Progress(total, "rows", label="synth")``; call ``update(n)`` as work is done."""

    def __init__(self, total: int | None, unit: str, label: str, stream: TextIO | None = None,
                 interval_s: float = 1.0, clock: Callable[[], float] = time.perf_counter,
                 enabled: bool = True):
        self.total = total
        self.unit = unit
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.clock = clock
        self.enabled = enabled
        self.done = 0
        self.start = clock()
        self._last = self.start
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def rate(self) -> float:
        elapsed = self.clock() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, extra: str = "") -> str:
        rate = self.rate()
        parts = [f"{self.label}: {human(self.done)}" + (f"/{human(self.total)}" if self.total else "") + f" {self.unit}",
                 f"{human(rate)} {self.unit}/s"]
        if self.total and rate > 0:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        if extra:
            parts.append(extra)
        return " | ".join(parts)

    def update(self, n: int, extra: str = "", force: bool = False) -> None:
        self.done += n
        now = self.clock()
        if self.enabled and (force or now - self._last >= self.interval_s):
            self._last = now
            end = "\r" if self._tty else "\n"
            self.stream.write(self.line(extra).ljust(100 if self._tty else 0) + end)
            self.stream.flush()

    def close(self, extra: str = "") -> None:
        if self.enabled:
            elapsed = self.clock() - self.start
            self.stream.write(self.line(extra).ljust(100 if self._tty else 0) + f" | {duration(elapsed)}\n")
            self.stream.flush()
