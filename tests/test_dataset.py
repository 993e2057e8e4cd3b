"""The binary dataset format (writer/reader, errors) and the batch loader."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrmkit.data.dataset import Dataset, DatasetWriter
from dlrmkit.data.loader import batches
from dlrmkit.errors import DatasetError

ND, NS = 3, 2


def _block(rng, n, start=0):
    label = (rng.random(n) < 0.4).astype(np.uint8)
    dense = rng.random((n, ND)).astype(np.float32)
    dense[:, 0] = np.arange(start, start + n)  # a unique row id, exact in float32
    sparse = rng.integers(0, 1000, (n, NS)).astype(np.int32)
    return label, dense, sparse


def _write(path: Path, sizes: dict[str, list[int]], seed=0) -> dict[str, tuple]:
    """Write splits in blocks of the given sizes; returns what was written, concatenated."""
    rng = np.random.default_rng(seed)
    w = DatasetWriter(path, ND, NS)
    written = {}
    start = 0
    for split, blocks in sizes.items():
        parts = []
        for n in blocks:
            b = _block(rng, n, start)
            start += n
            w.append(split, *b)
            parts.append(b)
        written[split] = tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
    w.finish((1000, 1000), {"kind": "test"}, {"note": 1})
    return written


def test_round_trip(tmp_path):
    written = _write(tmp_path / "d", {"train": [5, 0, 17], "val": [4], "test": [0]})
    ds = Dataset(tmp_path / "d")
    assert ds.num_dense == ND and ds.num_sparse == NS
    assert ds.table_sizes == (1000, 1000)
    assert ds.splits == {"train": 22, "val": 4, "test": 0}
    assert ds.metadata["source"] == {"kind": "test"} and ds.metadata["note"] == 1
    for split, (label, dense, sparse) in written.items():
        s = ds.split(split)
        assert len(s) == len(label)
        assert s.label.dtype == np.uint8 and s.dense.dtype == np.float32 and s.sparse.dtype == np.int32
        assert s.dense.shape == (len(label), ND) and s.sparse.shape == (len(label), NS)
        assert np.array_equal(s.label, label)
        assert np.array_equal(s.dense, dense)
        assert np.array_equal(s.sparse, sparse)
        loaded = s.load()
        assert np.array_equal(loaded.sparse, sparse) and not isinstance(loaded.sparse, np.memmap)
    # files are headerless little-endian arrays
    raw = np.fromfile(tmp_path / "d" / "train" / "sparse.bin", dtype="<i4").reshape(-1, NS)
    assert np.array_equal(raw, written["train"][2])


def test_preallocate_round_trip(tmp_path):
    w = DatasetWriter(tmp_path / "d", ND, NS)
    maps = w.preallocate("train", 6)
    rng = np.random.default_rng(0)
    label, dense, sparse = _block(rng, 6)
    maps["label"][:], maps["dense"][:], maps["sparse"][:] = label, dense, sparse
    for m in maps.values():
        m.flush()
    w.finish((1000, 1000), {})
    s = Dataset(tmp_path / "d").split("train")
    assert np.array_equal(s.label, label) and np.array_equal(s.dense, dense) and np.array_equal(s.sparse, sparse)


def test_writer_block_shape_mismatch(tmp_path):
    w = DatasetWriter(tmp_path / "d", ND, NS)
    with pytest.raises(ValueError):
        w.append("train", np.zeros(3, np.uint8), np.zeros((3, ND + 1), np.float32), np.zeros((3, NS), np.int32))


def test_rewriting_removes_old_metadata_first(tmp_path):
    _write(tmp_path / "d", {"train": [3]})
    DatasetWriter(tmp_path / "d", ND, NS)  # a new write starts: the old dataset is no longer valid
    with pytest.raises(DatasetError, match="metadata.json"):
        Dataset(tmp_path / "d")


def test_missing_directory(tmp_path):
    path = tmp_path / "nope"
    with pytest.raises(DatasetError) as e:
        Dataset(path)
    assert str(path) in str(e.value)


def test_missing_metadata(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError) as e:
        Dataset(tmp_path / "d")
    assert str(tmp_path / "d") in str(e.value)


@pytest.mark.parametrize("field, value", [("format_version", 2), ("format_version", None), ("format", "other")])
def test_wrong_format_or_version(tmp_path, field, value):
    _write(tmp_path / "d", {"train": [3]})
    meta_path = tmp_path / "d" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as e:
        Dataset(tmp_path / "d")
    assert str(meta_path) in str(e.value)


def test_invalid_json(tmp_path):
    _write(tmp_path / "d", {"train": [3]})
    (tmp_path / "d" / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError) as e:
        Dataset(tmp_path / "d")
    assert str(tmp_path / "d" / "metadata.json") in str(e.value)


@pytest.mark.parametrize("array", ["dense", "label", "sparse"])
def test_truncated_array_file(tmp_path, array):
    _write(tmp_path / "d", {"train": [10], "val": [2]})
    f = tmp_path / "d" / "train" / f"{array}.bin"
    f.write_bytes(f.read_bytes()[:-1])
    ds = Dataset(tmp_path / "d")
    ds.split("val")  # other splits still open
    with pytest.raises(DatasetError) as e:
        ds.split("train")
    assert str(f) in str(e.value)


def test_missing_array_file_and_unknown_split(tmp_path):
    _write(tmp_path / "d", {"train": [10]})
    f = tmp_path / "d" / "train" / "sparse.bin"
    f.unlink()
    ds = Dataset(tmp_path / "d")
    with pytest.raises(DatasetError) as e:
        ds.split("train")
    assert str(f) in str(e.value)
    with pytest.raises(DatasetError, match="test"):
        ds.split("test")


# --- the loader ---------------------------------------------------------------------------


@pytest.fixture
def ids_split(tmp_path):
    _write(tmp_path / "d", {"train": [40, 63]})  # 103 rows, ids 0..102
    return Dataset(tmp_path / "d").split("train")


def _ids(batch) -> list[int]:
    return batch.dense[:, 0].to(torch.int64).tolist()


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffled_epoch_covers_each_row_once(ids_split, drop_last):
    n, bs = len(ids_split), 10
    out = list(batches(ids_split, bs, shuffle=True, seed=3, epoch=0, drop_last=drop_last))
    sizes = [len(b) for b in out]
    ids = [i for b in out for i in _ids(b)]
    if drop_last:
        assert sizes == [bs] * (n // bs)
        assert len(set(ids)) == len(ids) == n // bs * bs
    else:
        assert sizes == [bs] * (n // bs) + [n % bs]
        assert sorted(ids) == list(range(n))
    assert ids != sorted(ids)  # actually shuffled


def test_batch_contents_match_rows(ids_split):
    for b in batches(ids_split, 16, shuffle=True, seed=1, max_index_range=None):
        rows = np.array(_ids(b))
        assert b.dense.dtype == torch.float32 and b.sparse.dtype == torch.int64 and b.label.dtype == torch.float32
        assert np.array_equal(b.label.numpy(), np.asarray(ids_split.label)[rows].astype(np.float32))
        assert np.array_equal(b.sparse.numpy(), np.asarray(ids_split.sparse)[rows])
        assert np.array_equal(b.dense.numpy(), np.asarray(ids_split.dense)[rows])


def test_unshuffled_is_file_order(ids_split):
    ids = [i for b in batches(ids_split, 9) for i in _ids(b)]
    assert ids == list(range(len(ids_split)))


def _epoch(split, **kw):
    return [_ids(b) for b in batches(split, 8, shuffle=True, **kw)]


def test_shuffle_order_depends_on_seed_and_epoch_only(ids_split):
    a = _epoch(ids_split, seed=5, epoch=2)
    _epoch(ids_split, seed=9, epoch=0)  # other calls in between change nothing
    np.random.seed(123)
    torch.manual_seed(123)
    assert _epoch(ids_split, seed=5, epoch=2, prefetch=0) == a
    assert _epoch(ids_split, seed=5, epoch=3) != a
    assert _epoch(ids_split, seed=6, epoch=2) != a
    # the permutation of the loaded copy is the same as of the memory map
    assert _epoch(ids_split.load(), seed=5, epoch=2) == a


@pytest.mark.parametrize("k", [0, 1, 5, 12, 13, 20])
def test_start_batch_equals_skipping(ids_split, k):
    full = list(batches(ids_split, 8, shuffle=True, seed=4, epoch=1))
    rest = list(batches(ids_split, 8, shuffle=True, seed=4, epoch=1, start_batch=k))
    assert len(rest) == max(0, len(full) - k)
    for a, b in zip(full[k:], rest):
        assert torch.equal(a.dense, b.dense) and torch.equal(a.sparse, b.sparse) and torch.equal(a.label, b.label)


def test_max_index_range_applies_modulo(ids_split):
    got = torch.cat([b.sparse for b in batches(ids_split, 10, max_index_range=7)])
    want = np.asarray(ids_split.sparse).astype(np.int64) % 7
    assert np.array_equal(got.numpy(), want)
    assert want.max() == 6 and np.asarray(ids_split.sparse).max() > 7  # the cap was exercised


def test_abandoned_iteration_stops_the_prefetch_thread(ids_split):
    before = threading.active_count()
    for _ in range(5):
        it = batches(ids_split, 1, shuffle=True, prefetch=2)
        next(it)
        it.close()
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
