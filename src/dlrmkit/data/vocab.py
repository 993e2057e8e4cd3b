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

A column's dictionary is a C hash map where the compiled helpers are built (one probe per value),
else sorted keys with their indices that grow by merging each block's new values (a sort per
block, never a Python loop per value). Both give the same indices.
"""

from __future__ import annotations

import numpy as np

from dlrmkit.data.native import NativeMap, library

VOCABS = ("hash", "frequency", "reference")


def _into(index: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return index
    out[:] = index
    return out


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
        self.native = NativeMap.create()
        self.dict = SortedDict()

    def update(self, column: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Feed the next values of the column, in file order; returns their indices (written into
        the int32 column ``out`` when given).

        An index is final once given (later values only append), so indexing happens in the same
        pass: one sort of the chunk, one lookup per distinct value.
        """
        if self.native is not None:
            return self.native.first(column, out)
        uniq, first, inverse = np.unique(column.astype(np.uint64), return_index=True, return_inverse=True)
        pos, found = self.dict.find(uniq)
        index = np.empty(uniq.size, dtype=np.int64)
        index[found] = self.dict.values[pos[found]]
        new = np.flatnonzero(~found)
        new = new[np.argsort(first[new], kind="stable")]  # in order of first appearance
        index[new] = len(self.dict) + np.arange(new.size, dtype=np.int64)
        self.dict.insert(uniq[new], index[new])
        return _into(index[inverse.reshape(-1)], out)

    def size(self) -> int:
        return len(self.native) if self.native is not None else len(self.dict)

    @classmethod
    def from_first_rows(cls, keys: np.ndarray, first_rows: np.ndarray) -> "FirstAppearance":
        """The dictionary a pass over all rows would grow, from each distinct value's first row."""
        vocab = cls()
        vocab.update(keys[np.argsort(first_rows, kind="stable")].astype(np.uint32))
        return vocab

    def apply(self, column: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if self.native is not None:
            return self.native.lookup(column, -1, out)
        uniq, inverse = np.unique(column.astype(np.uint64), return_inverse=True)
        return _into(self.dict.lookup(uniq, missing=-1)[inverse.reshape(-1)], out)

    def values_in_index_order(self) -> np.ndarray:
        keys, values = self.native.items() if self.native is not None else (self.dict.keys, self.dict.values)
        out = np.empty(keys.size, dtype=np.uint64)
        out[values] = keys
        return out


class FrequencyCounter:
    """Counts of each value of one column over the training rows; then NVIDIA's dictionary."""

    def __init__(self) -> None:
        self.native = NativeMap.create()
        self.counts = SortedDict()

    def update(self, column: np.ndarray) -> None:
        if self.native is not None:
            self.native.count(column)
            return
        uniq, counts = np.unique(column.astype(np.uint64), return_counts=True)
        pos, found = self.counts.find(uniq)
        self.counts.values[pos[found]] += counts[found]
        self.counts.insert(uniq[~found], counts[~found].astype(np.int64))

    def finish(self, threshold: int) -> "FrequencyVocab":
        keys, counts = self.native.items() if self.native is not None else (self.counts.keys, self.counts.values)
        return FrequencyVocab.from_counts(keys, counts, threshold)


class FrequencyVocab:
    def __init__(self, vocab: SortedDict, values_by_index: np.ndarray, counts_by_index: np.ndarray):
        self.vocab = vocab
        self.values_by_index = values_by_index
        self.counts_by_index = counts_by_index

    @classmethod
    def from_counts(cls, keys: np.ndarray, counts: np.ndarray, threshold: int) -> "FrequencyVocab":
        """NVIDIA's dictionary from each distinct value's training count (``keys`` unique, any order)."""
        keep = counts >= max(threshold, 1)
        keys, counts = keys[keep].astype(np.uint64), counts[keep].astype(np.int64)
        order = np.lexsort((keys, -counts))  # descending count, then ascending value
        ranked = keys[order]
        lib = library()
        if lib is not None:
            vocab = NativeMap(lib, max(ranked.size, 1024))
            vocab.insert(ranked, np.arange(ranked.size))
        else:
            vocab = SortedDict()
            vocab.keys = np.sort(keys)
            index = np.empty(keys.size, dtype=np.int64)
            index[order] = np.arange(keys.size)
            vocab.values = index[np.argsort(keys, kind="stable")]
        return cls(vocab, ranked, counts[order])

    def size(self) -> int:
        return len(self.vocab) + 1  # the last row is shared by rare and unseen values

    def apply(self, column: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if isinstance(self.vocab, NativeMap):
            return self.vocab.lookup(column, len(self.vocab), out)
        uniq, inverse = np.unique(column.astype(np.uint64), return_inverse=True)
        return _into(self.vocab.lookup(uniq, missing=len(self.vocab))[inverse.reshape(-1)], out)


def mod_u32(values: np.ndarray, n: int) -> np.ndarray:
    """values mod n for values below 2^32: in uint32 when n fits (13x faster than int64 division)."""
    if n < 2**32:
        return np.remainder(values.astype(np.uint32, copy=False), np.uint32(n))
    return values.astype(np.int64) % n


def hash_index(column: np.ndarray, max_index_range: int) -> np.ndarray:
    """index = value mod N."""
    return mod_u32(column, max_index_range).astype(np.int64)
