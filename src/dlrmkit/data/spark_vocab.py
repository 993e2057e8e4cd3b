"""The Spark engine's vocabulary job: frequency counts or first appearances as Spark aggregations
over the staged rows (see `build_vocabs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrmkit.config import NUM_SPARSE, PreprocessConfig
from dlrmkit.data.preprocess import capped_values, keep_mask
from dlrmkit.data.vocab import FirstAppearance, FrequencyVocab


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
