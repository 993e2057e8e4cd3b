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
) -> Iterator[Batch]:
    """Yield the batches of one epoch, starting at batch ``start_batch``.

    With ``shuffle`` the rows follow `epoch_order(len(split), seed, epoch)`; otherwise file order.
    With ``prefetch`` > 0 a background thread assembles that many batches ahead. Off by default:
    assembling a batch takes well under a millisecond, and on a 2-core machine the extra thread
    competes with torch's intra-op threads (steps then stall for tens of milliseconds).
    """
    n = len(split)
    n_batches = n // batch_size if drop_last else -(-n // batch_size)
    order = epoch_order(n, seed, epoch) if shuffle else None

    def produce(b: int) -> Batch:
        lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
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
