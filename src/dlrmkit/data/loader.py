"""Batches from a split: whole-batch array slicing, no per-row Python work.

Shapes: B batch, Nd dense features, F sparse features.
"""

from __future__ import annotations

import threading
import queue
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from dlrmkit.data.dataset import SplitArrays


@dataclass
class Batch:
    dense: torch.Tensor  # (B, Nd) float32
    sparse: torch.Tensor  # (B, F) int64 row index per table
    label: torch.Tensor  # (B,) float32

    def __len__(self) -> int:
        return self.label.shape[0]


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row permutation for one epoch: a pure function of (seed, epoch), so resume is exact."""
    return np.random.default_rng([seed, epoch]).permutation(rows)


def cap_indices(sparse: np.ndarray, max_index_range: int | None) -> np.ndarray:
    """index mod max_index_range, as the DLRM reference applies ``--max-ind-range``."""
    if max_index_range is None:
        return sparse
    return np.remainder(sparse, max_index_range)


def part_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s share [lo, hi) of a batch of ``rows`` rows cut into ``world_size`` parts."""
    return rows * rank // world_size, rows * (rank + 1) // world_size


def part_positions(rows: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Where, among a split's first ``rows`` rows in file order, rank ``rank``'s rows of
    `batches` (unshuffled, ``part=(rank, world_size)``) sit, in the order it sees them."""
    out = []
    for lo in range(0, rows, batch_size):
        a, b = part_bounds(min(batch_size, rows - lo), rank, world_size)
        out.append(np.arange(lo + a, lo + b))
    return np.concatenate(out) if out else np.empty(0, np.int64)


def make_batch(split: SplitArrays, rows: np.ndarray | slice, max_index_range: int | None = None) -> Batch:
    """Copy rows (a slice or sorted row numbers) out of the split into torch tensors."""
    sparse = cap_indices(np.asarray(split.sparse[rows]), max_index_range)
    return Batch(
        dense=torch.from_numpy(np.array(split.dense[rows], dtype=np.float32)),
        sparse=torch.from_numpy(sparse.astype(np.int64)),
        label=torch.from_numpy(np.array(split.label[rows], dtype=np.float32)),
    )


def batches(
    split: SplitArrays,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    drop_last: bool = False,
    max_index_range: int | None = None,
    prefetch: int = 0,
    part: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """Yield the batches of one epoch, starting at batch ``start_batch``.

    With ``shuffle`` the rows follow `epoch_order(len(split), seed, epoch)`; otherwise file order.
    ``part=(rank, world_size)``: only that rank's share (`part_bounds`) of each global batch of
    ``batch_size`` rows, so the ranks together see exactly the batches one process would.
    With ``prefetch`` > 0 a background thread assembles that many batches ahead. Off by default:
    assembling a batch takes well under a millisecond, and on a 2-core machine the extra thread
    competes with torch's intra-op threads (steps then stall for tens of milliseconds).
    """
    n = len(split)
    n_batches = n // batch_size if drop_last else -(-n // batch_size)
    order = epoch_order(n, seed, epoch) if shuffle else None

    def produce(b: int) -> Batch:
        lo = b * batch_size
        a, z = part_bounds(min(n, lo + batch_size) - lo, *part)
        lo, hi = lo + a, lo + z
        rows = order[lo:hi] if order is not None else slice(lo, hi)
        if order is not None:
            rows = np.sort(rows)  # ascending gathers read memory-mapped files front to back
        return make_batch(split, rows, max_index_range)

    if prefetch <= 0:
        for b in range(start_batch, n_batches):
            yield produce(b)
        return

    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def worker() -> None:
        try:
            for b in range(start_batch, n_batches):
                if stop.is_set():
                    return
                q.put(produce(b))
            q.put(None)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)
