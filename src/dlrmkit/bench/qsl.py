"""LoadGen's query sample library for DLRM: samples are groups of consecutive test pairs.

Shapes: P pairs, Nd dense features, F sparse features, K samples.
"""

from __future__ import annotations

import numpy as np

from dlrmkit.data.dataset import SplitArrays
from dlrmkit.errors import BenchmarkError


def range_rows(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Row numbers of the ranges [starts[k], starts[k] + sizes[k]), concatenated (no Python loop)."""
    ends = np.cumsum(sizes)
    shift = np.repeat(starts - (ends - sizes), sizes)  # per row: where its range lands in the split
    return np.arange(ends[-1] if len(ends) else 0, dtype=np.int64) + shift


class SampleLibrary:
    """The test split grouped into samples by ``offsets``; LoadGen picks which ones live in RAM.

    ``load`` copies the requested samples, front to back, into one contiguous buffer per array
    (LoadGen's ``load_samples_to_ram``), passing the sparse features through ``prepare`` when the
    model wants its own layout; ``gather`` assembles a batch of loaded samples from it.
    """

    def __init__(self, split: SplitArrays, offsets: np.ndarray, prepare=None):
        if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] > len(split):
            raise BenchmarkError(f"sample offsets cover [{offsets[0]}, {offsets[-1]}) "
                                 f"but the split has {len(split)} pairs")
        self.split = split
        self.prepare = prepare  # sparse (P, F) -> the model's input layout, applied at load (untimed)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.diff(self.offsets)  # (K,) pairs per sample
        self._where = np.full(len(self.sizes), -1, dtype=np.int64)  # sample -> start in the buffer
        self._dense = self._sparse = self._label = None

    @property
    def total_count(self) -> int:
        return len(self.sizes)

    @property
    def pairs(self) -> int:
        return int(self.offsets[-1])

    def load(self, samples: list[int]) -> None:
        """Bring these samples into RAM (replacing what was loaded)."""
        ids = np.unique(np.asarray(samples, dtype=np.int64))  # ascending: sequential reads
        sizes = self.sizes[ids]
        rows = range_rows(self.offsets[ids], sizes)
        self._dense = np.ascontiguousarray(self.split.dense[rows], dtype=np.float32)  # (P, Nd)
        sparse = np.asarray(self.split.sparse[rows])  # (P, F)
        self._sparse = np.ascontiguousarray(sparse if self.prepare is None else self.prepare(sparse))
        self._label = np.asarray(self.split.label[rows], dtype=np.float32)  # (P,)
        self._where[:] = -1
        self._where[ids] = np.cumsum(sizes) - sizes

    def unload(self, samples: list[int]) -> None:
        self._where[:] = -1
        self._dense = self._sparse = self._label = None

    def gather(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(dense (P, Nd), sparse (P, F), labels (P,), sizes (K,)) of loaded samples, in order."""
        where = self._where[samples]
        if (where < 0).any():
            missing = np.asarray(samples)[where < 0][:5].tolist()
            raise BenchmarkError(f"samples {missing} were issued but are not loaded")
        sizes = self.sizes[samples]
        rows = range_rows(where, sizes)
        return self._dense[rows], self._sparse[rows], self._label[rows], sizes
