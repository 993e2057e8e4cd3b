"""Timing shared by the benchmark scripts: warm-up excluded, median of several runs."""

from __future__ import annotations

import statistics
import time


def seconds_per_call(fn, steps: int = 20, warmup: int = 5, repeats: int = 5) -> float:
    """Median over ``repeats`` runs of the mean time of one call in a run of ``steps`` calls."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        runs.append((time.perf_counter() - t) / steps)
    return statistics.median(runs)
