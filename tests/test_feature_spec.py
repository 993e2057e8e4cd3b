"""NVIDIA's Dataset Feature Specification: the spec dlrmkit writes, datasets read through a spec
(dlrmkit's own and NVIDIA's split_binary layout), training on one, and one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from dlrmkit.cli import main
from dlrmkit.data.dataset import Dataset, DatasetWriter
from dlrmkit.errors import DatasetError

ND, NS = 3, 2

# 26 tables whose NVIDIA dtypes cover int8, int16 and int32 (dtype chosen as NVIDIA's preprocessing
# does: the narrowest whose max exceeds the cardinality).
CARDS = [4, 100, 20000, 3, 50000, 11, 2000, 126, 127, 32766, 32767, 40000, 5,
         60, 900, 7, 33000, 15, 1000, 2, 300, 9, 70000, 97, 35, 12000]
NVIDIA_ROWS = {"train": 700, "test": 300}


def _writer_dataset(path: Path) -> dict[str, tuple]:
    """A small dataset written by DatasetWriter (one empty split); returns what was written."""
    rng = np.random.default_rng(5)
    w = DatasetWriter(path, ND, NS)
    written = {}
    for split, n in (("train", 40), ("val", 9), ("test", 0)):
        label = (rng.random(n) < 0.4).astype(np.uint8)
        dense = rng.random((n, ND)).astype(np.float32)
        sparse = rng.integers(0, 1000, (n, NS)).astype(np.int32)
        w.append(split, label, dense, sparse)
        written[split] = (label, dense, sparse)
    w.finish((1000, 999), {"kind": "test"})
    return written


def _int_dtype(cardinality: int) -> str:
    return next(t for t in ("int8", "int16", "int32") if cardinality < np.iinfo(t).max)


def _nvidia_yaml(dtype_prefix: str = "") -> str:
    """A feature spec laid out as NVIDIA's DLRM preprocessing writes it (yaml.dump's sorted keys,
    an anchor for the numerical feature list, features named cat_<i>.bin), typed out here."""
    cats = [f"cat_{i}.bin" for i in range(26)]
    nums = [f"num_{i}" for i in range(13)]
    lines = ["channel_spec:", "  categorical:", *[f"  - {c}" for c in cats], "  label:", "  - label",
             "  numerical: &id001", *[f"  - {n}" for n in nums], "feature_spec:"]
    feature_lines = {c: [f"  {c}:", f"    cardinality: {k}", f"    dtype: {dtype_prefix}{_int_dtype(k)}"]
                     for c, k in zip(cats, CARDS)}
    feature_lines["label"] = ["  label:", f"    dtype: {dtype_prefix}bool"]
    feature_lines.update({n: [f"  {n}:", f"    dtype: {dtype_prefix}float16"] for n in nums})
    for name in sorted(feature_lines):
        lines += feature_lines[name]
    lines += ["metadata: {}", "source_spec:"]
    for split in sorted(NVIDIA_ROWS):
        lines += [f"  {split}:", "  - features: *id001", "    files:", f"    - {split}/numerical.bin",
                  "    type: split_binary", "  - features:", "    - label", "    files:",
                  f"    - {split}/label.bin", "    type: split_binary"]
        for c in cats:
            lines += ["  - features:", f"    - {c}", "    files:", f"    - {split}/{c}", "    type: split_binary"]
    return "\n".join(lines) + "\n"


def _nvidia_dataset(root: Path, dtype_prefix: str = "") -> dict[str, tuple]:
    """NVIDIA's split_binary files: label.bin bool, numerical.bin 13 float16 features interleaved
    (already log-transformed), one cat_<i>.bin per feature in its narrow dtype."""
    rng = np.random.default_rng(11)
    written = {}
    for split, n in NVIDIA_ROWS.items():
        (root / split).mkdir(parents=True)
        label = rng.random(n) < 0.3
        numerical = np.log1p(rng.integers(0, 5000, (n, 13))).astype(np.float16)
        cats = [rng.integers(0, k, n).astype(_int_dtype(k)) for k in CARDS]
        label.tofile(root / split / "label.bin")
        numerical.tofile(root / split / "numerical.bin")
        for i, c in enumerate(cats):
            c.tofile(root / split / f"cat_{i}.bin")
        written[split] = (label.astype(np.uint8), numerical.astype(np.float32),
                          np.stack(cats, axis=1).astype(np.int32))
    (root / "feature_spec.yaml").write_text(_nvidia_yaml(dtype_prefix))
    return written


def _assert_split(ds: Dataset, split: str, expected: tuple) -> None:
    s = ds.split(split)
    assert s.label.dtype == np.uint8 and s.dense.dtype == np.float32 and s.sparse.dtype == np.int32
    for got, want in zip((s.label, s.dense, s.sparse), expected):
        assert got.shape == want.shape
        assert np.array_equal(got, want)


# --- the spec dlrmkit writes -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["dir without metadata.json", "yaml path"])
def test_written_spec_reads_back_identically(tmp_path, how):
    written = _writer_dataset(tmp_path / "d")
    spec = yaml.safe_load((tmp_path / "d" / "feature_spec.yaml").read_text())
    assert spec["feature_spec"]["label"]["dtype"] == "bool"
    assert spec["feature_spec"]["num_2"]["dtype"] == "float32"
    assert spec["feature_spec"]["cat_1"] == {"dtype": "int32", "cardinality": 999}
    assert spec["source_spec"]["val"][2] == {"type": "split_binary", "features": ["cat_0", "cat_1"],
                                             "files": ["val/sparse.bin"]}
    assert spec["metadata"]["rows"] == {"train": 40, "val": 9, "test": 0}

    if how == "yaml path":
        target = tmp_path / "d" / "feature_spec.yaml"
    else:
        target = tmp_path / "copy"
        shutil.copytree(tmp_path / "d", target)
        (target / "metadata.json").unlink()
    ds, ref = Dataset(target), Dataset(tmp_path / "d")
    assert ds.metadata["format"] == "nvidia-feature-spec" and ref.metadata["format"] == "dlrmkit-dataset"
    assert (ds.num_dense, ds.num_sparse, ds.table_sizes) == (ND, NS, (1000, 999))
    assert ds.splits == ref.splits == {"train": 40, "val": 9, "test": 0}
    for split, expected in written.items():
        _assert_split(ds, split, expected)
    # dlrmkit's own layout is memory-mapped in place, not copied
    train = ds.split("train")
    assert all(isinstance(a, np.memmap) for a in (train.label, train.dense, train.sparse))


def test_new_write_removes_the_old_spec(tmp_path):
    """An interrupted rewrite must not look complete through a stale feature_spec.yaml."""
    _writer_dataset(tmp_path / "d")
    DatasetWriter(tmp_path / "d", ND, NS)
    assert not (tmp_path / "d" / "feature_spec.yaml").exists()
    with pytest.raises(DatasetError, match="metadata.json"):
        Dataset(tmp_path / "d")


# --- NVIDIA's layout ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "torch."])
def test_nvidia_layout(tmp_path, prefix):
    written = _nvidia_dataset(tmp_path / "nv", prefix)
    ds = Dataset(tmp_path / "nv")
    assert (ds.num_dense, ds.num_sparse) == (13, 26)
    assert ds.table_sizes == tuple(CARDS)
    assert ds.splits == NVIDIA_ROWS
    for split, expected in written.items():
        _assert_split(ds, split, expected)  # float16 values as stored, widened; no log applied again


def test_any_grouping_and_dtypes(tmp_path):
    """Features of different dtypes interleaved in one file, and a chunk cut into two files."""
    rng = np.random.default_rng(2)
    n, cut = 12, 7
    a = np.zeros(n, dtype=[("y", "f4"), ("n0", "f8"), ("c0", "u1")])
    a["y"], a["n0"], a["c0"] = rng.integers(0, 2, n), rng.random(n), rng.integers(0, 200, n)
    b = np.zeros(n, dtype=[("c1", "<i8"), ("n1", "<i2")])
    b["c1"], b["n1"] = rng.integers(0, 10**6, n), rng.integers(-50, 50, n)
    a.tofile(tmp_path / "a.bin")
    b[:cut].tofile(tmp_path / "b0.bin")
    b[cut:].tofile(tmp_path / "b1.bin")
    spec = {
        "feature_spec": {"y": {"dtype": "torch.float32"}, "n0": {"dtype": "float64"},
                         "c0": {"dtype": "uint8", "cardinality": 200}, "n1": {"dtype": "int16"},
                         "c1": {"dtype": "torch.long", "cardinality": 10**6}},
        "source_spec": {"train": [{"type": "split_binary", "features": ["y", "n0", "c0"], "files": ["a.bin"]},
                                  {"type": "split_binary", "features": ["c1", "n1"], "files": ["b0.bin", "b1.bin"]}]},
        "channel_spec": {"label": ["y"], "numerical": ["n1", "n0"], "categorical": ["c0", "c1"]},
    }
    (tmp_path / "my_spec.yaml").write_text(yaml.safe_dump(spec))
    ds = Dataset(tmp_path / "my_spec.yaml")
    assert ds.table_sizes == (200, 10**6) and ds.splits == {"train": n}
    _assert_split(ds, "train", (a["y"].astype(np.uint8), np.stack([b["n1"], a["n0"]], 1).astype(np.float32),
                                np.stack([a["c0"], b["c1"]], 1).astype(np.int32)))


# --- the command line --------------------------------------------------------------------------

TRAIN = ["--preset", "tiny", "--max-steps", "3", "--batch-size", "128", "--threads", "1", "--quiet"]


def test_train_and_evaluate_on_nvidia_data(tmp_path, capsys):
    _nvidia_dataset(tmp_path / "nv")
    assert sorted(p.name for p in (tmp_path / "nv").iterdir()) == ["feature_spec.yaml", "test", "train"]
    assert main(["train", "--data", str(tmp_path / "nv"), "--out", str(tmp_path / "run"), *TRAIN]) == 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"),
                 "--data", str(tmp_path / "nv" / "feature_spec.yaml")]) == 0
    assert "test: AUC" in capsys.readouterr().out


def _break_missing_file(root: Path) -> str:
    (root / "train" / "cat_3.bin").unlink()
    return str(root / "train" / "cat_3.bin")


def _break_size(root: Path) -> str:
    path = root / "test" / "cat_9.bin"  # int16: one row short, still whole rows
    path.write_bytes(path.read_bytes()[:-2])
    return str(path)


def _break_cardinality(root: Path) -> str:
    text = (root / "feature_spec.yaml").read_text()
    block = f"  cat_12.bin:\n    cardinality: {CARDS[12]}\n"
    assert block in text
    (root / "feature_spec.yaml").write_text(text.replace(block, "  cat_12.bin:\n"))
    return "'cat_12.bin'"


def _break_chunk_type(root: Path) -> str:
    text = (root / "feature_spec.yaml").read_text()
    chunk = "    - train/cat_5.bin\n    type: split_binary\n"
    assert chunk in text
    (root / "feature_spec.yaml").write_text(text.replace(chunk, "    - train/cat_5.bin\n    type: parquet\n"))
    return "parquet"


def _break_yaml(root: Path) -> str:
    with open(root / "feature_spec.yaml", "a") as f:
        f.write("  - features: [unclosed\n")
    return str(root / "feature_spec.yaml")


@pytest.mark.parametrize("breaker", [_break_missing_file, _break_size, _break_cardinality, _break_chunk_type,
                                     _break_yaml])
def test_bad_spec_is_one_error_line(tmp_path, capsys, breaker):
    _nvidia_dataset(tmp_path / "nv")
    culprit = breaker(tmp_path / "nv")
    rc = main(["train", "--data", str(tmp_path / "nv"), "--out", str(tmp_path / "run"), *TRAIN])
    err = capsys.readouterr().err
    assert rc == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlrmkit train: error: "), err
    assert culprit in lines[0]
    if breaker is _break_size:
        assert f"{NVIDIA_ROWS['test'] * 2 - 2} bytes, expected {NVIDIA_ROWS['test'] * 2}" in lines[0]
    if breaker is _break_chunk_type:
        assert "train/cat_5.bin" in lines[0]
