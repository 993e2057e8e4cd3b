"""FlatTable, the read-only value -> index table the Spark engine's write tasks share through a file:
built by the C map or by numpy, looked up in C or in numpy, every combination gives each key its
value and every absent key the ``missing`` index, also through a saved, memory-mapped file."""

from __future__ import annotations

import numpy as np
import pytest

from dlrmkit.data import native
from dlrmkit.data.native import FlatTable


def _keys_values(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n distinct uint32 keys, the extremes 0 and 2^32 - 1 among them, and a permutation of 0..n-1."""
    rng = np.random.default_rng(seed)
    pool = np.unique(rng.integers(1, 2**32 - 1, 3 * n + 10, dtype=np.uint64))
    keys = np.concatenate([[0, 2**32 - 1], rng.permutation(pool)])[:n].astype(np.uint32)
    return rng.permutation(keys), rng.permutation(n).astype(np.int64)


def _numpy_only(monkeypatch) -> None:
    monkeypatch.setattr(native, "library", lambda: None)


@pytest.mark.parametrize("n", [1, 15, 1000, 70_000])
@pytest.mark.parametrize("built_by, looked_up_by", [("c", "c"), ("c", "numpy"), ("numpy", "c"), ("numpy", "numpy")])
def test_every_key_found_and_absent_keys_missing(monkeypatch, tmp_path, n, built_by, looked_up_by):
    if native.library() is None and "c" in (built_by, looked_up_by):
        pytest.skip("the compiled helpers are not built")
    keys, values = _keys_values(n, seed=n)
    with monkeypatch.context() as m:
        if built_by == "numpy":
            _numpy_only(m)
        table = FlatTable.build(keys, values)
    assert len(table) == n and table.capacity >= 2 * n and table.capacity & (table.capacity - 1) == 0
    table.save(tmp_path / "t.npy")
    mapped = FlatTable.open(tmp_path / "t.npy", n)
    assert isinstance(mapped.slots, np.memmap)
    rng = np.random.default_rng(1)
    absent = np.setdiff1d(rng.integers(0, 2**32, 5000, dtype=np.uint64), keys.astype(np.uint64)).astype(np.uint32)
    query = rng.permutation(np.concatenate([keys, absent, keys[: n // 2]]))
    want = np.full(query.size, -7, dtype=np.int64)
    position = {int(k): int(v) for k, v in zip(keys, values)}
    want[:] = [position.get(int(q), -7) for q in query]
    if looked_up_by == "numpy":
        _numpy_only(monkeypatch)
    for t in (table, mapped):
        np.testing.assert_array_equal(t.lookup(query, missing=-7), want)
        matrix = np.stack([query, query[::-1]], axis=1)  # a strided column in and out
        out = np.zeros(matrix.shape, dtype=np.int32)
        t.lookup(matrix[:, 1], missing=-7, out=out[:, 1])
        np.testing.assert_array_equal(out[:, 1], want[::-1])
        assert not out[:, 0].any()


def test_numpy_and_c_tables_have_the_same_capacity(monkeypatch):
    """Either builder sizes the table as the C map grows (a power of two, at least twice the
    entries), so a table's memory does not depend on which one made it."""
    if native.library() is None:
        pytest.skip("the compiled helpers are not built")
    for n in (1, 8, 9, 1000, 1024, 1025):
        keys, values = _keys_values(n, seed=3)
        c = FlatTable.build(keys, values).capacity
        with monkeypatch.context() as m:
            _numpy_only(m)
            assert FlatTable.build(keys, values).capacity == c, n
