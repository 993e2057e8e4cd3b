"""The Spark engine's last job: index every staged row with the vocabularies and write it where
the local engine would, on the executors (see `write_on_spark`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from dlrmkit.config import NUM_SPARSE, PreprocessConfig
from dlrmkit.data.native import FlatTable, NativeMap
from dlrmkit.data.preprocess import capped_values, keep_mask
from dlrmkit.data.stage import stage_layout

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
    tables = None if vocabs is None else _save_tables(cfg, vocabs, Path(writer.path) / ".stage" / "spark" / "vocab")
    rows = [task + (json.dumps(off),) for task, off in zip(tasks, offsets)]
    df = spark.createDataFrame(rows, schema + ", offsets string")
    df = df.repartition(max(1, len(rows)))
    out = str(writer.path)
    token = f"{os.getpid()}-{time.time_ns()}"  # names this run's dictionaries in the workers' cache
    counted = df.mapInArrow(lambda b: _write_batches(cfg, out, ranges, tables, token, b),
                            "col int, idx long, n long")
    table = counted.groupBy("col", "idx").agg(F.sum("n").alias("n")).toArrow()
    cols, idx, n = (table.column(c).to_numpy() for c in ("col", "idx", "n"))
    sizes = [cfg.max_index_range] * NUM_SPARSE if vocabs is None else [v.size() for v in vocabs]
    counts = [np.zeros(size, dtype=np.int64) for size in sizes]
    for j in range(NUM_SPARSE):
        mine = cols == j
        counts[j][idx[mine]] = n[mine]  # one row per (column, index) after the aggregation
    return counts, int(dropped)


_EXECUTOR_VOCABS: dict = {}  # run token -> the tables, opened once per Python worker


def _save_tables(cfg: PreprocessConfig, vocabs: list, root: Path) -> list[tuple[str, int]]:
    """Each column's dictionary as a FlatTable file under ``root`` (on the file system every executor
    sees): the write tasks map these files, so a machine holds one copy in its page cache however
    many Python workers it runs. (path, entries) per column."""
    root.mkdir(parents=True, exist_ok=True)
    tables = []
    for j, v in enumerate(vocabs):
        native = v.vocab if cfg.vocab == "frequency" else v.native  # the driver's C map, value -> index
        if isinstance(native, NativeMap):
            table = FlatTable(native.slots(), len(native))
        else:
            values = v.values_by_index if cfg.vocab == "frequency" else v.values_in_index_order()
            table = FlatTable.build(values, np.arange(values.size))
        path = root / f"C{j + 1}.npy"
        table.save(path)
        tables.append((str(path), len(table)))
    return tables


def _executor_vocab(tables: list[tuple[str, int]], token: str) -> list[FlatTable]:
    """The dictionaries, memory-mapped; a value not in one gets the index len(table) (frequency's
    shared last row), as the local engine's `FrequencyVocab.apply` gives it."""
    if token not in _EXECUTOR_VOCABS:
        _EXECUTOR_VOCABS.clear()
        _EXECUTOR_VOCABS[token] = [FlatTable.open(path, size) for path, size in tables]
    return _EXECUTOR_VOCABS[token]


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


def _write_batches(cfg: PreprocessConfig, out: str, ranges: dict, tables, token: str, batches):
    """Executor side: index one staged split's rows and write them at their offsets in each split."""
    import pyarrow as pa

    from dlrmkit.data.transforms import log1p_dense

    layout = stage_layout(cfg)[1]
    vocab = None if tables is None else _executor_vocab(tables, token)
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
                    for j, table in enumerate(vocab):
                        table.lookup(values[:, j], len(table), index[:, j])
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
