"""Synthetic data: determinism, the raw text format, raw/binary agreement, the teacher, layouts."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dlrmkit.config import KAGGLE_CARDINALITIES, NUM_DENSE, NUM_SPARSE, SynthConfig
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.data.splits import day_sizes, split_ranges
from dlrmkit.metrics import roc_auc

BASE = SynthConfig(rows=6000, seed=7, cardinality_scale=0.001, chunk_rows=2500, workers=2)
HEX8 = re.compile(rb"^[0-9a-f]{8}$")
DEC = re.compile(rb"^(0|[1-9][0-9]*)$")


def _arrays(path: Path) -> dict[str, bytes]:
    return {f"{s}/{a}": (path / s / f"{a}.bin").read_bytes()
            for s in ("train", "val", "test") for a in ("label", "dense", "sparse")}


def _global(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows in generation order: train, then test (first half of the last day), then val."""
    parts = [ds.split(s) for s in ("train", "test", "val")]
    return (np.concatenate([np.asarray(p.label) for p in parts]),
            np.concatenate([np.asarray(p.dense) for p in parts]),
            np.concatenate([np.asarray(p.sparse) for p in parts]))


def _raw_lines(path: Path) -> list[list[bytes]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [line.split(b"\t") for line in data[:-1].split(b"\n")]


@pytest.fixture(scope="module")
def raw_and_binary(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    raw_meta = synth.write_raw(BASE, root / "raw", progress=False)
    bin_meta = synth.write_binary(BASE, root / "bin", progress=False)
    return root / "raw", raw_meta, root / "bin", bin_meta


def test_write_binary_deterministic_and_independent_of_workers(tmp_path):
    cfg = replace(BASE, rows=5000, chunk_rows=1200, workers=1)
    m1 = synth.write_binary(cfg, tmp_path / "a", progress=False)
    m2 = synth.write_binary(cfg, tmp_path / "b", progress=False)
    m3 = synth.write_binary(replace(cfg, workers=2), tmp_path / "c", progress=False)
    synth.write_binary(replace(cfg, seed=cfg.seed + 1), tmp_path / "d", progress=False)
    a, b, c, d = (_arrays(tmp_path / n) for n in "abcd")
    assert a == b
    assert a == c
    for m in (m2, m3):
        assert m["oracle_auc"] == m1["oracle_auc"]
        assert m["positive_rate"] == m1["positive_rate"]
    assert a["train/sparse"] != d["train/sparse"]
    assert a["train/dense"] != d["train/dense"]
    assert a["train/label"] != d["train/label"]
    assert not list(tmp_path.glob("*/.teacher_prob*"))  # temporary file removed


def test_raw_lines_are_criteo_text(raw_and_binary):
    raw, meta, _, _ = raw_and_binary
    assert sorted(p.name for p in raw.iterdir()) == ["synth.json", "train.txt"]
    lines = _raw_lines(raw / "train.txt")
    assert len(lines) == BASE.rows == meta["rows"]
    n_empty_dense = n_empty_cat = 0
    for fields in lines:
        assert len(fields) == 1 + NUM_DENSE + NUM_SPARSE == 40
        assert fields[0] in (b"0", b"1")
        for v in fields[1:1 + NUM_DENSE]:
            assert v == b"" or DEC.match(v), v
            n_empty_dense += v == b""
        for v in fields[1 + NUM_DENSE:]:
            assert v == b"" or HEX8.match(v), v
            n_empty_cat += v == b""
    # both kinds of missing value occur
    assert n_empty_dense > 0 and n_empty_cat > 0
    assert json.loads((raw / "synth.json").read_text()) == json.loads(json.dumps(meta))


def test_raw_and_binary_agree(raw_and_binary):
    raw, raw_meta, binary, bin_meta = raw_and_binary
    lines = _raw_lines(raw / "train.txt")
    label, dense, sparse = _global(Dataset(binary))
    assert len(label) == len(lines)

    raw_label = np.array([int(f[0]) for f in lines], dtype=np.uint8)
    assert np.array_equal(raw_label, label)

    raw_dense = np.array([[int(v) if v else -1 for v in f[1:14]] for f in lines], dtype=np.int64)
    want = np.log1p(np.maximum(raw_dense, 0).astype(np.float64)).astype(np.float32)
    assert np.array_equal(want, dense)
    assert np.all(dense[raw_dense < 0] == 0)

    cats = [f[14:] for f in lines]
    empty = np.array([[v == b"" for v in c] for c in cats])
    assert np.array_equal(empty, sparse == 0)

    assert raw_meta["oracle_auc"] == bin_meta["oracle_auc"]
    assert raw_meta["positive_rate"] == bin_meta["positive_rate"]


def test_raw_hex_values_map_one_to_one_to_binary_indices(raw_and_binary):
    raw, _, binary, _ = raw_and_binary
    lines = _raw_lines(raw / "train.txt")
    _, _, sparse = _global(Dataset(binary))
    multi_valued = 0
    for col in range(NUM_SPARSE):
        hex_to_idx: dict[bytes, set] = {}
        idx_to_hex: dict[int, set] = {}
        for row, fields in enumerate(lines):
            h, i = fields[14 + col], int(sparse[row, col])
            hex_to_idx.setdefault(h, set()).add(i)
            idx_to_hex.setdefault(i, set()).add(h)
        assert all(len(v) == 1 for v in hex_to_idx.values()), col
        assert all(len(v) == 1 for v in idx_to_hex.values()), col
        multi_valued += len(hex_to_idx) > 2
    assert multi_valued > 5  # the check covers columns with many distinct values


@pytest.mark.parametrize("click_rate", [0.25, 0.1])
def test_positive_rate_near_click_rate(tmp_path, click_rate):
    cfg = SynthConfig(rows=50_000, seed=11, cardinality_scale=0.001, click_rate=click_rate, workers=2)
    meta = synth.write_binary(cfg, tmp_path / "d", progress=False)
    label, _, _ = _global(Dataset(tmp_path / "d"))
    assert meta["positive_rate"] == pytest.approx(label.mean(), abs=1e-12)
    assert abs(label.mean() - click_rate) < 0.03


def test_teacher_probabilities_labels_and_oracle_auc(tmp_path):
    cfg = SynthConfig(rows=20_000, seed=5, cardinality_scale=0.001, chunk_rows=1 << 15, workers=1)
    meta = synth.write_binary(cfg, tmp_path / "d", progress=False)
    teacher = synth._draw_teacher(cfg)
    label, dense_raw, ranks, prob = synth.generate_chunk(cfg, teacher, 0)
    assert label.shape == (cfg.rows,)

    # the chunk is what was written
    g_label, g_dense, g_sparse = _global(Dataset(tmp_path / "d"))
    assert np.array_equal(g_label, label)
    assert np.array_equal(g_sparse, ranks.astype(np.int32))
    assert np.array_equal(g_dense, np.log1p(np.maximum(dense_raw, 0)).astype(np.float32))

    # the oracle AUC is the teacher probability's AUC, overall and per split
    assert meta["oracle_auc"]["all"] == pytest.approx(roc_auc(label, prob), abs=1e-12)
    ranges = split_ranges(day_sizes(cfg.rows, 7))
    for split, (lo, hi) in ranges.items():
        assert meta["oracle_auc"][split] == pytest.approx(roc_auc(label[lo:hi], prob[lo:hi]), abs=1e-12)
    assert 0.65 < meta["oracle_auc"]["all"] < 0.95

    # bias solved for the click rate; labels are Bernoulli(prob): calibrated within each decile
    assert abs(prob.mean() - cfg.click_rate) < 0.01
    edges = np.quantile(prob, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, 9)
    for b in range(10):
        sel = bins == b
        p = prob[sel].astype(np.float64)
        sigma = np.sqrt(np.sum(p * (1 - p))) / sel.sum()
        assert abs(label[sel].mean() - p.mean()) < 5 * sigma + 1e-9, b


def test_table_sizes_scale_with_cardinality_scale(small_data, small_meta):
    cfg = SynthConfig(cardinality_scale=0.001)
    assert len(cfg.table_sizes) == NUM_SPARSE
    assert cfg.table_sizes[2] == 10131  # 10131227 * 0.001
    assert cfg.table_sizes[0] == 2  # round(1.46) = 1, floored at 2 (missing + one value)
    assert cfg.table_sizes[8] == 2  # 3 * 0.001
    assert SynthConfig(cardinality_scale=1.0).table_sizes == KAGGLE_CARDINALITIES
    assert SynthConfig(cardinality_scale=0.01).table_sizes[2] == 101312
    small, big = SynthConfig(cardinality_scale=0.001).table_sizes, SynthConfig(cardinality_scale=0.01).table_sizes
    assert all(b >= s for s, b in zip(small, big))

    assert tuple(small_meta["table_sizes"]) == SynthConfig(cardinality_scale=0.001).table_sizes
    ds = Dataset(small_data)
    for split in ("train", "val", "test"):
        sp = np.asarray(ds.split(split).sparse)
        assert sp.min() >= 0
        assert np.all(sp.max(axis=0) < np.array(ds.table_sizes))


@pytest.mark.parametrize("n, days, want_days, want_test, want_val", [
    (10109, 7, [1445] + [1444] * 6, 722, 722),
    (15, 7, [3, 2, 2, 2, 2, 2, 2], 1, 1),
    (22, 7, [4, 3, 3, 3, 3, 3, 3], 2, 1),
    (1000, 3, [334, 333, 333], 167, 166),
    (100, 24, [8] + [4] * 23, 2, 2),
])
def test_day_sizes_and_split_ranges_hand_cases(n, days, want_days, want_test, want_val):
    got_days = day_sizes(n, days)
    assert got_days == want_days
    r = split_ranges(got_days)
    train_end = n - want_days[-1]
    assert r["train"] == (0, train_end)
    assert r["test"] == (train_end, train_end + want_test)  # test: the FIRST half of the last day
    assert r["val"] == (train_end + want_test, n)
    assert r["val"][1] - r["val"][0] == want_val


def test_binary_split_sizes_follow_layout(small_meta, tmp_path):
    n = small_meta["source"]["config"]["rows"]
    r = split_ranges(day_sizes(n, 7))
    assert {k: v["rows"] for k, v in small_meta["splits"].items()} == {k: b - a for k, (a, b) in r.items()}

    cfg = SynthConfig(rows=1000, seed=2, layout="terabyte", days=3, cardinality_scale=0.001, workers=1)
    meta = synth.write_binary(cfg, tmp_path / "tb", progress=False)
    assert {k: v["rows"] for k, v in meta["splits"].items()} == {"train": 667, "test": 167, "val": 166}


def test_terabyte_raw_layout_day_files(tmp_path):
    cfg = SynthConfig(rows=1000, seed=3, layout="terabyte", days=3, cardinality_scale=0.001,
                      chunk_rows=150, workers=2)
    meta = synth.write_raw(cfg, tmp_path / "tb", progress=False)
    names = [f"day_{d}" for d in range(3)]
    assert meta["files"] == names
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == sorted(names + ["synth.json"])
    counts = [(tmp_path / "tb" / n).read_bytes().count(b"\n") for n in names]
    assert counts == day_sizes(1000, 3) == meta["day_rows"]
    for n in names:
        assert all(len(f) == 40 for f in _raw_lines(tmp_path / "tb" / n))
    # the same rows as the Kaggle layout of the same seed and size, cut into days
    synth.write_raw(replace(cfg, layout="kaggle"), tmp_path / "kg", progress=False)
    joined = b"".join((tmp_path / "tb" / n).read_bytes() for n in names)
    assert joined == (tmp_path / "kg" / "train.txt").read_bytes()
