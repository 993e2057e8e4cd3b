"""Sample aggregation: which consecutive user-item pairs form each LoadGen sample.

An MLPerf DLRM sample is a group of consecutive pairs of the test split. The groups are described
by ``offsets`` (int64, length samples + 1): sample ``i`` is pairs ``offsets[i]:offsets[i + 1]``.
The rules and their random draws follow the MLPerf reference harness exactly, so a trace written
here is identical to the reference's for the same quantile file and seed.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from dlrmkit.config import AggregationConfig
from dlrmkit.errors import ConfigError


def read_quantile_file(path: str | Path) -> tuple[int, ...]:
    """Query sizes from a quantile file: one line of comma-separated integers (MLPerf's format)."""
    path = Path(path)
    try:
        lines = path.read_text().strip().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read quantile file {path}: {e.strerror}") from None
    line = lines[0] if lines else ""
    try:
        sizes = tuple(int(tok) for tok in line.replace(",", " ").split())
    except ValueError:
        raise ConfigError(f"{path}:1: expected comma-separated integers, got {line[:80]!r}") from None
    if not sizes:
        raise ConfigError(f"{path}: no query sizes in the file")
    if any(s <= 0 for s in sizes) or list(sizes) != sorted(sizes):
        raise ConfigError(f"{path}:1: query sizes must be positive and non-decreasing, got {sizes}")
    return sizes


def _draw_until_covered(draw, pairs: int, expected_size: float) -> np.ndarray:
    """Offsets from sizes drawn in chunks until ``pairs`` are covered; the last group is clipped."""
    chunks, total = [], 0
    while total < pairs:
        sizes = draw(max(16, int(1.1 * (pairs - total) / expected_size) + 16))
        chunks.append(sizes)
        total += int(sizes.sum())
    ends = np.cumsum(np.concatenate(chunks))
    last = int(np.searchsorted(ends, pairs))  # first group reaching the end of the split
    ends = np.minimum(ends[: last + 1], pairs)
    return np.concatenate([[0], ends]).astype(np.int64)


def aggregate_offsets(pairs: int, cfg: AggregationConfig) -> np.ndarray:
    """Group ``pairs`` consecutive pairs into samples; returns the offsets (samples + 1,)."""
    if pairs <= 0:
        raise ConfigError(f"cannot aggregate an empty split ({pairs} pairs)")
    if cfg.rule == "fixed":
        size = cfg.fix or 1
        return np.minimum(np.arange(0, pairs + size, size, dtype=np.int64), pairs)[: -(-pairs // size) + 1]
    if cfg.rule == "quantile":
        # The reference draws quantile[np.random.randint(0, len(quantile))] one group at a time from
        # numpy's legacy generator seeded with --numpy-rand-seed. A private RandomState with the same
        # seed yields the same stream, and drawing in chunks yields the same values in order.
        quantile = np.asarray(cfg.quantile, dtype=np.int64)
        rng = np.random.RandomState(cfg.seed)
        return _draw_until_covered(lambda k: quantile[rng.randint(0, len(quantile), size=k)],
                                   pairs, float(quantile.mean()))
    # uniform: the reference draws random.randint(min, max) (Python's generator, inclusive bounds)
    py_rng = random.Random(cfg.seed)
    return _draw_until_covered(
        lambda k: np.array([py_rng.randint(cfg.min, cfg.max) for _ in range(k)], dtype=np.int64),
        pairs, (cfg.min + cfg.max) / 2)


def write_trace(path: str | Path, offsets: np.ndarray, count: int | None = None) -> None:
    """The reference's trace file: one line ``start, end, size`` per sample (the first ``count``)."""
    n = len(offsets) - 1 if count is None else min(count, len(offsets) - 1)
    starts, ends = offsets[:n], offsets[1 : n + 1]
    lines = [f"{s}, {e}, {e - s}\n" for s, e in zip(starts.tolist(), ends.tolist())]
    Path(path).write_text("".join(lines))


def read_trace(path: str | Path) -> np.ndarray:
    """Offsets back from a trace file (written here or by the reference harness)."""
    path = Path(path)
    starts, ends = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            s, e, n = (int(tok) for tok in line.split(","))
        except ValueError:
            raise ConfigError(f"{path}:{number}: expected 'start, end, size', got {line[:80]!r}") from None
        if e - s != n or (ends and s != ends[-1]):
            raise ConfigError(f"{path}:{number}: sample [{s}, {e}) of size {n} does not follow the previous one")
        starts.append(s)
        ends.append(e)
    if not starts:
        raise ConfigError(f"{path}: empty trace")
    return np.array([starts[0], *ends], dtype=np.int64)
