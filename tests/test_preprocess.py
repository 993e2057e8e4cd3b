"""`dlrmkit preprocess`: exact outputs on hand-written files for every vocabulary, the Terabyte
layout, determinism, resumable staging, sub-sampling, and agreement with
`dlrmkit synth`'s binary output.

Expected arrays come from hand derivation (the C1 / I1 columns and labels of the 23-line file)
and from tests/criteo_naive.py, a pure-Python re-implementation of the documented definitions.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

import dlrmkit.data.stage as stage
from criteo_naive import expected_dataset, kaggle_days, parse_text, random_line
from dlrmkit.cli import main
from preprocess_helpers import (SPLITS, arrays, check_against, comparable_meta, dataset_files, load_counts,
                                random_text, repetitive_text, run)

# --- (a) a hand-written Kaggle file ----------------------------------------------------------
# 23 rows: days of floor(23/7) = 3 rows, day 0 gets the remainder: [5, 3, 3, 3, 3, 3, 3].
# Train = rows 0..19; day 6 = rows 20..22: test = first ceil(3/2) = 2 rows (20, 21), val = row 22.

LABELS = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1]
I1 = ["", "-1", "0", "1", "2", "-5", "1000000", "2147483647", "3", "", "7", "7", "8", "9", "10", "11", "12", "13",
      "14", "15", "16", "-2147483648", "63"]
I1_LOG = [0, 0, 0, math.log(2), math.log(3), 0, math.log(1000001), 31 * math.log(2), math.log(4), 0] + \
         [math.log(k + 1) for k in (7, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)] + [0, 6 * math.log(2)]
# C1 values: a=10, b=11, c=12, d=13, e=14, f=15, 10=16, "" = 0.
C1 = ["0a", "0b", "0A", "", "c", "B", "a", "0d", "0000000a", "b", "0c", "a", "", "b", "a", "E", "a", "b", "c", "a",
      "f", "a", "10"]
# Hand-derived C1 indices and files for each vocabulary:
C1_EXPECTED = {
    # value mod 4: 2 3 2 0 0 3 2 1 2 3 0 2 0 3 2 2 2 3 0 2 | 3 2 | 0
    ("hash", 4, 1): dict(index=[2, 3, 2, 0, 0, 3, 2, 1, 2, 3, 0, 2, 0, 3, 2, 2, 2, 3, 0, 2, 3, 2, 0],
                         size=4, vocab=None, counts=[5, 1, 9, 5]),
    # first appearance over all rows: 10 11 0 12 13 14 15(test) 16(val)
    ("reference", None, 1): dict(index=[0, 1, 0, 2, 3, 1, 0, 4, 0, 1, 3, 0, 2, 1, 0, 5, 0, 1, 3, 0, 6, 0, 7],
                                 size=8, vocab=[10, 11, 0, 12, 13, 14, 15, 16], counts=[8, 5, 2, 3, 1, 1, 0, 0]),
    # first appearance of value mod 4: 2 3 0 1
    ("reference", 4, 1): dict(index=[0, 1, 0, 2, 2, 1, 0, 3, 0, 1, 2, 0, 2, 1, 0, 0, 0, 1, 2, 0, 1, 0, 2],
                              size=4, vocab=[2, 3, 0, 1], counts=[9, 5, 5, 1]),
    # train counts: 10:8 11:5 12:3 0:2 13:1 14:1; unseen 15, 16 -> last index 6
    ("frequency", None, 1): dict(index=[0, 1, 0, 3, 2, 1, 0, 4, 0, 1, 2, 0, 3, 1, 0, 5, 0, 1, 2, 0, 6, 0, 6],
                                 size=7, vocab=[10, 11, 12, 0, 13, 14], counts=[8, 5, 3, 2, 1, 1, 0]),
    # threshold 2 keeps 10 11 12 0; 13 14 15 16 -> 4
    ("frequency", None, 2): dict(index=[0, 1, 0, 3, 2, 1, 0, 4, 0, 1, 2, 0, 3, 1, 0, 4, 0, 1, 2, 0, 4, 0, 4],
                                 size=5, vocab=[10, 11, 12, 0], counts=[8, 5, 3, 2, 2]),
    # train counts of value mod 4: 2:9 3:5 0:5 1:1 -> order 2, 0, 3, 1 (tie 0 < 3)
    ("frequency", 4, 1): dict(index=[0, 2, 0, 1, 1, 2, 0, 3, 0, 2, 1, 0, 1, 2, 0, 0, 0, 2, 1, 0, 2, 0, 1],
                              size=5, vocab=[2, 0, 3, 1], counts=[9, 5, 5, 1, 0]),
}


def hand_file(path: Path) -> Path:
    rnd = random.Random(2024)
    lines = []
    for r in range(23):
        dense = [I1[r]] + [rnd.choice(["", "0", "5", "-2", "123456", "99"]) for _ in range(12)]
        sparse = [C1[r]] + [rnd.choice(["", "1", "ab", "AB", "ffffffff", "8"][: 2 + j % 5]) for j in range(25)]
        lines.append("\t".join([str(LABELS[r])] + dense + sparse) + "\n")
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("vocab, n, threshold", list(C1_EXPECTED), ids=[f"{v}-{n}-{t}" for v, n, t in C1_EXPECTED])
def test_kaggle_hand_file(tmp_path, vocab, n, threshold):
    src = hand_file(tmp_path / "train.txt")
    meta = run(tmp_path / "out", [src], vocab=vocab, max_index_range=n, frequency_threshold=threshold)
    out = tmp_path / "out"
    hand = C1_EXPECTED[(vocab, n, threshold)]
    assert {s: v["rows"] for s, v in meta["splits"].items()} == {"train": 20, "val": 1, "test": 2}
    assert meta["source"]["day_rows"] == [5, 3, 3, 3, 3, 3, 3]
    assert meta["source"]["rows"] == meta["source"]["lines"] == 23
    assert meta["table_sizes"][0] == hand["size"]
    got = arrays(out)
    # hand-derived columns
    np.testing.assert_array_equal(got["train"][0], LABELS[:20])
    np.testing.assert_array_equal(got["test"][0], [1, 0])
    np.testing.assert_array_equal(got["val"][0], [1])
    i1 = np.array(I1_LOG, dtype=np.float32)
    np.testing.assert_array_equal(got["train"][1][:, 0], i1[:20])
    np.testing.assert_array_equal(got["test"][1][:, 0], i1[20:22])
    np.testing.assert_array_equal(got["val"][1][:, 0], i1[22:])
    np.testing.assert_array_equal(got["train"][2][:, 0], hand["index"][:20])
    np.testing.assert_array_equal(got["test"][2][:, 0], hand["index"][20:22])
    np.testing.assert_array_equal(got["val"][2][:, 0], hand["index"][22:])
    np.testing.assert_array_equal(load_counts(out, 1, hand["size"]), hand["counts"])
    if hand["vocab"] is None:
        assert sorted(p.name for p in (out / "vocab").iterdir()) == []
    else:
        np.testing.assert_array_equal(np.load(out / "vocab" / "C1.npy").astype(np.int64), hand["vocab"])
    # every column against the naive re-implementation
    label, dense, sparse = parse_text(src.read_text())
    check_against(out, expected_dataset(label, dense, sparse, kaggle_days(23), vocab, n, threshold))
    assert not (out / ".stage").exists()


def test_kaggle_hand_file_through_cli(tmp_path, capsys):
    src = hand_file(tmp_path / "train.txt")
    assert main(["preprocess", "--dataset", "kaggle", "--input", str(src), "--out", str(tmp_path / "cli"),
                 "--vocab", "frequency", "--frequency-threshold", "2", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "wrote 23 rows" in captured.out and captured.err == ""
    run(tmp_path / "api", [src], vocab="frequency", frequency_threshold=2)
    assert dataset_files(tmp_path / "cli") == dataset_files(tmp_path / "api")
    assert comparable_meta(tmp_path / "cli") == comparable_meta(tmp_path / "api")


@pytest.mark.parametrize("vocab, n", [("reference", None), ("frequency", None), ("hash", 1000), ("reference", 3)])
def test_kaggle_random_file_equals_naive(tmp_path, vocab, n):
    src = tmp_path / "train.txt"
    src.write_text(repetitive_text(300, seed=8))
    run(tmp_path / "out", [src], vocab=vocab, max_index_range=n)
    label, dense, sparse = parse_text(src.read_text())
    check_against(tmp_path / "out", expected_dataset(label, dense, sparse, kaggle_days(300), vocab, n))


# --- (b) terabyte layout ---------------------------------------------------------------------

@pytest.mark.parametrize("vocab", ["reference", "frequency"])
def test_terabyte_three_days(tmp_path, vocab):
    text = repetitive_text(12, seed=5)
    lines = text.splitlines(keepends=True)
    days = [lines[:4], lines[4:7], lines[7:]]
    paths = []
    for d, day in enumerate(days):
        paths.append(tmp_path / f"day_{d}")
        paths[-1].write_text("".join(day))
    meta = run(tmp_path / "out", paths, dataset="terabyte", vocab=vocab)
    assert meta["source"]["day_rows"] == [4, 3, 5]
    # days 0-1 train (7 rows); day 2 (5 rows): first 3 test, last 2 val
    assert {s: v["rows"] for s, v in meta["splits"].items()} == {"train": 7, "val": 2, "test": 3}
    label, dense, sparse = parse_text(text)
    got = arrays(tmp_path / "out")
    np.testing.assert_array_equal(got["test"][0], label[7:10])
    np.testing.assert_array_equal(got["val"][0], label[10:12])
    check_against(tmp_path / "out", expected_dataset(label, dense, sparse, [4, 3, 5], vocab))


# --- (d) determinism -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "train.txt"
    path.write_text(repetitive_text(1000, seed=3) + random_text(2000, seed=3))
    return path


@pytest.mark.parametrize("vocab", ["reference", "frequency"])
def test_deterministic_and_independent_of_workers(tmp_path, big_file, vocab):
    assert big_file.stat().st_size > 4 * (1 << 16)
    run(tmp_path / "a", [big_file], vocab=vocab, block_bytes=1 << 16, workers=1)
    run(tmp_path / "b", [big_file], vocab=vocab, block_bytes=1 << 16, workers=1)
    run(tmp_path / "c", [big_file], vocab=vocab, block_bytes=1 << 16, workers=2)
    run(tmp_path / "d", [big_file], vocab=vocab, workers=2)  # one block
    a = dataset_files(tmp_path / "a")
    assert a == dataset_files(tmp_path / "b") == dataset_files(tmp_path / "c") == dataset_files(tmp_path / "d")
    assert comparable_meta(tmp_path / "a") == comparable_meta(tmp_path / "c") == comparable_meta(tmp_path / "d")


# --- (e) resumable staging -------------------------------------------------------------------

def _terabyte_inputs(tmp_path: Path) -> list[Path]:
    paths = []
    for d in range(3):
        paths.append(tmp_path / f"day_{d}")
        paths[-1].write_text(repetitive_text(200 + 50 * d, seed=10 + d))
    return paths


def _stage_mtimes(out: Path) -> dict[str, int]:
    """{"<k>/<file>": mtime} of the stage files."""
    stage = out / ".stage"
    return {str(p.relative_to(stage)): p.stat().st_mtime_ns for p in stage.rglob("*") if p.is_file()}


def test_stage_is_reused_and_redone_when_incomplete(tmp_path, monkeypatch):
    inputs = _terabyte_inputs(tmp_path)
    out = tmp_path / "out"
    run(out, inputs, dataset="terabyte", vocab="reference", keep_stage=True)
    first = dataset_files(out)
    assert sorted(p.name for p in (out / ".stage").iterdir()) == ["0000", "0001", "0002"]
    assert all((out / ".stage" / k / "done.json").is_file() for k in ("0000", "0001", "0002"))
    mtimes = _stage_mtimes(out)

    calls = []
    real_parse = stage.parse_block

    def counting_parse(data, **kwargs):
        calls.append(len(data))
        return real_parse(data, **kwargs)

    def failing_parse(data, **kwargs):
        raise AssertionError("parse_block called: the stage was not reused")

    # rerun unchanged: nothing is parsed again, stage files untouched, same output
    monkeypatch.setattr(stage, "parse_block", failing_parse)
    run(out, inputs, dataset="terabyte", vocab="reference", keep_stage=True)
    assert _stage_mtimes(out) == mtimes
    assert dataset_files(out) == first

    # a crash while staging file 1 (no done.json): that file alone is parsed again
    (out / ".stage" / "0001" / "done.json").unlink()
    (out / ".stage" / "0001" / "label.bin").write_bytes(b"garbage")
    with pytest.raises(AssertionError, match="not reused"):
        run(out, inputs, dataset="terabyte", vocab="reference", keep_stage=True)
    monkeypatch.setattr(stage, "parse_block", counting_parse)
    run(out, inputs, dataset="terabyte", vocab="reference", keep_stage=True)
    assert sum(calls) == inputs[1].stat().st_size
    assert (out / ".stage" / "0001" / "done.json").is_file()
    assert dataset_files(out) == first
    after = _stage_mtimes(out)
    assert {k: v for k, v in after.items() if not k.startswith("0001")} == \
        {k: v for k, v in mtimes.items() if not k.startswith("0001")}

    # a changed input invalidates its stage
    calls.clear()
    with open(inputs[2], "a") as f:
        f.write(repetitive_text(3, seed=99))
    meta = run(out, inputs, dataset="terabyte", vocab="reference")
    assert sum(calls) == inputs[2].stat().st_size
    assert meta["source"]["day_rows"] == [200, 250, 303]
    assert not (out / ".stage").exists()  # keep_stage=False removes it


def test_rerun_over_existing_output_replaces_it(tmp_path):
    src = tmp_path / "train.txt"
    src.write_text(repetitive_text(100, seed=1))
    run(tmp_path / "out", [src], vocab="reference")
    src.write_text(repetitive_text(60, seed=2))
    meta = run(tmp_path / "out", [src], vocab="frequency")
    assert meta["source"]["rows"] == 60
    label, dense, sparse = parse_text(src.read_text())
    check_against(tmp_path / "out", expected_dataset(label, dense, sparse, kaggle_days(60), "frequency"))


# --- (f) sub-sampling ------------------------------------------------------------------------

SUB_ROWS = 4000
ROW_ID_RANGE = 8192  # hash vocab: C1 = row + 1 in hex, so its index (value mod 8192) names the row


@pytest.fixture(scope="module")
def subsample_file(tmp_path_factory) -> Path:
    rnd = random.Random(17)
    lines = []
    for r in range(SUB_ROWS):
        fields = random_line(rnd, label=int(rnd.random() < 0.25)).rstrip("\n").split("\t")
        fields[14] = format(r + 1, "x")
        for c in range(15, 40, 3):  # a few repetitive columns, so vocabularies are not all singletons
            fields[c] = rnd.choice(["", "1", "2", "abc", "ABC", "ffff"])
        lines.append("\t".join(fields) + "\n")
    path = tmp_path_factory.mktemp("sub") / "train.txt"
    path.write_text("".join(lines))
    return path


def _row_ids(split_arrays) -> np.ndarray:
    return split_arrays[2][:, 0].astype(np.int64) - 1


def test_sub_sampling_drops_only_negative_train_rows(tmp_path, subsample_file):
    rate = 0.5
    kw = dict(vocab="hash", max_index_range=ROW_ID_RANGE)
    base_meta = run(tmp_path / "base", [subsample_file], **kw)
    meta = run(tmp_path / "s3", [subsample_file], sub_sample_rate=rate, seed=3, **kw)
    run(tmp_path / "s3b", [subsample_file], sub_sample_rate=rate, seed=3, workers=2, block_bytes=1 << 16, **kw)
    run(tmp_path / "s4", [subsample_file], sub_sample_rate=rate, seed=4, **kw)
    base, s3, s4 = arrays(tmp_path / "base"), arrays(tmp_path / "s3"), arrays(tmp_path / "s4")

    # val and test untouched
    for split in ("val", "test"):
        for a, b in zip(base[split], s3[split]):
            np.testing.assert_array_equal(a, b)
    # train: an in-order subset of the base rows, identical row contents
    base_rows = _row_ids(base["train"])
    np.testing.assert_array_equal(base_rows, np.arange(base_rows.size))
    rows = _row_ids(s3["train"])
    assert np.all(np.diff(rows) > 0)
    for a, b in zip(base["train"], s3["train"]):
        np.testing.assert_array_equal(a[rows], b)
    base_label = base["train"][0]
    dropped = np.setdiff1d(base_rows, rows)
    assert np.all(base_label[dropped] == 0), "a positive row was dropped"
    negatives = int((base_label == 0).sum())
    fraction = dropped.size / negatives
    sd = math.sqrt(rate * (1 - rate) / negatives)
    assert abs(fraction - rate) < 5 * sd, (fraction, negatives)
    assert meta["source"]["sub_sampled_out"] == dropped.size
    assert meta["splits"]["train"]["rows"] == base_meta["splits"]["train"]["rows"] - dropped.size
    assert base_meta["source"]["sub_sampled_out"] == 0
    # deterministic for a seed (and independent of chunking / workers); another seed differs
    assert dataset_files(tmp_path / "s3") == dataset_files(tmp_path / "s3b")
    rows4 = _row_ids(s4["train"])
    assert not np.array_equal(rows, rows4)
    assert np.all(base_label[np.setdiff1d(base_rows, rows4)] == 0)
    # counts: train occurrences among the kept rows only
    np.testing.assert_array_equal(load_counts(tmp_path / "s3", 2, ROW_ID_RANGE),
                                  np.bincount(s3["train"][2][:, 1], minlength=ROW_ID_RANGE))


@pytest.mark.parametrize("vocab", ["reference", "frequency"])
def test_sub_sampling_vocabularies(tmp_path, subsample_file, vocab):
    """With the rows kept by sub-sampling known (from a hash run with the same seed), the reference
    and frequency vocabularies equal the naive ones over the kept rows."""
    run(tmp_path / "ids", [subsample_file], vocab="hash", max_index_range=ROW_ID_RANGE, sub_sample_rate=0.3, seed=9)
    kept = _row_ids(arrays(tmp_path / "ids")["train"]).tolist()
    run(tmp_path / "out", [subsample_file], vocab=vocab, sub_sample_rate=0.3, seed=9)
    label, dense, sparse = parse_text(subsample_file.read_text())
    check_against(tmp_path / "out",
                  expected_dataset(label, dense, sparse, kaggle_days(SUB_ROWS), vocab, train_keep=kept))


# --- (g) agreement with `dlrmkit synth` ------------------------------------------------------

@pytest.mark.parametrize("layout", ["kaggle", "terabyte"])
def test_synth_raw_preprocessed_matches_synth_binary(tmp_path, capsys, layout):
    common = ["--rows", "3000", "--seed", "5", "--cardinality-scale", "0.001", "--workers", "1", "--quiet",
              "--layout", layout, "--days", "3"]
    assert main(["synth", "--out", str(tmp_path / "raw"), "--format", "raw", *common]) == 0
    assert main(["synth", "--out", str(tmp_path / "bin"), "--format", "binary", *common]) == 0
    raw_files = json.loads((tmp_path / "raw" / "synth.json").read_text())["files"]
    inputs = [str(tmp_path / "raw" / f) for f in raw_files]
    binary = arrays(tmp_path / "bin")
    for vocab in ("reference", "frequency"):
        out = tmp_path / vocab
        assert main(["preprocess", "--dataset", layout, "--input", *inputs, "--out", str(out), "--vocab", vocab,
                     "--workers", "1", "--quiet"]) == 0
        got = arrays(out)
        for split in SPLITS:
            assert len(got[split][0]) == len(binary[split][0]) > 0, split
            np.testing.assert_array_equal(got[split][0], binary[split][0], err_msg=split)
            np.testing.assert_array_equal(got[split][1], binary[split][1], err_msg=split)
        if vocab == "reference":
            ref_all = np.concatenate([got[s][2] for s in SPLITS])
            bin_all = np.concatenate([binary[s][2] for s in SPLITS])
            sizes = json.loads((out / "metadata.json").read_text())["table_sizes"]
            for j in range(26):
                pairs = np.unique(np.stack([bin_all[:, j], ref_all[:, j]], axis=1), axis=0)
                assert np.unique(pairs[:, 0]).size == pairs.shape[0], f"C{j + 1}: a binary index maps to two"
                assert np.unique(pairs[:, 1]).size == pairs.shape[0], f"C{j + 1}: two binary indices merge"
                assert sizes[j] == pairs.shape[0]
    capsys.readouterr()
