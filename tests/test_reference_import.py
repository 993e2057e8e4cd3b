"""Importing data the DLRM reference tools made: Terabyte day npz files and MLPerf's bin files.

(The Kaggle npz import is checked against the reference's real files in test_reference_compat.)
"""

from __future__ import annotations

import numpy as np
import pytest

from dlrmkit.cli import main
from dlrmkit.data.dataset import Dataset
from dlrmkit.data.reference_data import import_reference
from dlrmkit.errors import DatasetError


def _day(rng, n, counts):
    x_int = rng.integers(0, 1000, (n, 13)).astype(np.int32)
    x_cat = np.stack([rng.integers(0, c, n) for c in counts], axis=1).astype(np.int32)
    y = rng.integers(0, 2, n).astype(np.int32)
    return x_int, x_cat, y


@pytest.fixture
def terabyte_days(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.integers(2, 50, 26)
    days = [_day(rng, n, counts) for n in (7, 5, 9)]
    files = []
    for d, (x_int, x_cat, y) in enumerate(days):
        files.append(tmp_path / f"day_{d}_reordered.npz")
        # the reference stores X_cat transposed (Fortran order), as np.savez of a transposed view
        np.savez_compressed(files[-1], X_int=x_int, X_cat=np.asfortranarray(x_cat), y=y)
    np.savez(tmp_path / "day_fea_count.npz", counts=counts)
    return files, tmp_path / "day_fea_count.npz", days, counts


def test_terabyte_npz_days_and_splits(terabyte_days, tmp_path):
    files, counts_file, days, counts = terabyte_days
    meta = import_reference("terabyte-npz", files, tmp_path / "out", counts_file, progress=False)
    ds = Dataset(tmp_path / "out")
    assert list(ds.table_sizes) == [int(c) for c in counts]
    # days 0-1 train (12 rows); day 2 (9 rows): first ceil(9/2) = 5 test, last 4 val
    assert ds.splits == {"train": 12, "test": 5, "val": 4}
    x_int = np.concatenate([d[0] for d in days])
    x_cat = np.concatenate([d[1] for d in days])
    y = np.concatenate([d[2] for d in days])
    for name, (lo, hi) in {"train": (0, 12), "test": (12, 17), "val": (17, 21)}.items():
        split = ds.split(name)
        np.testing.assert_array_equal(split.sparse, x_cat[lo:hi])
        np.testing.assert_array_equal(split.label, y[lo:hi])
        np.testing.assert_array_equal(split.dense, np.log1p(x_int[lo:hi].astype(np.float64)).astype(np.float32))
    assert meta["source"]["format"] == "terabyte-npz"
    assert not list((tmp_path / "out").glob(".import-*"))  # scratch files removed


def test_terabyte_npz_max_index_range(terabyte_days, tmp_path):
    files, counts_file, days, counts = terabyte_days
    import_reference("terabyte-npz", files, tmp_path / "out", counts_file, max_index_range=10, progress=False)
    ds = Dataset(tmp_path / "out")
    assert list(ds.table_sizes) == [min(int(c), 10) for c in counts]
    np.testing.assert_array_equal(ds.split("train").sparse, np.concatenate([d[1] for d in days[:2]]) % 10)


def test_mlperf_bin(tmp_path):
    rng = np.random.default_rng(1)
    counts = rng.integers(2, 30, 26)
    parts = {}
    for split, n in (("train", 11), ("val", 4), ("test", 3)):
        x_int, x_cat, y = _day(rng, n, counts)
        x_int[0, 0] = -3  # a negative raw value reads as 0
        rows = np.concatenate([y[:, None], x_int, x_cat], axis=1).astype("<i4")
        rows.tofile(tmp_path / f"terabyte_processed_{split}.bin")
        parts[split] = (x_int, x_cat, y)
    np.savez(tmp_path / "day_fea_count.npz", counts=counts)
    rc = main(["import", "--format", "mlperf-bin", "--input", *[str(tmp_path / f"terabyte_processed_{s}.bin")
                                                               for s in ("train", "val", "test")],
               "--counts", str(tmp_path / "day_fea_count.npz"), "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    ds = Dataset(tmp_path / "out")
    for split, (x_int, x_cat, y) in parts.items():
        s = ds.split(split)
        np.testing.assert_array_equal(s.sparse, x_cat)
        np.testing.assert_array_equal(s.label, y)
        np.testing.assert_array_equal(s.dense, np.log1p(np.maximum(x_int, 0).astype(np.float64)).astype(np.float32))
    assert list(ds.table_sizes) == [int(c) for c in counts]


def test_mlperf_bin_errors(tmp_path):
    bad = tmp_path / "terabyte_processed_train.bin"
    np.zeros(41, dtype="<i4").tofile(bad)  # not a whole number of 40-value rows
    with pytest.raises(DatasetError, match="whole number"):
        import_reference("mlperf-bin", [bad], tmp_path / "out", progress=False)
    good = tmp_path / "terabyte_processed_test.bin"
    rows = np.zeros((2, 40), dtype="<i4")
    rows[:, 14] = 7  # index 7 in C1
    rows.tofile(good)
    np.savez(tmp_path / "c.npz", counts=np.full(26, 5))
    with pytest.raises(DatasetError, match="C1: index 7 found but the table has 5 rows"):
        import_reference("mlperf-bin", [good], tmp_path / "out2", tmp_path / "c.npz", progress=False)
    odd = tmp_path / "data.bin"
    rows.tofile(odd)
    with pytest.raises(DatasetError, match="_train.bin"):
        import_reference("mlperf-bin", [odd], tmp_path / "out3", progress=False)
