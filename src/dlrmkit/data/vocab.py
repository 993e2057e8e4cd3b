"""How a categorical value (int(hex, 16), empty -> 0) becomes a row index: three vocabularies.

- ``hash``: index = value mod N; no dictionary; table size N.
- ``reference``: the DLRM reference's dictionary: one per column over ALL kept rows of all days
  in file order (test days included; train rows dropped by sub-sampling are not seen, as in the
  reference), values (mod N when a max index range is given) numbered by
  first appearance; table size = dictionary length. MLPerf's published checkpoints expect it.
  It leaks test-day values into the vocabulary, which is why it is not the default.
- ``frequency``: NVIDIA's: one dictionary per column from the training rows only, values seen at
  least T times numbered by descending count (ties: smaller value first), so hot rows come
  first; every other value (rare, or unseen in training) shares the last index; table size =
  frequent values + 1.

A column's dictionary is kept as sorted keys with their indices, and grows by merging each
block's new values, so building it costs a sort per block, not a Python loop per value.
"""

from __future__ import annotations

import numpy as np

VOCABS = ("hash", "frequency", "reference")


class SortedDict:
    """A map from uint64 keys to int64 values, stored as sorted arrays; vectorized lookups."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)
        self.values = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.keys.size

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in self.keys, found) for each key."""
        pos = np.searchsorted(self.keys, keys)
        found = np.zeros(keys.shape, dtype=bool)
        inside = pos < self.keys.size
        found[inside] = self.keys[pos[inside]] == keys[inside]
        return pos, found

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Insert keys not yet present (``keys`` unique)."""
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        pos = np.searchsorted(self.keys, keys)
        self.keys = np.insert(self.keys, pos, keys)
        self.values = np.insert(self.values, pos, values)

    def lookup(self, keys: np.ndarray, missing: int) -> np.ndarray:
        pos, found = self.find(keys)
        out = np.full(keys.shape, missing, dtype=np.int64)
        out[found] = self.values[pos[found]]
        return out


class FirstAppearance:
    """The reference's dictionary for one column: values numbered in order of first appearance."""

    def __init__(self) -> None:
        self.dict = SortedDict()

    def update(self, column: np.ndarray) -> np.ndarray:
        """Feed the next values of the column, in file order; returns their indices.

        An index is final once given (later values only append), so indexing happens in the same
        pass: one sort of the chunk, one lookup per distinct value.
        """
        uniq, first, inverse = np.unique(column.astype(np.uint64), return_index=True, return_inverse=True)
        pos, found = self.dict.find(uniq)
        index = np.empty(uniq.size, dtype=np.int64)
        index[found] = self.dict.values[pos[found]]
        new = np.flatnonzero(~found)
        new = new[np.argsort(first[new], kind="stable")]  # in order of first appearance
        index[new] = len(self.dict) + np.arange(new.size, dtype=np.int64)
        self.dict.insert(uniq[new], index[new])
        return index[inverse.reshape(-1)]

    def size(self) -> int:
        return len(self.dict)

    def apply(self, column: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(column.astype(np.uint64), return_inverse=True)
        return self.dict.lookup(uniq, missing=-1)[inverse.reshape(-1)]

    def values_in_index_order(self) -> np.ndarray:
        out = np.empty(len(self.dict), dtype=np.uint64)
        out[self.dict.values] = self.dict.keys
        return out


class FrequencyCounter:
    """Counts of each value of one column over the training rows; then NVIDIA's dictionary."""

    def __init__(self) -> None:
        self.counts = SortedDict()

    def update(self, column: np.ndarray) -> None:
        uniq, counts = np.unique(column.astype(np.uint64), return_counts=True)
        pos, found = self.counts.find(uniq)
        self.counts.values[pos[found]] += counts[found]
        self.counts.insert(uniq[~found], counts[~found].astype(np.int64))

    def finish(self, threshold: int) -> "FrequencyVocab":
        keep = self.counts.values >= max(threshold, 1)
        keys, counts = self.counts.keys[keep], self.counts.values[keep]
        order = np.lexsort((keys, -counts))  # descending count, then ascending value
        vocab = SortedDict()
        vocab.keys = keys  # already sorted
        index = np.empty(keys.size, dtype=np.int64)
        index[order] = np.arange(keys.size)
        vocab.values = index
        return FrequencyVocab(vocab, keys[order], counts[order])


class FrequencyVocab:
    def __init__(self, vocab: SortedDict, values_by_index: np.ndarray, counts_by_index: np.ndarray):
        self.vocab = vocab
        self.values_by_index = values_by_index
        self.counts_by_index = counts_by_index

    def size(self) -> int:
        return len(self.vocab) + 1  # the last row is shared by rare and unseen values

    def apply(self, column: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(column.astype(np.uint64), return_inverse=True)
        return self.vocab.lookup(uniq, missing=len(self.vocab))[inverse.reshape(-1)]


def hash_index(column: np.ndarray, max_index_range: int) -> np.ndarray:
    """index = value mod N."""
    return (column.astype(np.int64) % max_index_range).astype(np.int64)
