"""The preprocessing engine on Apache Spark: pass 1 (read, gunzip, parse, stage) runs on Spark's
executors, pass 2 (vocabularies, splits, dataset files) is the local engine's own, so the dataset
is byte for byte the local engine's.

Reading: Spark's text source with the line separator ``\n`` (as the local engine splits lines),
so any Hadoop file system URI (``file://``, ``hdfs://``, ``s3a://`` ...) and gzip work; a plain
file is read as byte-range splits, a gzipped one whole. Lines reach Python as Arrow batches
(``mapInArrow``: one buffer of bytes, no Python object per line), and the global row order is
carried explicitly: every line comes with its input file's number and its split's first byte
(``_metadata.file_block_start``), and splits are placed by (file, first byte), never by
partition number.

Vocabularies (frequency, reference): a second Spark job reduces each staged split to its
columns' distinct values with their training counts or first global rows, aggregated per
(column, value) across the cluster; the driver ranks them into the local engine's dictionaries.

Staging: each split's lines are parsed by the same parser (`criteo_text.parse_block`) and
written in the local engine's stage layout to ``OUT/.stage/spark/f<file>-b<first byte>/`` by the
executor, so ``OUT`` must be a directory every executor and the driver see (always so with
``local[*]``; a shared file system on a cluster). The driver collects, per split, its line count
and bad lines, and applies the bad-line policy with each line's number in its
file, as the local engine does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrmkit.config import NUM_SPARSE, PreprocessConfig
from dlrmkit.data.criteo_text import BAD_KINDS
from dlrmkit.data.dataset import mark_incomplete
from dlrmkit.data.preprocess import (StageInfo, StagedRows, capped_values, build_dataset, cut_days, keep_mask,
                                     parse_for_stage, stage_layout)
from dlrmkit.data.native import NativeMap
from dlrmkit.data.vocab import FirstAppearance, FrequencyVocab, SortedDict
from dlrmkit.errors import DatasetError, EngineError

MIN_JAVA = 17


@dataclass(frozen=True)
class SparkOptions:
    master: str = "local[*]"
    partitions: int | None = None  # target partitions per plain input file (gzip files are one each)
    conf: tuple[tuple[str, str], ...] = ()
    write_task_rows: int = 1 << 20  # rows a write task indexes and writes (staged splits are cut to this)


def check_java() -> str:
    """The ``java -version`` line; EngineError naming what was expected and found, and the fix."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        where = f"JAVA_HOME={home} has no bin/java" if home else "no `java` on PATH and JAVA_HOME is not set"
        raise EngineError(f"the spark engine needs Java {MIN_JAVA} or newer: {where}. Install a JDK "
                          f"(e.g. `apt install openjdk-17-jre-headless`) or set JAVA_HOME, or use --engine local")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EngineError(f"the spark engine needs Java {MIN_JAVA}+: `{java} -version` failed ({e})") from None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(m.group(1)) if m else 0
    major = int(m.group(2)) if m and major == 1 and m.group(2) else major  # "1.8" is Java 8
    if major < MIN_JAVA:
        raise EngineError(f"the spark engine needs Java {MIN_JAVA} or newer; {java} is "
                          f"{out.strip().splitlines()[0] if out.strip() else 'of unknown version'}. "
                          f"Point JAVA_HOME at a newer JDK, or use --engine local")
    return out.strip().splitlines()[0]


def spark_session(options: SparkOptions):
    """A SparkSession for ``options``; EngineError when PySpark or Java is missing or Spark cannot start."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineError("the spark engine needs PySpark: `pip install 'dlrmkit[spark]'` (or `pip install "
                          "pyspark`), or use --engine local") from None
    check_java()
    builder = (SparkSession.builder.master(options.master).appName("dlrmkit preprocess")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "65536"))
    if options.master.startswith("local"):  # Python workers run this interpreter, which has dlrmkit
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in options.conf:
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # py4j / Java gateway errors come in several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineError(f"Spark did not start (master {options.master}): {first}") from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _stage_batches(out: str, cfg: PreprocessConfig, batches):
    """Executor side (``mapInArrow``): parse a task's lines into one stage directory per file split
    it reads, keyed by (input file, split start); one summary row per split."""
    import pyarrow as pa

    layout = stage_layout(cfg)[1]
    hash_range = cfg.max_index_range if cfg.vocab == "hash" else None
    open_splits: dict[tuple[int, int], dict] = {}

    def split_of(k: int, start: int) -> dict:
        key = (k, start)
        if key not in open_splits:
            stage = Path(out) / ".stage" / "spark" / f"f{k:04d}-b{start:015d}"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True)
            open_splits[key] = {"stage": stage, "lines": 0, "rows": 0, "bad": [],
                                "files": {name: open(stage / f"{name}.bin", "wb") for name in layout}}
        return open_splits[key]

    for batch in batches:
        value, files, starts = batch.column(0), batch.column(1).to_numpy(), batch.column(2).to_numpy()
        cuts = np.flatnonzero((np.diff(files) != 0) | (np.diff(starts) != 0)) + 1  # runs of one split
        for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(batch)]])):
            split = split_of(int(files[lo]), int(starts[lo]))
            block = parse_for_stage(_lines_block(value.slice(lo, hi - lo)), hash_range)
            for b in block.bad:
                split["bad"].append([split["lines"] + b.line, b.kind, b.detail])
            for name, (dtype, _) in layout.items():
                split["files"][name].write(getattr(block, name).astype(dtype, copy=False).tobytes())
            split["lines"] += block.lines
            split["rows"] += block.label.size
    summary = {name: [] for name in ("file", "block_start", "lines", "rows", "bad", "stage")}
    for (k, start), split in open_splits.items():
        for f in split["files"].values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        bad = split["bad"][:1] if cfg.on_bad_line == "error" else split["bad"]
        for name, v in (("file", k), ("block_start", start), ("lines", split["lines"]), ("rows", split["rows"]),
                        ("bad", json.dumps(bad)), ("stage", str(split["stage"]))):
            summary[name].append(v)
    yield pa.RecordBatch.from_pydict(summary, schema=_summary_schema())


def _summary_schema():
    import pyarrow as pa

    return pa.schema([("file", pa.int32()), ("block_start", pa.int64()), ("lines", pa.int64()),
                      ("rows", pa.int64()), ("bad", pa.string()), ("stage", pa.string())])


SUMMARY_SCHEMA = "file int, block_start long, lines long, rows long, bad string, stage string"


def _lines_block(column) -> np.ndarray:
    """An Arrow string column of lines -> their bytes with a newline after each, as uint8 (no
    Python object per line)."""
    import pyarrow as pa

    wide = pa.types.is_large_string(column.type)
    buffers = column.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if wide else np.int32)[column.offset:column.offset + len(column) + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return np.insert(data, (offsets[1:] - offsets[0]).astype(np.int64), np.uint8(10))


def _input_identity(spark, uri: str) -> dict:
    """Path and size through Hadoop's file system API (local paths and any URI alike)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path) or not fs.getFileStatus(path).isFile():
        raise DatasetError(f"{uri}: no such input file")
    status = fs.getFileStatus(path)
    return {"path": str(fs.makeQualified(path).toString()), "bytes": int(status.getLen()),
            "mtime_ms": int(status.getModificationTime())}


def preprocess_spark(cfg: PreprocessConfig, out: str | os.PathLike, options: SparkOptions = SparkOptions(),
                     progress: bool = True) -> dict:
    """`preprocess` with pass 1 on Spark; returns the dataset metadata."""
    out = Path(out).resolve()
    spark = spark_session(options)
    sc = spark.sparkContext
    t0 = time.perf_counter()
    identities = [_input_identity(spark, uri) for uri in cfg.inputs]
    out.mkdir(parents=True, exist_ok=True)
    mark_incomplete(out)
    shutil.rmtree(out / ".stage", ignore_errors=True)
    total_bytes = sum(i["bytes"] for i in identities)
    if progress:
        print(f"preprocess [1/2 parse on Spark {sc.version}, master {sc.master}]: "
              f"{len(cfg.inputs)} inputs, {total_bytes / 1e6:,.0f} MB", file=sys.stderr, flush=True)
    from pyspark.sql import functions as F

    if options.partitions:  # split plain files into about that many byte ranges each
        largest = max(i["bytes"] for i in identities)
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(1 << 16, -(-largest // options.partitions))))
    else:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    frames = [spark.read.option("lineSep", "\n").text(uri)
              .select("value", F.lit(k).cast("int").alias("file"), F.col("_metadata.file_block_start").alias("start"))
              for k, uri in enumerate(cfg.inputs)]
    df = frames[0]
    for frame in frames[1:]:
        df = df.unionAll(frame)
    try:
        parts = [row.asDict() for row in
                 df.mapInArrow(lambda batches: _stage_batches(str(out), cfg, batches), SUMMARY_SCHEMA).collect()]
    except Exception as e:
        raise _read_error(e, cfg) from None
    for p in parts:
        p["bad"] = json.loads(p["bad"])
    infos, stages, stage_rows = _apply_bad_line_policy(cfg, parts)
    parse_seconds = time.perf_counter() - t0
    if progress:
        rows = sum(i.rows for i in infos)
        print(f"preprocess [1/2 parse on Spark]: {rows:,} rows in {len(parts)} partitions at "
              f"{rows / parse_seconds / 1e3:,.0f}k rows/s", file=sys.stderr, flush=True)
    engine = {"name": "spark", "spark_version": sc.version, "master": sc.master, "partitions": len(parts),
              "default_parallelism": sc.defaultParallelism}
    vocabs = None
    if cfg.vocab in ("frequency", "reference"):
        t_vocab = time.perf_counter()
        _, ranges = cut_days(cfg, [i.rows for i in infos])
        vocabs, engine["vocab_shuffle_records"] = build_vocabs(spark, cfg, stages, stage_rows, ranges["train"])
        engine["vocab_seconds"] = time.perf_counter() - t_vocab
        if progress:
            print(f"preprocess [vocabularies on Spark]: {sum(v.size() for v in vocabs):,} table rows in "
                  f"{engine['vocab_seconds']:.1f} s", file=sys.stderr, flush=True)
    staged = StagedRows(stages, stage_rows, stage_layout(cfg)[1])

    def write(ranges, vocabs, writer, bar):
        t_write = time.perf_counter()
        result = write_on_spark(spark, cfg, stages, stage_rows, ranges, vocabs, writer, options.write_task_rows)
        engine["write_seconds"] = time.perf_counter() - t_write
        bar.update(sum(stage_rows))
        return result

    return build_dataset(cfg, out, staged, infos, identities, total_bytes, t0, parse_seconds, progress, engine,
                         vocabs, write)


SPLIT_ORDER = ("train", "test", "val")  # global row order: the last day is cut test half, then val half


def write_on_spark(spark, cfg: PreprocessConfig, stages: list[Path], stage_rows: list[int], ranges: dict,
                   vocabs: list | None, writer, task_rows: int = 1 << 20) -> tuple[list[np.ndarray], int]:
    """Index and write every split on the executors: the driver sizes the split files (after
    sub-sampling, counted by a first job when a rate is set) and gives each staged split its
    output row offsets; each task writes its rows there (memory-mapped, so every byte lands
    where the local engine would put it) and reports its training counts per (column, index),
    summed by Spark. Returns (counts per column, rows sub-sampled out)."""
    from pyspark.sql import functions as F

    starts = np.concatenate([[0], np.cumsum(stage_rows)]).astype(np.int64)
    tasks = [(str(st), int(a), int(n), int(lo), int(min(a + n, lo + task_rows)))  # a task per chunk
             for st, a, n in zip(stages, starts[:-1], stage_rows) for lo in range(a, a + n, task_rows)]
    schema = "stage string, start long, rows long, lo long, hi long"
    sub_sample = cfg.sub_sample_rate > 0
    kept_train = {}
    if sub_sample:  # rows each chunk keeps in train
        df = spark.createDataFrame(tasks, schema).repartition(max(1, len(tasks)))
        for row in df.mapInArrow(lambda b: _kept_batches(cfg, ranges["train"], b), "lo long, kept long").collect():
            kept_train[row.lo] = row.kept
    offsets, totals = [], {split: 0 for split in SPLIT_ORDER}
    for _, _, _, c_lo, c_hi in tasks:
        mine = {}
        for split in SPLIT_ORDER:
            lo, hi = ranges[split]
            a, b = max(lo, c_lo), min(hi, c_hi)
            rows = (kept_train[c_lo] if split == "train" and sub_sample else b - a) if a < b else 0
            mine[split] = totals[split]
            totals[split] += rows
        offsets.append(mine)
    for split in SPLIT_ORDER:
        writer.preallocate(split, totals[split])
    dropped = (ranges["train"][1] - ranges["train"][0]) - totals["train"]
    lookup = None
    if vocabs is not None:
        lookup = spark.sparkContext.broadcast(_vocab_arrays(cfg, vocabs))
    rows = [task + (json.dumps(off),) for task, off in zip(tasks, offsets)]
    df = spark.createDataFrame(rows, schema + ", offsets string")
    df = df.repartition(max(1, len(rows)))
    out = str(writer.path)
    token = f"{os.getpid()}-{time.time_ns()}"  # names this run's dictionaries in the workers' cache
    counted = df.mapInArrow(lambda b: _write_batches(cfg, out, ranges, lookup, token, b),
                            "col int, idx long, n long")
    table = counted.groupBy("col", "idx").agg(F.sum("n").alias("n")).toArrow()
    if lookup is not None:
        lookup.unpersist()
    cols, idx, n = (table.column(c).to_numpy() for c in ("col", "idx", "n"))
    sizes = [cfg.max_index_range] * NUM_SPARSE if vocabs is None else [v.size() for v in vocabs]
    counts = [np.zeros(size, dtype=np.int64) for size in sizes]
    for j in range(NUM_SPARSE):
        mine = cols == j
        counts[j][idx[mine]] = n[mine]  # one row per (column, index) after the aggregation
    return counts, int(dropped)


_EXECUTOR_VOCABS: dict = {}  # run token -> lookup tables, built once per Python worker


def _executor_vocab(lookup, token: str) -> list:
    """Per column (a value -> row index map, the index of values not in it), from the broadcast
    arrays: C hash maps where the compiled helpers load (as the local engine looks up), else
    sorted keys."""
    if token not in _EXECUTOR_VOCABS:
        _EXECUTOR_VOCABS.clear()
        tables = []
        for keys, rows, missing in lookup.value:
            table = NativeMap.create()
            if table is not None:
                table.insert(keys, rows.astype(np.int64))
            else:
                table = SortedDict()
                table.keys, table.values = keys, rows.astype(np.int64)
                table = _SortedLookup(table)
            tables.append((table, missing))
        _EXECUTOR_VOCABS[token] = tables
    return _EXECUTOR_VOCABS[token]


class _SortedLookup:
    """NativeMap's lookup on a SortedDict."""

    def __init__(self, table: SortedDict):
        self.table = table

    def lookup(self, column: np.ndarray, missing: int, out: np.ndarray) -> np.ndarray:
        out[:] = self.table.lookup(column.astype(np.uint64), missing)
        return out


def _vocab_arrays(cfg: PreprocessConfig, vocabs: list) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per column (sorted values, their row index, the index of values not found)."""
    out = []
    for v in vocabs:
        values = v.values_by_index if cfg.vocab == "frequency" else v.values_in_index_order()
        order = np.argsort(values, kind="stable")
        out.append((values[order].astype(np.uint64), order.astype(np.int32), len(values)))
    return out


def _kept_batches(cfg: PreprocessConfig, train: tuple[int, int], batches):
    import pyarrow as pa

    for batch in batches:
        los, kept = [], []
        for stage, start, n, c_lo, c_hi in zip(*(batch.column(i).to_pylist() for i in range(5))):
            a, b = max(train[0], c_lo), min(train[1], c_hi)
            k = 0
            if a < b:
                label = np.memmap(Path(stage) / "label.bin", dtype=np.uint8, mode="r", shape=(n,))
                k = int(keep_mask(np.asarray(label[a - start:b - start]), np.arange(a, b), cfg.sub_sample_rate,
                                  cfg.seed).sum())
            los.append(c_lo)
            kept.append(k)
        yield pa.RecordBatch.from_pydict({"lo": los, "kept": kept})


def _write_batches(cfg: PreprocessConfig, out: str, ranges: dict, lookup, token: str, batches):
    """Executor side: index one staged split's rows and write them at their offsets in each split."""
    import pyarrow as pa

    from dlrmkit.data.transforms import log1p_dense

    layout = stage_layout(cfg)[1]
    vocab = None if lookup is None else _executor_vocab(lookup, token)
    for batch in batches:
        for stage, start, n, c_lo, c_hi, offsets in zip(*(batch.column(i).to_pylist() for i in range(6))):
            offsets = json.loads(offsets)
            staged = {name: np.memmap(Path(stage) / f"{name}.bin", dtype=dtype, mode="r", shape=(n,) + shape)
                      for name, (dtype, shape) in layout.items()}
            records = {"col": [], "idx": [], "n": []}
            for split in SPLIT_ORDER:
                lo, hi = ranges[split]
                a, b = max(lo, c_lo), min(hi, c_hi)
                if a >= b:
                    continue
                label = np.asarray(staged["label"][a - start:b - start])
                dense = np.asarray(staged["dense"][a - start:b - start])
                sparse = np.asarray(staged["sparse"][a - start:b - start])
                if split == "train" and cfg.sub_sample_rate > 0:
                    keep = keep_mask(label, np.arange(a, b), cfg.sub_sample_rate, cfg.seed)
                    label, dense, sparse = label[keep], dense[keep], sparse[keep]
                if vocab is None:  # hash: indexed and log-transformed in pass 1
                    index = sparse
                else:
                    values = capped_values(sparse, cfg.max_index_range)
                    index = np.empty(values.shape, dtype=np.int32)
                    for j, (table, missing) in enumerate(vocab):
                        table.lookup(values[:, j], missing, index[:, j])
                    dense = log1p_dense(dense)
                _write_rows(Path(out) / split, offsets[split], label, dense, index)
                if split == "train":
                    for j in range(NUM_SPARSE):
                        uniq, count = np.unique(index[:, j], return_counts=True)
                        records["col"].append(np.full(uniq.size, j, np.int32))
                        records["idx"].append(uniq.astype(np.int64))
                        records["n"].append(count.astype(np.int64))
            if records["col"]:
                yield pa.RecordBatch.from_arrays([pa.array(np.concatenate(records[k])) for k in ("col", "idx", "n")],
                                                 names=["col", "idx", "n"])


def _write_rows(split_dir: Path, offset: int, label: np.ndarray, dense: np.ndarray, index: np.ndarray) -> None:
    """Rows [offset, offset + len) of a preallocated split's files."""
    from dlrmkit.data.dataset import ARRAYS

    for name, block in (("label", label), ("dense", dense), ("sparse", index)):
        dtype = ARRAYS[name]
        block = np.ascontiguousarray(block, dtype=dtype)
        if not block.shape[0]:
            continue
        row_bytes = block[:1].nbytes
        with open(split_dir / f"{name}.bin", "r+b") as f:
            f.seek(offset * row_bytes)
            f.write(block.tobytes())


def build_vocabs(spark, cfg: PreprocessConfig, stages: list[Path], stage_rows: list[int],
                 train: tuple[int, int]) -> tuple[list, int]:
    """The 26 vocabularies as Spark aggregations over the staged rows: each task reduces its
    split to (column, value, count over kept training rows) for frequency, or (column, value,
    first global row over all kept rows) for reference; Spark sums or takes the minimum per
    (column, value); the driver ranks the values. Also returns how many records the tasks fed
    the aggregation (what the shuffle carries, before Spark's map-side combining)."""
    from pyspark.sql import functions as F

    starts = np.concatenate([[0], np.cumsum(stage_rows)]).astype(np.int64)
    tasks = [(str(st), int(a), int(n)) for st, a, n in zip(stages, starts[:-1], stage_rows) if n]
    df = spark.createDataFrame(tasks, "stage string, start long, rows long").repartition(max(1, len(tasks)))
    frequency = cfg.vocab == "frequency"
    records = spark.sparkContext.accumulator(0)
    per_split = df.mapInArrow(lambda batches: _vocab_batches(cfg, train, frequency, batches, records),
                              "col int, value long, stat long")
    reduced = per_split.groupBy("col", "value").agg((F.sum if frequency else F.min)("stat").alias("stat"))
    table = reduced.toArrow()
    cols, values, stats = (table.column(n).to_numpy() for n in ("col", "value", "stat"))
    order = np.argsort(cols, kind="stable")
    cols, values, stats = cols[order], values[order], stats[order]
    bounds = np.searchsorted(cols, np.arange(NUM_SPARSE + 1))
    vocabs = []
    for j in range(NUM_SPARSE):
        keys, stat = values[bounds[j]:bounds[j + 1]], stats[bounds[j]:bounds[j + 1]]
        vocabs.append(FrequencyVocab.from_counts(keys, stat, cfg.frequency_threshold) if frequency
                      else FirstAppearance.from_first_rows(keys, stat))
    return vocabs, int(records.value)


def _vocab_batches(cfg: PreprocessConfig, train: tuple[int, int], frequency: bool, batches, records):
    """Executor side: per staged split, each column's distinct values with their count (frequency:
    kept training rows) or first global row (reference: all kept rows)."""
    import pyarrow as pa

    for batch in batches:
        for stage, start, n in zip(*(batch.column(i).to_pylist() for i in range(3))):
            label = np.memmap(Path(stage) / "label.bin", dtype=np.uint8, mode="r", shape=(n,))
            sparse = np.memmap(Path(stage) / "sparse.bin", dtype=np.uint32, mode="r", shape=(n, NUM_SPARSE))
            rows = np.arange(start, start + n, dtype=np.int64)
            in_train = (rows >= train[0]) & (rows < train[1])
            keep = ~in_train | keep_mask(np.asarray(label), rows, cfg.sub_sample_rate, cfg.seed)
            take = keep & in_train if frequency else keep
            values = capped_values(np.asarray(sparse)[take], cfg.max_index_range)
            taken_rows = rows[take]
            out = {"col": [], "value": [], "stat": []}
            for j in range(NUM_SPARSE):
                if frequency:
                    uniq, stat = np.unique(values[:, j], return_counts=True)
                else:
                    uniq, first = np.unique(values[:, j], return_index=True)
                    stat = taken_rows[first]
                out["col"].append(np.full(uniq.size, j, np.int32))
                out["value"].append(uniq.astype(np.int64))
                out["stat"].append(stat.astype(np.int64))
            records.add(sum(c.size for c in out["col"]))
            yield pa.RecordBatch.from_arrays([pa.array(np.concatenate(out[k])) for k in ("col", "value", "stat")],
                                             names=["col", "value", "stat"])


def _apply_bad_line_policy(cfg: PreprocessConfig, parts: list[dict]):
    """Order partitions by (file, first offset); per-file StageInfos; raise on the first bad line
    (in file order) under 'error'."""
    infos, stages, stage_rows = [], [], []
    for k, uri in enumerate(cfg.inputs):
        mine = sorted((p for p in parts if p["file"] == k and p["lines"]),
                      key=lambda p: p["block_start"])
        bad = {kind: 0 for kind in BAD_KINDS + ("truncated_gzip", "empty_file")}
        line = 0
        for p in mine:
            if p["bad"] and cfg.on_bad_line == "error":
                at, kind, detail = p["bad"][0]
                raise DatasetError(f"{uri}: line {line + at + 1}: {kind}: {detail} "
                                   f"(use --on-bad-line skip to skip such lines)")
            for _, kind, _ in p["bad"]:
                bad[kind] += 1
            line += p["lines"]
            stages.append(Path(p["stage"]))
            stage_rows.append(p["rows"])
        if line == 0:
            if cfg.on_bad_line == "error":
                raise DatasetError(f"{uri}: the file is empty")
            bad["empty_file"] += 1
        infos.append(StageInfo(sum(p["rows"] for p in mine), line, bad))
    return infos, stages, stage_rows


def _read_error(e: Exception, cfg: PreprocessConfig) -> Exception:
    text = str(e)
    if re.search(r"EOFException|Unexpected end of (input|ZLIB)|invalid (block type|stored block|distance)|"
                 r"Not in GZIP format|incorrect header check", text):
        name = re.search(r"(?:file:|hdfs:|s3a?:)?/[^\s:]+\.gz", text)
        where = name.group(0) if name else "a gzip input"
        return DatasetError(f"{where}: the gzip stream is truncated or corrupt (Spark's reader stops at it; "
                            f"the local engine can keep its complete lines with --on-bad-line skip)")
    first = next((line for line in text.splitlines() if "Error" in line or "Exception" in line), text[:300])
    return EngineError(f"the Spark job failed: {first.strip()}")


