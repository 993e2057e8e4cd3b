"""`dlrmkit preprocess --engine spark` (PySpark in local mode) writes exactly the local engine's
dataset: every file byte for byte, for each vocabulary, for one and several partitions, plain and
gzipped, Kaggle and Terabyte layouts, the real rows in ../shared, and the same bad-line errors and
counts. Skipped, with the reason, where PySpark or Java is missing."""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest

from criteo_naive import random_line
from dlrmkit.cli import main
from dlrmkit.config import PreprocessConfig
from dlrmkit.data.preprocess import preprocess
from dlrmkit.errors import DatasetError, EngineError
from preprocess_helpers import dataset_files

pyspark = pytest.importorskip("pyspark", reason="PySpark is not installed (pip install 'dlrmkit[spark]')")
if shutil.which("java") is None and not __import__("os").environ.get("JAVA_HOME"):
    pytest.skip("no Java on this machine (Spark needs Java 17+)", allow_module_level=True)

from dlrmkit.data.spark_engine import SparkOptions, preprocess_spark, spark_session  # noqa: E402
from dlrmkit.data.spark_session import check_java  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "criteo_data" / "criteo_kaggle_train_head10109.txt.gz"
OPTIONS = SparkOptions(master="local[2]", conf=(("spark.ui.enabled", "false"),
                                                ("spark.sql.shuffle.partitions", "2")))


def _meta(out: Path) -> dict:
    meta = json.loads((out / "metadata.json").read_text())
    meta.pop("preprocess")
    meta["source"]["inputs"] = [i["bytes"] for i in meta["source"]["inputs"]]  # paths differ in form
    return meta


def _both(tmp_path: Path, inputs, partitions: int | None = None, **kw) -> tuple[Path, Path]:
    cfg = PreprocessConfig(inputs=tuple(str(p) for p in inputs), workers=1, **kw)
    preprocess(cfg, tmp_path / "local", progress=False)
    # write tasks of 700 rows: staged splits are cut into several, some crossing split boundaries
    options = SparkOptions(OPTIONS.master, partitions, OPTIONS.conf, write_task_rows=700)
    preprocess_spark(cfg, tmp_path / "spark", options, progress=False)
    return tmp_path / "local", tmp_path / "spark"


def _assert_same(local: Path, spark: Path) -> None:
    a, b = dataset_files(local), dataset_files(spark)
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, different
    assert _meta(local) == _meta(spark)
    engine = json.loads((spark / "metadata.json").read_text())["preprocess"]["engine"]
    assert engine["name"] == "spark" and engine["partitions"] >= 1


def _text(n: int, seed: int, bad_at: dict[int, str] | None = None) -> str:
    rnd = random.Random(seed)
    return "".join((bad_at or {}).get(i) or random_line(rnd) for i in range(n))


@pytest.fixture(scope="module")
def kaggle_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spark_kaggle") / "train.txt"
    path.write_text(_text(3000, seed=11))
    return path


@pytest.mark.parametrize("vocab,partitions", [("hash", 1), ("hash", 4), ("frequency", 1), ("frequency", 3),
                                              ("reference", 1), ("reference", 5)])
def test_kaggle_same_dataset_as_local(tmp_path, kaggle_file, vocab, partitions):
    kw = {"max_index_range": 997} if vocab == "hash" else {"frequency_threshold": 2} if vocab == "frequency" else {}
    local, spark = _both(tmp_path, [kaggle_file], partitions, dataset="kaggle", vocab=vocab, **kw)
    _assert_same(local, spark)
    splits = json.loads((spark / "metadata.json").read_text())["preprocess"]["engine"]["partitions"]
    assert (splits == 1) if partitions == 1 else (splits >= partitions - 1), splits  # rows from several splits


def test_terabyte_layout_gzip_and_plain_same_as_local(tmp_path):
    days = []
    for d in range(3):
        text = _text(700 + 100 * d, seed=20 + d)
        if d == 1:  # a gzipped day among plain ones, written as two gzip members
            path = tmp_path / f"day_{d}.gz"
            half = len(text) // 2
            cut = text.rindex("\n", 0, half) + 1
            path.write_bytes(gzip.compress(text[:cut].encode()) + gzip.compress(text[cut:].encode()))
        else:
            path = tmp_path / f"day_{d}"
            path.write_text(text)
        days.append(path)
    local, spark = _both(tmp_path, days, 2, dataset="terabyte", vocab="reference", max_index_range=5000,
                         sub_sample_rate=0.5, seed=3)
    _assert_same(local, spark)


@pytest.mark.skipif(not REAL.is_file(), reason=f"real Criteo rows not present at {REAL}")
@pytest.mark.parametrize("vocab", ["hash", "frequency", "reference"])
def test_real_rows_same_as_local(tmp_path, vocab):
    kw = {"max_index_range": 100_000} if vocab == "hash" else {}
    local, spark = _both(tmp_path, [REAL], None, dataset="kaggle", vocab=vocab, **kw)
    _assert_same(local, spark)


BAD = {
    "field_count": "1\t2\t3\n",
    "bad_label": "\t".join(["x"] + ["1"] * 13 + ["a"] * 26) + "\n",
    "dense_not_integer": "\t".join(["0", "1.5"] + ["1"] * 12 + ["a"] * 26) + "\n",
    "categorical_not_hex": "\t".join(["0"] + ["1"] * 13 + ["zz"] + ["a"] * 25) + "\n",
    "categorical_too_long": "\t".join(["0"] + ["1"] * 13 + ["123456789"] + ["a"] * 25) + "\n",
}


def test_bad_lines_skipped_and_counted_as_local(tmp_path):
    kinds = list(BAD)
    bad_at = {p: BAD[kinds[i % len(kinds)]] for i, p in enumerate(random.Random(2).sample(range(2000), 25))}
    src = tmp_path / "train.txt"
    src.write_text(_text(2000, seed=4, bad_at=bad_at))
    local, spark = _both(tmp_path, [src], 3, dataset="kaggle", vocab="frequency", on_bad_line="skip")
    _assert_same(local, spark)
    bad = json.loads((spark / "metadata.json").read_text())["source"]["bad_lines"]
    assert sum(bad.values()) == 25 and bad["field_count"] == 5


def test_bad_line_error_names_the_same_line(tmp_path):
    src = tmp_path / "train.txt"
    src.write_text(_text(2500, seed=5, bad_at={1777: BAD["dense_not_integer"], 2100: BAD["bad_label"]}))
    cfg = PreprocessConfig(dataset="kaggle", inputs=(str(src),), vocab="reference", workers=1)
    with pytest.raises(DatasetError) as local:
        preprocess(cfg, tmp_path / "local", progress=False)
    with pytest.raises(DatasetError) as spark:
        preprocess_spark(cfg, tmp_path / "spark", SparkOptions(OPTIONS.master, 4, OPTIONS.conf), progress=False)
    assert str(spark.value) == str(local.value)
    assert "line 1778:" in str(spark.value)
    assert not (tmp_path / "spark" / "metadata.json").exists()


def test_empty_day_as_local(tmp_path):
    days = [tmp_path / f"day_{d}" for d in range(3)]
    days[0].write_text(_text(50, seed=1))
    days[1].write_bytes(b"")
    days[2].write_text(_text(40, seed=2))
    cfg = PreprocessConfig(dataset="terabyte", inputs=tuple(map(str, days)), vocab="reference", workers=1)
    with pytest.raises(DatasetError, match="empty") as e:
        preprocess_spark(cfg, tmp_path / "spark", OPTIONS, progress=False)
    assert str(days[1]) in str(e.value)
    local, spark = _both(tmp_path, days, None, dataset="terabyte", vocab="reference", on_bad_line="skip")
    _assert_same(local, spark)


def test_missing_input_named(tmp_path):
    cfg = PreprocessConfig(dataset="kaggle", inputs=(str(tmp_path / "nope.txt"),), vocab="reference")
    with pytest.raises(DatasetError, match="nope.txt: no such input file"):
        preprocess_spark(cfg, tmp_path / "out", OPTIONS, progress=False)


def test_cli_engine_spark(tmp_path, kaggle_file):
    out = tmp_path / "cli"
    rc = main(["preprocess", "--dataset", "kaggle", "--input", str(kaggle_file), "--out", str(out), "--vocab",
               "frequency", "--engine", "spark", "--spark-master", "local[2]", "--spark-partitions", "2",
               "--spark-conf", "spark.ui.enabled=false", "--quiet"])
    assert rc == 0
    cfg = PreprocessConfig(dataset="kaggle", inputs=(str(kaggle_file),), vocab="frequency", workers=1)
    preprocess(cfg, tmp_path / "local", progress=False)
    _assert_same(tmp_path / "local", out)
    assert main(["preprocess", "--dataset", "kaggle", "--input", str(kaggle_file), "--out", str(out),
                 "--engine", "spark", "--spark-conf", "no-equals-sign", "--quiet"]) == 1


def test_missing_java_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(EngineError, match=r"needs Java 17 or newer: JAVA_HOME=.*no-jdk has no bin/java.*--engine local"):
        check_java()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineError, match="no `java` on PATH and JAVA_HOME is not set"):
        check_java()


def test_old_java_is_explained(monkeypatch, tmp_path):
    fake = tmp_path / "jdk" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho \'openjdk version "1.8.0_392"\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(EngineError, match=r"needs Java 17 or newer; .* is openjdk version \"1.8.0_392\""):
        check_java()


def test_missing_pyspark_is_explained(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(EngineError, match=r"needs PySpark: `pip install 'dlrmkit\[spark\]'`"):
        spark_session(OPTIONS)


def test_parquet_holds_the_dataset(tmp_path, kaggle_file):
    import numpy as np
    import pyarrow.parquet as pq

    from dlrmkit.data.dataset import Dataset

    local, spark = _both(tmp_path, [kaggle_file], 3, dataset="kaggle", vocab="frequency", parquet=True)
    ds = Dataset(spark)
    for split, rows in ds.splits.items():
        table = pq.read_table(spark / "parquet" / f"{split}.parquet")
        assert table.num_rows == rows and table.column_names[:2] == ["label", "I1"] and table.column_names[-1] == "C26"
        arrays = ds.split(split)
        np.testing.assert_array_equal(table.column("label").to_numpy(), np.asarray(arrays.label).astype(np.int8))
        np.testing.assert_array_equal(np.stack([table.column(f"I{i}").to_numpy() for i in range(1, 14)], 1),
                                      np.asarray(arrays.dense))
        np.testing.assert_array_equal(np.stack([table.column(f"C{j}").to_numpy() for j in range(1, 27)], 1),
                                      np.asarray(arrays.sparse))
        assert pq.read_table(local / "parquet" / f"{split}.parquet").equals(table)


def test_hadoop_uri_input(tmp_path, kaggle_file):
    """An input named by a Hadoop file system URI (file:// here; hdfs:// and s3a:// alike)."""
    cfg = PreprocessConfig(dataset="kaggle", inputs=(str(kaggle_file),), vocab="reference", workers=1)
    preprocess(cfg, tmp_path / "local", progress=False)
    uri = PreprocessConfig(dataset="kaggle", inputs=(kaggle_file.as_uri(),), vocab="reference")
    meta = preprocess_spark(uri, tmp_path / "spark", OPTIONS, progress=False)
    assert meta["source"]["inputs"][0]["path"].startswith("file:")
    _assert_same(tmp_path / "local", tmp_path / "spark")


def test_bad_master_is_explained(tmp_path, kaggle_file):
    from pyspark.sql import SparkSession

    running = SparkSession.getActiveSession()
    if running is not None:  # getOrCreate would hand back the running session
        running.stop()
    cfg = PreprocessConfig(dataset="kaggle", inputs=(str(kaggle_file),), vocab="reference")
    with pytest.raises(EngineError, match=r"Spark did not start \(master nonsense://x\)"):
        preprocess_spark(cfg, tmp_path / "out", SparkOptions(master="nonsense://x"), progress=False)


def _terabyte_days(tmp_path: Path, day1: bytes) -> list[Path]:
    """day_0 and day_2 plain, day_1 as given (a gzip stream); 400 rows in each whole day."""
    days = [tmp_path / f"day_{d}" for d in range(3)]
    days[1] = tmp_path / "day_1.gz"
    days[0].write_text(_text(400, seed=30))
    days[1].write_bytes(day1)
    days[2].write_text(_text(400, seed=32))
    return days


def _two_members(lines: int, seed: int) -> bytes:
    text = _text(lines, seed=seed).encode()
    cut = len(text) // 2 + 11  # the members do not end at a line break
    return gzip.compress(text[:cut]) + gzip.compress(text[cut:])


@pytest.mark.parametrize("where", ["first member", "second member", "trailer", "next header"])
def test_cut_short_gzip_skip_keeps_the_local_lines(tmp_path, where):
    """A gzip day that ends inside a member (in the first or second member's data, in the trailer,
    or in the header of a member after a whole one): under skip, the Spark engine keeps exactly the
    local engine's complete lines, counts truncated_gzip, and the datasets are the same."""
    data = _two_members(1500, seed=31)
    cut = {"first member": data[:len(data) // 3], "second member": data[:len(data) * 3 // 4],
           "trailer": data[:-3], "next header": data + gzip.compress(b"x")[:5]}[where]
    days = _terabyte_days(tmp_path, cut)
    local, spark = _both(tmp_path, days, dataset="terabyte", vocab="reference", on_bad_line="skip")
    _assert_same(local, spark)
    meta = json.loads((spark / "metadata.json").read_text())
    assert meta["source"]["bad_lines"]["truncated_gzip"] == 1
    rows = meta["source"]["day_rows"]
    assert rows[0] == rows[2] == 400
    assert (rows[1] == 1500) if where in ("trailer", "next header") else (0 < rows[1] < 1500)


def test_cut_short_gzip_error_names_the_line_as_local(tmp_path):
    """Under error, the same message as the local engine: the file and its last complete line;
    a bad line in an earlier day is reported first, as the local engine reads in day order."""
    data = _two_members(1500, seed=33)
    days = _terabyte_days(tmp_path, data[:len(data) // 2])
    cfg = PreprocessConfig(dataset="terabyte", inputs=tuple(map(str, days)), vocab="reference")
    with pytest.raises(DatasetError) as local:
        preprocess(cfg, tmp_path / "local", progress=False)
    with pytest.raises(DatasetError) as spark:
        preprocess_spark(cfg, tmp_path / "spark", OPTIONS, progress=False)
    assert str(spark.value) == str(local.value)
    assert "day_1.gz: the gzip stream is truncated after line" in str(spark.value)

    days[0].write_text(_text(400, seed=30, bad_at={250: "1\t2\n"}))  # a short line before the cut day
    with pytest.raises(DatasetError, match=r"day_0: line 251: ") as spark:
        preprocess_spark(cfg, tmp_path / "spark", OPTIONS, progress=False)


@pytest.mark.parametrize("damage", ["crc", "deflate", "header"])
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_corrupt_gzip_fails_under_both_policies(tmp_path, damage, policy):
    """Damaged gzip data (not a cut) is no bad line to skip: both engines stop, naming the file."""
    data = bytearray(gzip.compress(_text(1500, seed=34).encode()))
    if damage == "crc":
        data[-8:-4] = bytes(4)
    elif damage == "deflate":
        data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0x5A for b in data[len(data) // 2:len(data) // 2 + 64])
    else:
        data[3] = 0xE0  # reserved header flags
    days = _terabyte_days(tmp_path, bytes(data))
    cfg = PreprocessConfig(dataset="terabyte", inputs=tuple(map(str, days)), vocab="reference", on_bad_line=policy)
    expect = r"day_1\.gz: the gzip stream is corrupt \(.+\); its lines cannot be trusted"
    with pytest.raises(DatasetError, match=expect):
        preprocess(cfg, tmp_path / "local", progress=False)
    with pytest.raises(DatasetError, match=expect):
        preprocess_spark(cfg, tmp_path / "spark", OPTIONS, progress=False)


def test_plain_text_named_gz_is_explained(tmp_path):
    """Hadoop picks the gzip codec by the file name: a plain day named .gz fails, and says why (the
    local engine reads it as plain text, from its first bytes)."""
    days = _terabyte_days(tmp_path, _text(300, seed=35).encode())
    cfg = PreprocessConfig(dataset="terabyte", inputs=tuple(map(str, days)), vocab="reference", on_bad_line="skip")
    assert preprocess(cfg, tmp_path / "local", progress=False)["source"]["day_rows"] == [400, 300, 400]
    with pytest.raises(DatasetError, match=r"day_1\.gz: the gzip stream is corrupt \(not a gzip file, or not from "
                                           r"its first byte on: Spark reads a file named \.gz as gzip"):
        preprocess_spark(cfg, tmp_path / "spark", OPTIONS, progress=False)


def test_driver_result_limit_lifted_and_a_failing_job_named(tmp_path, kaggle_file):
    """The dictionaries and counts come to the driver whole (about 4 GB each for Terabyte), so
    Spark's 1 GB result limit is lifted; a limit set with --spark-conf still applies, and the
    vocabulary job that breaks it fails in one line that names the job and the setting."""
    cfg = PreprocessConfig(dataset="kaggle", inputs=(str(kaggle_file),), vocab="frequency")
    assert spark_session(OPTIONS).sparkContext.getConf().get("spark.driver.maxResultSize") == "0"
    tight = SparkOptions(OPTIONS.master, None, OPTIONS.conf + (("spark.driver.maxResultSize", "16k"),))
    with pytest.raises(EngineError, match=r"the Spark vocabulary job failed: .*spark\.driver\.maxResultSize"):
        preprocess_spark(cfg, tmp_path / "out", tight, progress=False)
    assert spark_session(OPTIONS).sparkContext.getConf().get("spark.driver.maxResultSize") == "0"  # restarted


def test_executor_python_that_does_not_run_is_named(tmp_path, kaggle_file):
    """spark.pyspark.python naming no program: the executor check fails first, naming that Python."""
    cfg = PreprocessConfig(dataset="kaggle", inputs=(str(kaggle_file),), vocab="reference")
    missing = tmp_path / "no-such-python"
    options = SparkOptions(OPTIONS.master, None, OPTIONS.conf + (("spark.pyspark.python", str(missing)),))
    with pytest.raises(EngineError, match=rf"the executor check job failed: .+\. The executors' Python is {missing}: "
                                          r"name one that has 'dlrmkit\[spark\]'"):
        preprocess_spark(cfg, tmp_path / "out", options, progress=False)
    assert not (tmp_path / "out" / "metadata.json").exists()
