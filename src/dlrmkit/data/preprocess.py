"""Raw Criteo logs (plain or .gz, read as streams) -> a dlrmkit dataset, in two passes.

Pass 1, stage (dlrmkit.data.stage): each input file is parsed into raw arrays under
``OUT/.stage/<k>/``; a rerun after a crash skips the files already staged.

Pass 2, build: the staged rows are cut into days and splits as the DLRM reference cuts them
(dlrmkit.data.splits); the vocabulary is built (hash: none; reference: first appearance over
all kept rows; frequency: counts over the kept training rows), then every split is written with dense =
log(1 + max(x, 0)) and sparse = the vocabulary's index. Vocabularies and per-index training
counts are saved beside the dataset; metadata.json is written last.

Memory: one block per worker in pass 1; in pass 2 one chunk of ``stage.CHUNK_ROWS`` rows plus the
vocabularies (reference/frequency: 16 bytes per distinct value; the Kaggle set's 33.8M values
take about 540 MB).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dlrmkit.config import NUM_DENSE, NUM_SPARSE, PreprocessConfig
from dlrmkit.data.dataset import DatasetWriter, mark_incomplete
from dlrmkit.data.native import library
from dlrmkit.data.splits import KAGGLE_DAYS, day_sizes, split_ranges
from dlrmkit.data.stage import StagedRows, StageInfo, input_identity, stage_dir, stage_file, stage_layout
from dlrmkit.data.transforms import log1p_dense
from dlrmkit.data.vocab import FirstAppearance, FrequencyCounter, mod_u32
from dlrmkit.errors import ConfigError, DatasetError
from dlrmkit.progress import Progress


def keep_mask(label: np.ndarray, rows: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Sub-sampling: drop a negative training row when its uniform draw is below ``rate``.

    The draw of global row r is a hash of (seed, r), so the result does not depend on chunking.
    """
    if rate <= 0:
        return np.ones(label.shape, dtype=bool)
    x = rows.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    u = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (label == 1) | (u >= rate)


def output_dir(out: str | os.PathLike) -> Path:
    """OUT as a directory path; ConfigError for a URI, which would silently become a local directory."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", str(out))
    if scheme:
        raise ConfigError(f"--out {out}: the dataset files are written in place (memory-mapped, at row offsets), "
                          f"so OUT must be a directory, not a {scheme.group(1)}:// URI; on a cluster, a directory "
                          f"on a file system that every machine mounts (NFS, Lustre, ...)")
    return Path(out)


def preprocess(cfg: PreprocessConfig, out: str | os.PathLike, progress: bool = True) -> dict:
    """Run both passes; returns the dataset metadata."""
    out = output_dir(out)
    inputs = [Path(p) for p in cfg.inputs]
    for p in inputs:
        if not p.is_file():
            raise DatasetError(f"{p}: no such input file")
    out.mkdir(parents=True, exist_ok=True)
    mark_incomplete(out)  # the old dataset must not look complete while this run stages
    t0 = time.perf_counter()
    total_bytes = sum(p.stat().st_size for p in inputs)
    bar = Progress(total_bytes, "input bytes", "preprocess [1/2 parse]", enabled=progress)
    stages = [stage_dir(out, k) for k in range(len(inputs))]
    pool = ProcessPoolExecutor(cfg.workers) if cfg.workers > 1 else None
    try:
        if pool is not None and len(inputs) >= cfg.workers:
            # One file per worker (each reads, gunzips and parses its own file): gunzip no longer
            # runs on the main process alone. Results come back in input order.
            futures = [pool.submit(stage_file, p, s, cfg, None, None) for p, s in zip(inputs, stages)]
            infos = []
            for p, f in zip(inputs, futures):
                infos.append(f.result())
                bar.update(p.stat().st_size)
        else:  # one file (Kaggle): its blocks are parsed on the pool
            infos = [stage_file(p, s, cfg, pool, bar) for p, s in zip(inputs, stages)]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    bar.close()
    rows = [i.rows for i in infos]
    return build_dataset(cfg, out, StagedRows(stages, rows, stage_layout(cfg)[1]), infos,
                         [input_identity(p) for p in inputs], total_bytes, t0, time.perf_counter() - t0, progress)


def cut_days(cfg: PreprocessConfig, rows: list[int]) -> tuple[list[int], dict[str, tuple[int, int]]]:
    """(rows per day, global row range per split) for inputs of ``rows`` rows each."""
    days = day_sizes(sum(rows), KAGGLE_DAYS) if cfg.dataset == "kaggle" else rows
    if sum(rows) < len(days) or days[-1] < 1:
        raise DatasetError(f"{cfg.inputs[-1]}: too few rows ({sum(rows)}) to cut into {len(days)} days")
    return days, split_ranges(days)


def build_dataset(cfg: PreprocessConfig, out: Path, staged: "StagedRows", infos: list[StageInfo],
                  identities: list[dict], total_bytes: int, t0: float, parse_seconds: float,
                  progress: bool = True, engine: dict | None = None, vocabs: list | None = None,
                  write=None) -> dict:
    """Pass 2 over the staged rows of every input (``infos``: one per input file, in order).
    ``vocabs``: the vocabularies when already built elsewhere (the Spark engine's aggregations);
    ``write(ranges, vocabs, writer, bar) -> (counts, dropped)``: indexes and writes the splits
    elsewhere (the Spark engine's executors) instead of `_index_and_write` here."""
    rows = [i.rows for i in infos]
    days, ranges = cut_days(cfg, rows)
    train_lo, train_hi = ranges["train"]

    bar = Progress(sum(rows), "rows", "preprocess [2/2 build]", enabled=progress)
    threads = ThreadPoolExecutor(cfg.workers)
    if vocabs is not None:
        pass
    elif cfg.vocab == "reference":  # indexed while the dictionary grows, in global row order
        vocabs = [FirstAppearance() for _ in range(NUM_SPARSE)]
    elif cfg.vocab == "frequency":  # counted over the (kept) training rows first
        counters = [FrequencyCounter() for _ in range(NUM_SPARSE)]
        for lo, chunk in staged.chunks(train_lo, train_hi):
            keep = keep_mask(chunk["label"], np.arange(lo, lo + chunk["label"].size), cfg.sub_sample_rate, cfg.seed)
            values = capped_values(chunk["sparse"][keep], cfg.max_index_range)
            list(threads.map(lambda j: counters[j].update(values[:, j]), range(NUM_SPARSE)))
        vocabs = [c.finish(cfg.frequency_threshold) for c in counters]

    writer = DatasetWriter(out, NUM_DENSE, NUM_SPARSE)
    if write is None:
        counts, dropped = _index_and_write(cfg, staged, ranges, vocabs, writer, threads, bar)
    else:
        counts, dropped = write(ranges, vocabs, writer, bar)
    bar.close()
    threads.shutdown()
    table_sizes = [cfg.max_index_range] * NUM_SPARSE if vocabs is None else [v.size() for v in vocabs]
    counts = [c[:t] for c, t in zip(counts, table_sizes)]
    _save_vocab(out, cfg, vocabs, counts)
    seconds = time.perf_counter() - t0
    bad_total: dict[str, int] = {}
    for info in infos:
        for kind, n in info.bad.items():
            bad_total[kind] = bad_total.get(kind, 0) + n
    source = {
        "kind": "criteo",
        "dataset": cfg.dataset,
        "inputs": identities,
        "vocab": cfg.vocab,
        "max_index_range": cfg.max_index_range,
        "frequency_threshold": cfg.frequency_threshold if cfg.vocab == "frequency" else None,
        "sub_sample_rate": cfg.sub_sample_rate,
        "seed": cfg.seed,
        "on_bad_line": cfg.on_bad_line,
        "lines": sum(i.lines for i in infos),
        "rows": sum(rows),
        "day_rows": [int(d) for d in days],
        "bad_lines": bad_total,
        "sub_sampled_out": dropped,
    }
    peak_mb = {"main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    meta = writer.finish(tuple(table_sizes), source, {
        "preprocess": {"seconds": seconds, "parse_seconds": parse_seconds, "peak_rss_mb": peak_mb,
                       "rows_per_s": sum(rows) / seconds, "input_bytes": total_bytes,
                       "engine": engine or {"name": "local", "workers": cfg.workers}},
    })
    if not cfg.keep_stage:
        shutil.rmtree(out / ".stage", ignore_errors=True)
    if cfg.parquet:
        from dlrmkit.data.parquet_export import write_parquet

        write_parquet(out, progress)
    return meta



def _index_and_write(cfg: PreprocessConfig, staged: "StagedRows", ranges: dict, vocabs, writer: DatasetWriter,
                     threads: ThreadPoolExecutor, bar: Progress) -> tuple[list[np.ndarray], int]:
    """Every split, chunk by chunk in global row order: sub-sample, index, log, count, append.
    Returns the training counts per row index of each column and the rows sub-sampled out."""
    known = [cfg.max_index_range] * NUM_SPARSE if vocabs is None else \
        ([v.size() for v in vocabs] if cfg.vocab == "frequency" else [0] * NUM_SPARSE)
    counts = [np.zeros(n, dtype=np.int64) for n in known]  # training occurrences per row index
    dropped = 0
    for split in ("train", "test", "val"):  # global row order (the last day: test half, then val half)
        lo, hi = ranges[split]
        for a, chunk in staged.chunks(lo, hi):
            label, dense, sparse = chunk["label"], chunk["dense"], chunk["sparse"]
            if split == "train" and cfg.sub_sample_rate > 0:
                keep = keep_mask(label, np.arange(a, a + label.size), cfg.sub_sample_rate, cfg.seed)
                dropped += int((~keep).sum())
                label, dense, sparse = label[keep], dense[keep], sparse[keep]
            if cfg.vocab == "hash":  # indexed and log-transformed in pass 1
                index = sparse
            else:
                index, dense = _indices(sparse, cfg.max_index_range, vocabs, threads), log1p_dense(dense)
            if split == "train":
                counts = list(threads.map(lambda j: _add_counts(counts[j], index[:, j]), range(NUM_SPARSE)))
            writer.append(split, label, dense, index)
            bar.update(chunk["label"].size)
    return counts, dropped

def capped_values(values: np.ndarray, max_index_range: int | None) -> np.ndarray:
    """Categorical values (uint32), mod N when a max index range is given."""
    values = values.astype(np.uint32, copy=False)
    return values if max_index_range is None else mod_u32(values, max_index_range)


def _indices(sparse: np.ndarray, max_index_range: int | None, vocabs, threads: ThreadPoolExecutor) -> np.ndarray:
    """(n, 26) int32 row indices of a chunk from the reference or frequency vocabularies; the
    columns are independent, so they run on threads (the C map and numpy release the GIL)."""
    values = capped_values(sparse, max_index_range)
    out = np.empty(values.shape, dtype=np.int32)

    def column(j: int) -> None:  # written straight into the output column
        v = vocabs[j]
        v.update(values[:, j], out[:, j]) if isinstance(v, FirstAppearance) else v.apply(values[:, j], out[:, j])

    list(threads.map(column, range(values.shape[1])))
    return out


def _add_counts(counts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """counts[i] += occurrences of i in ``index`` (one column, int32); grows ``counts`` (doubling)."""
    if index.size == 0:
        return counts
    top = int(index.max()) + 1
    if top > counts.size:
        counts = np.pad(counts, (0, max(top, 2 * counts.size) - counts.size))
    lib = library()
    if lib is not None:  # a plain loop in C: ~1 ns an index, whatever the table size
        lib.dlrmkit_add_counts(counts.ctypes.data, index.ctypes.data, index.shape[0], index.strides[0] // 4)
    elif top <= 4 * index.size:  # dense enough for bincount
        counts[:top] += np.bincount(index, minlength=top)
    else:  # a big sparse table (hash): sort the chunk instead of allocating the table
        rows, n = np.unique(index, return_counts=True)
        counts[rows] += n
    return counts


def _save_vocab(out: Path, cfg: PreprocessConfig, vocabs, counts: list[np.ndarray]) -> None:
    """``vocab/C<j>.npy``: the value of each row index (reference, frequency); ``counts/C<j>.npz``:
    how often each row index occurs in the training split, as the rows seen (``index``, sorted)
    and their ``count`` (hot/cold placement reads these)."""
    for sub in ("vocab", "counts"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()

    def save(j: int) -> None:
        seen = np.flatnonzero(counts[j] != 0)  # a bool scan: 2x faster than on the int64 counts
        np.savez(out / "counts" / f"C{j + 1}.npz", index=seen, count=counts[j][seen])
        if isinstance(vocabs, list) and isinstance(vocabs[j], FirstAppearance):
            np.save(out / "vocab" / f"C{j + 1}.npy", vocabs[j].values_in_index_order())
        elif vocabs is not None:
            np.save(out / "vocab" / f"C{j + 1}.npy", vocabs[j].values_by_index)

    with ThreadPoolExecutor(cfg.workers) as threads:
        list(threads.map(save, range(NUM_SPARSE)))
