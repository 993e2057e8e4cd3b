"""The benchmark's query sample library: row ranges, and load/gather against the split's own rows."""

from __future__ import annotations

import numpy as np
import pytest

from dlrmkit.bench.qsl import SampleLibrary, range_rows
from dlrmkit.data.dataset import SplitArrays
from dlrmkit.errors import BenchmarkError

ROWS, NUM_DENSE, NUM_SPARSE = 40, 3, 4
OFFSETS = np.array([0, 3, 4, 9, 15, 16, 30, 37], dtype=np.int64)  # 7 samples of 3, 1, 5, 6, 1, 14, 7 pairs


def _i64(values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@pytest.fixture
def split() -> SplitArrays:
    """A split whose every value says which row it came from."""
    rows = np.arange(ROWS)
    label = (rows % 3 == 0).astype(np.uint8)  # (N,)
    dense = (rows[:, None] * 10 + np.arange(NUM_DENSE)).astype(np.float32)  # (N, Nd)
    sparse = (rows[:, None] * 100 + np.arange(NUM_SPARSE)).astype(np.int32)  # (N, F)
    return SplitArrays(label, dense, sparse)


def _pairs(offsets: np.ndarray, samples) -> np.ndarray:
    """Row numbers of the samples' pairs, sample after sample (a plain loop)."""
    rows = []
    for s in samples:
        rows.extend(range(int(offsets[s]), int(offsets[s + 1])))
    return np.array(rows, dtype=np.int64)


# --- range_rows -------------------------------------------------------------------------------


@pytest.mark.parametrize("starts, sizes, want", [
    ([5], [3], [5, 6, 7]),
    ([0], [1], [0]),
    ([7], [1], [7]),
    ([10, 0, 4], [2, 1, 3], [10, 11, 0, 4, 5, 6]),
    ([2, 2], [2, 2], [2, 3, 2, 3]),  # the same range twice
    ([3, 7, 1], [2, 0, 1], [3, 4, 1]),  # an empty range in the middle
    ([9, 4], [1, 1], [9, 4]),
    ([], [], []),
])
def test_range_rows_hand_written(starts, sizes, want):
    got = range_rows(_i64(starts), _i64(sizes))
    assert got.dtype == np.int64
    assert got.tolist() == want


def test_range_rows_matches_loop(rng):
    for _ in range(20):
        k = int(rng.integers(1, 30))
        starts = rng.integers(0, 1000, size=k)
        sizes = rng.integers(1, 50, size=k)
        want = [r for s, n in zip(starts.tolist(), sizes.tolist()) for r in range(s, s + n)]
        assert range_rows(starts, sizes).tolist() == want


# --- SampleLibrary ----------------------------------------------------------------------------


def test_counts(split):
    qsl = SampleLibrary(split, OFFSETS)
    assert qsl.total_count == 7
    assert qsl.pairs == 37
    assert qsl.sizes.tolist() == [3, 1, 5, 6, 1, 14, 7]


def _check_gather(qsl: SampleLibrary, split: SplitArrays, samples) -> None:
    dense, sparse, labels, sizes = qsl.gather(np.asarray(samples, dtype=np.int64))
    rows = _pairs(OFFSETS, samples)
    np.testing.assert_array_equal(dense, split.dense[rows])
    np.testing.assert_array_equal(sparse, split.sparse[rows])
    np.testing.assert_array_equal(labels, split.label[rows].astype(np.float32))
    assert sizes.tolist() == [int(OFFSETS[s + 1] - OFFSETS[s]) for s in samples]
    assert dense.dtype == np.float32 and labels.dtype == np.float32 and sparse.dtype == split.sparse.dtype


@pytest.mark.parametrize("loaded, gathers", [
    ([0, 1, 2, 3, 4, 5, 6], [[0], [6], [6, 0, 3], [5, 5, 1, 5], list(range(7))]),
    ([5, 2, 6], [[2], [6, 2], [5, 6, 2, 5, 2]]),  # loaded out of order
    ([4], [[4], [4, 4, 4]]),  # a one-pair sample, repeated
    ([3, 3, 1], [[3, 1, 3]]),  # the same sample requested twice when loading
])
def test_load_then_gather_returns_the_split_rows(split, loaded, gathers):
    qsl = SampleLibrary(split, OFFSETS)
    qsl.load(loaded)
    for samples in gathers:
        _check_gather(qsl, split, samples)


def test_gather_unloaded_sample_raises(split):
    qsl = SampleLibrary(split, OFFSETS)
    with pytest.raises(BenchmarkError, match="not loaded"):
        qsl.gather(_i64([0]))
    qsl.load([1, 3])
    with pytest.raises(BenchmarkError) as e:
        qsl.gather(_i64([1, 2, 3, 5]))
    assert "[2, 5]" in str(e.value)
    _check_gather(qsl, split, [3, 1])


def test_load_replaces_and_unload_drops(split):
    qsl = SampleLibrary(split, OFFSETS)
    qsl.load([0, 1])
    qsl.load([2, 6])
    with pytest.raises(BenchmarkError):
        qsl.gather(_i64([0]))
    _check_gather(qsl, split, [6, 2])
    qsl.unload([2, 6])
    with pytest.raises(BenchmarkError):
        qsl.gather(_i64([2]))
    qsl.load([0])  # loading again after an unload
    _check_gather(qsl, split, [0, 0])


def test_loaded_buffer_is_a_copy(split):
    """load copies the samples into RAM (LoadGen's load_samples_to_ram); gather reads that copy."""
    qsl = SampleLibrary(split, OFFSETS)
    qsl.load([0])
    want = np.array(split.dense[0:3])
    split.dense[0:3] = -1.0
    dense, _, _, _ = qsl.gather(_i64([0]))
    np.testing.assert_array_equal(dense, want)


def test_offsets_may_cover_part_of_the_split(split):
    qsl = SampleLibrary(split, OFFSETS[:3])  # count_samples = 2
    assert qsl.total_count == 2 and qsl.pairs == 4
    qsl.load([0, 1])
    dense, _, _, _ = qsl.gather(_i64([1, 0]))
    np.testing.assert_array_equal(dense, split.dense[[3, 0, 1, 2]])


@pytest.mark.parametrize("offsets", [
    [0, 5, ROWS + 1],  # beyond the split
    [0, 100],
    [1, 5],  # not starting at 0
    [0],  # no sample
])
def test_offsets_outside_the_split_raise(split, offsets):
    with pytest.raises(BenchmarkError, match=f"{ROWS} pairs"):
        SampleLibrary(split, _i64(offsets))
