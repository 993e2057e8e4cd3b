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

Gzip inputs that end inside a member (a cut-off download) fail Spark's reader. Such a file is then
read again with Spark's ``ignoreCorruptFiles`` for it alone, which keeps every line before the cut
(the same lines as the local engine keeps: both decoders are zlib); the job is rerun, and the
file counts as ``truncated_gzip`` under 'skip'. Damaged gzip data fails under either policy, as
in the local engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from dlrmkit.config import PreprocessConfig
from dlrmkit.data.criteo_text import BAD_KINDS
from dlrmkit.data.dataset import mark_incomplete
from dlrmkit.data.preprocess import build_dataset, cut_days, output_dir
from dlrmkit.data.raw_files import corrupt_gzip, truncated_gzip
from dlrmkit.data.stage import StageInfo, StagedRows, parse_for_stage, stage_layout
from dlrmkit.data.spark_session import SparkOptions, check_executors, root_cause, spark_session
from dlrmkit.data.spark_vocab import build_vocabs
from dlrmkit.data.spark_write import write_on_spark
from dlrmkit.errors import DatasetError, EngineError


def _stage_batches(root: str, cfg: PreprocessConfig, batches):
    """Executor side (``mapInArrow``): parse a task's lines into one stage directory per file split
    it reads under ``root``, keyed by (input file, split start); one summary row per split."""
    import pyarrow as pa

    layout = stage_layout(cfg)[1]
    hash_range = cfg.max_index_range if cfg.vocab == "hash" else None
    open_splits: dict[tuple[int, int], dict] = {}

    def split_of(k: int, start: int) -> dict:
        key = (k, start)
        if key not in open_splits:
            stage = Path(root) / f"f{k:04d}-b{start:015d}"
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


def _stage_job(spark, cfg: PreprocessConfig, root: Path, files: int, cut_short: set[int]) -> list[dict]:
    """The read-and-stage job over the first ``files`` inputs; the summary row of every split. The
    inputs in ``cut_short`` are read up to where their gzip stream breaks off (Spark's
    ``ignoreCorruptFiles``, for those files alone: every other input is read strictly)."""
    from pyspark.sql import functions as F

    frames = []
    for k, uri in enumerate(cfg.inputs[:files]):
        reader = spark.read.option("lineSep", "\n")
        if k in cut_short:
            reader = reader.option("ignoreCorruptFiles", "true")
        frames.append(reader.text(uri).select("value", F.lit(k).cast("int").alias("file"),
                                              F.col("_metadata.file_block_start").alias("start")))
    df = frames[0]
    for frame in frames[1:]:
        df = df.unionAll(frame)
    spark.sparkContext.setLogLevel("FATAL")  # a failure is reported by the caller, in one line
    try:
        rows = df.mapInArrow(lambda batches: _stage_batches(str(root), cfg, batches), SUMMARY_SCHEMA).collect()
    finally:
        spark.sparkContext.setLogLevel("ERROR")
    parts = [row.asDict() for row in rows]
    for p in parts:
        p["bad"] = json.loads(p["bad"])
    return parts


# Hadoop's gzip codec, when the file ends inside a member; any other decompressor error is damage.
CUT_SHORT = "java.io.EOFException: Unexpected end of input stream"


def _failed_input(e: Exception, identities: list[dict]) -> tuple[int | None, str]:
    """(the input a failed Spark job could not read, or None; the root cause's line)."""
    cause = root_cause(e)
    named = {_plain_uri(m) for m in re.findall(r"reading file (\S+?)\.?(?:\s|$)", str(e))}
    for k, identity in enumerate(identities):
        if _plain_uri(identity["path"]) in named:
            return k, cause
    return None, cause


def _plain_uri(uri: str) -> str:
    """A URI as Hadoop qualifies it, unescaped, with ``file:///`` written ``file:/``."""
    return re.sub(r"^file:/+", "file:/", unquote(uri))


def _is_gzip_failure(cause: str) -> bool:
    return cause == CUT_SHORT or bool(re.search(r"gzip|zlib|Inflater|DataFormatException|invalid (block type|"
                                                r"stored block|distance)|incorrect header", cause))


def preprocess_spark(cfg: PreprocessConfig, out: str | os.PathLike, options: SparkOptions = SparkOptions(),
                     progress: bool = True) -> dict:
    """`preprocess` with pass 1 on Spark; returns the dataset metadata."""
    out = output_dir(out).resolve()
    spark = spark_session(options)
    sc = spark.sparkContext
    identities = [_input_identity(spark, uri) for uri in cfg.inputs]
    total_bytes = sum(i["bytes"] for i in identities)
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"preprocess [1/2 parse on Spark {sc.version}, master {sc.master}]: "
              f"{len(cfg.inputs)} inputs, {total_bytes / 1e6:,.0f} MB; checking the executors",
              file=sys.stderr, flush=True)
    t_probe = time.perf_counter()
    check_executors(spark, out)
    t0 = time.perf_counter()
    probe_seconds = t0 - t_probe
    mark_incomplete(out)
    shutil.rmtree(out / ".stage", ignore_errors=True)
    if options.partitions:  # split plain files into about that many byte ranges each
        largest = max(i["bytes"] for i in identities)
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(1 << 16, -(-largest // options.partitions))))
    else:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    cut_short: set[int] = set()  # gzip inputs that end inside a member: read up to the cut
    while True:
        files = len(cfg.inputs) if cfg.on_bad_line == "skip" or not cut_short else max(cut_short) + 1
        attempt = out / ".stage" / "spark" / f"a{len(cut_short)}"
        try:
            parts = _stage_job(spark, cfg, attempt, files, cut_short)
            break
        except Exception as e:
            shutil.rmtree(attempt, ignore_errors=True)  # a failed job's stage: up to a copy of the input
            k, cause = _failed_input(e, identities)
            if k is None or not _is_gzip_failure(cause):
                raise EngineError(f"the Spark job failed: {cause}") from None
            if cause != CUT_SHORT or k in cut_short:
                detail = cause.split(": ", 1)[-1]
                if detail == "not a gzip file":  # Hadoop picks the codec by the name, not the bytes
                    detail += ", or not from its first byte on: Spark reads a file named .gz as gzip, and refuses "
                    detail += "zero padding after the last member"
                raise corrupt_gzip(cfg.inputs[k], detail) from None
            cut_short.add(k)
            if progress:
                print(f"preprocess [1/2 parse on Spark]: {cfg.inputs[k]}: the gzip stream is cut short; parsing "
                      f"again, {'keeping its complete lines' if cfg.on_bad_line == 'skip' else 'to say where'}",
                      file=sys.stderr, flush=True)
    infos, stages, stage_rows = _apply_bad_line_policy(cfg, parts, cut_short)
    parse_seconds = time.perf_counter() - t0
    if progress:
        rows = sum(i.rows for i in infos)
        print(f"preprocess [1/2 parse on Spark]: {rows:,} rows in {len(parts)} partitions at "
              f"{rows / parse_seconds / 1e3:,.0f}k rows/s", file=sys.stderr, flush=True)
    engine = {"name": "spark", "spark_version": sc.version, "master": sc.master, "partitions": len(parts),
              "default_parallelism": sc.defaultParallelism, "executor_check_seconds": probe_seconds,
              "parse_jobs": 1 + len(cut_short)}
    vocabs = None
    if cfg.vocab in ("frequency", "reference"):
        t_vocab = time.perf_counter()
        _, ranges = cut_days(cfg, [i.rows for i in infos])
        try:
            vocabs, engine["vocab_shuffle_records"] = build_vocabs(spark, cfg, stages, stage_rows, ranges["train"])
        except Exception as e:  # py4j errors: one line, as for the parse job
            raise EngineError(f"the Spark vocabulary job failed: {root_cause(e)}") from None
        engine["vocab_seconds"] = time.perf_counter() - t_vocab
        if progress:
            print(f"preprocess [vocabularies on Spark]: {sum(v.size() for v in vocabs):,} table rows in "
                  f"{engine['vocab_seconds']:.1f} s", file=sys.stderr, flush=True)
    staged = StagedRows(stages, stage_rows, stage_layout(cfg)[1])

    def write(ranges, vocabs, writer, bar):
        t_write = time.perf_counter()
        try:
            result = write_on_spark(spark, cfg, stages, stage_rows, ranges, vocabs, writer, options.write_task_rows)
        except Exception as e:
            raise EngineError(f"the Spark write job failed: {root_cause(e)}") from None
        engine["write_seconds"] = time.perf_counter() - t_write
        bar.update(sum(stage_rows))
        return result

    return build_dataset(cfg, out, staged, infos, identities, total_bytes, t0, parse_seconds, progress, engine,
                         vocabs, write)


def _apply_bad_line_policy(cfg: PreprocessConfig, parts: list[dict], cut_short: set[int]):
    """Order partitions by (file, first offset); per-file StageInfos. Under 'error', raise on the
    first bad line or cut-short gzip stream in file order, as the local engine does."""
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
        if k in cut_short:
            if cfg.on_bad_line == "error":
                raise truncated_gzip(uri, line)
            bad["truncated_gzip"] += 1
        if line == 0:
            if cfg.on_bad_line == "error":
                raise DatasetError(f"{uri}: the file is empty")
            bad["empty_file"] += 1
        infos.append(StageInfo(sum(p["rows"] for p in mine), line, bad))
    return infos, stages, stage_rows
