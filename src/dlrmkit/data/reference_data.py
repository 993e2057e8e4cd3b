"""Data made by the DLRM reference tools -> a dlrmkit dataset, streamed, without the raw logs.

- ``kaggle-npz``: the reference's ``kaggleAdDisplayChallenge_processed.npz`` (X_int raw dense
  with negatives at 0, X_cat dictionary indices, y, counts = table sizes), cut into 7 days and
  the reference's splits.
- ``terabyte-npz``: its per-day ``day_<n>_reordered.npz`` (X_int, X_cat, y) with
  ``day_fea_count.npz`` (counts); days 0..D-2 train, the last day's first half test, rest val.
- ``mlperf-bin``: the MLPerf loader's ``terabyte_processed_{train,val,test}.bin``: int32 rows of
  40 (label, 13 raw dense, 26 indices); table sizes from ``day_fea_count.npz`` or, without it,
  the largest index seen + 1.

With a max index range N, indices are taken mod N and tables capped at N, as the reference's
``--max-ind-range`` does. Arrays inside the .npz files are read member by member as streams
(``np.load`` would decompress each whole array into memory).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from dlrmkit.config import NUM_DENSE, NUM_SPARSE
from dlrmkit.data.dataset import DatasetWriter
from dlrmkit.data.splits import KAGGLE_DAYS, day_sizes, split_ranges
from dlrmkit.data.transforms import log1p_dense
from dlrmkit.errors import DatasetError
from dlrmkit.progress import Progress

FORMATS = ("kaggle-npz", "terabyte-npz", "mlperf-bin")
CHUNK_ROWS = 1 << 18


class NpyStream:
    """Rows of one .npy array inside an .npz, read in chunks from the (decompressing) zip member.

    A Fortran-ordered array (the reference saves X_cat transposed) is first copied column by
    column into a C-ordered scratch file beside the output (``scratch``), so memory stays bounded.
    """

    def __init__(self, archive: zipfile.ZipFile, name: str, source: Path, scratch: Path | None = None):
        member = name if name.endswith(".npy") else name + ".npy"
        if member not in archive.namelist():
            raise DatasetError(f"{source}: no array {name!r} (has {[n[:-4] for n in archive.namelist()]})")
        self.file: BinaryIO = archive.open(member)
        version = np.lib.format.read_magic(self.file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(self.file)
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.c_order: np.ndarray | None = None
        self.pos = 0
        if fortran and len(shape) == 2 and scratch is not None:
            self.c_order = self._to_c_order(scratch)
        elif fortran and len(shape) > 1:
            raise DatasetError(f"{source}: array {name!r} is in Fortran order")

    def _to_c_order(self, scratch: Path) -> np.ndarray:
        n, k = self.shape
        table = np.lib.format.open_memmap(scratch, mode="w+", dtype=self.dtype, shape=(n, k))
        for j in range(k):
            for a in range(0, n, CHUNK_ROWS * 4):
                b = min(n, a + CHUNK_ROWS * 4)
                table[a:b, j] = np.frombuffer(self.file.read((b - a) * self.dtype.itemsize), dtype=self.dtype)
        table.flush()
        return table

    def read(self, rows: int) -> np.ndarray:
        if self.c_order is not None:
            out = np.asarray(self.c_order[self.pos:self.pos + rows])
            self.pos += out.shape[0]
            return out
        data = self.file.read(rows * self.row_bytes)
        got = len(data) // self.row_bytes
        return np.frombuffer(data[:got * self.row_bytes], dtype=self.dtype).reshape((got,) + tuple(self.shape[1:]))


def _cap(index: np.ndarray, max_index_range: int | None) -> np.ndarray:
    return index if max_index_range is None else np.remainder(index, max_index_range)


def _npz_rows(path: Path, scratch_dir: Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(y, X_int, X_cat) chunks of an .npz, in row order."""
    with zipfile.ZipFile(path) as archive:
        y, dense, cat = (NpyStream(archive, n, path, scratch_dir / f".import-{n}.npy") for n in ("y", "X_int", "X_cat"))
        n = y.shape[0]
        if dense.shape != (n, NUM_DENSE) or cat.shape != (n, NUM_SPARSE):
            raise DatasetError(f"{path}: shapes y {y.shape}, X_int {dense.shape}, X_cat {cat.shape} do not agree")
        done = 0
        while done < n:
            k = min(CHUNK_ROWS, n - done)
            block = y.read(k), dense.read(k), cat.read(k)
            if any(b.shape[0] != k for b in block):
                raise DatasetError(f"{path}: truncated after row {done}")
            yield block
            done += k


def _npz_shape(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return NpyStream(archive, "y", path).shape[0]


def _counts(path: Path | None, max_index_range: int | None) -> list[int] | None:
    if path is None:
        return None
    with np.load(path) as data:
        if "counts" not in data.files:
            raise DatasetError(f"{path}: no 'counts' array (has {data.files})")
        counts = [int(c) for c in data["counts"]]
    if len(counts) != NUM_SPARSE:
        raise DatasetError(f"{path}: {len(counts)} counts, expected {NUM_SPARSE}")
    return counts if max_index_range is None else [min(c, max_index_range) for c in counts]


def _write_rows(writer: DatasetWriter, chunks: Iterator, ranges: dict[str, tuple[int, int]],
                max_index_range: int | None, bar: Progress, start: int = 0) -> tuple[int, np.ndarray]:
    """Route row chunks (global order from ``start``) into their splits; returns (rows, max index)."""
    row = start
    max_index = np.full(NUM_SPARSE, -1, dtype=np.int64)
    for y, dense, cat in chunks:
        idx = _cap(cat.astype(np.int64), max_index_range)
        if idx.size and idx.min() < 0:
            raise DatasetError(f"negative categorical index in rows {row}..{row + len(y)}")
        if idx.size:
            max_index = np.maximum(max_index, idx.max(axis=0))
        for split, (lo, hi) in ranges.items():
            a, b = max(lo, row), min(hi, row + len(y))
            if a < b:
                s = slice(a - row, b - row)
                writer.append(split, np.asarray(y[s]).astype(np.uint8), log1p_dense(dense[s]), idx[s].astype(np.int32))
        row += len(y)
        bar.update(len(y))
    return row, max_index


def import_reference(fmt: str, inputs: list[str | os.PathLike], out: str | os.PathLike,
                     counts_file: str | os.PathLike | None = None, max_index_range: int | None = None,
                     progress: bool = True) -> dict:
    """Convert the reference's processed data to a dlrmkit dataset at ``out``; returns its metadata."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise DatasetError(f"{p}: no such file")
    writer = DatasetWriter(out, NUM_DENSE, NUM_SPARSE)
    bar = Progress(None, "rows", f"import {fmt}", enabled=progress)
    counts = _counts(Path(counts_file), max_index_range) if counts_file else None

    if fmt == "kaggle-npz":
        if len(paths) != 1:
            raise DatasetError(f"kaggle-npz takes one file, got {len(paths)}")
        n = _npz_shape(paths[0])
        ranges = split_ranges(day_sizes(n, KAGGLE_DAYS))
        # Rows arrive in order train, test, val: append in that order, then the writer holds each split whole.
        _, max_index = _write_rows(writer, _npz_rows(paths[0], Path(out)), ranges, max_index_range, bar)
        with zipfile.ZipFile(paths[0]) as archive:
            if "counts.npy" in archive.namelist() and counts is None:
                with np.load(paths[0]) as data:
                    counts = [int(c) if max_index_range is None else min(int(c), max_index_range) for c in data["counts"]]
    elif fmt == "terabyte-npz":
        if len(paths) < 2:
            raise DatasetError("terabyte-npz needs at least two day files, in order")
        days = [_npz_shape(p) for p in paths]
        ranges = split_ranges(days)
        start = 0
        max_index = np.full(NUM_SPARSE, -1, dtype=np.int64)
        for p in paths:
            start, m = _write_rows(writer, _npz_rows(p, Path(out)), ranges, max_index_range, bar, start)
            max_index = np.maximum(max_index, m)
    else:
        by_split = {}
        for p in paths:
            split = next((s for s in ("train", "val", "test") if p.name.endswith(f"_{s}.bin")), None)
            if split is None:
                raise DatasetError(f"{p}: expected a name ending in _train.bin, _val.bin or _test.bin")
            by_split[split] = p
        max_index = np.full(NUM_SPARSE, -1, dtype=np.int64)
        for split in ("train", "val", "test"):
            if split not in by_split:
                continue
            p = by_split[split]
            size = p.stat().st_size
            row_bytes = 4 * (1 + NUM_DENSE + NUM_SPARSE)
            if size % row_bytes:
                raise DatasetError(f"{p}: {size} bytes is not a whole number of {row_bytes}-byte rows")
            rows = size // row_bytes
            data = np.memmap(p, dtype="<i4", mode="r", shape=(rows, 1 + NUM_DENSE + NUM_SPARSE)) if rows else \
                np.empty((0, 40), np.int32)
            chunks = ((data[a:a + CHUNK_ROWS, 0], data[a:a + CHUNK_ROWS, 1:1 + NUM_DENSE],
                       data[a:a + CHUNK_ROWS, 1 + NUM_DENSE:]) for a in range(0, rows, CHUNK_ROWS))
            _, m = _write_rows(writer, chunks, {split: (0, rows)}, max_index_range, bar)
            max_index = np.maximum(max_index, m)
    bar.close()
    for scratch in Path(out).glob(".import-*.npy"):
        scratch.unlink()
    if counts is None:
        counts = [int(m) + 1 for m in max_index]
    too_big = [(j, int(m), c) for j, (m, c) in enumerate(zip(max_index, counts)) if m >= c]
    if too_big:
        j, m, c = too_big[0]
        raise DatasetError(f"C{j + 1}: index {m} found but the table has {c} rows")
    source = {"kind": "reference-import", "format": fmt, "inputs": [str(p.resolve()) for p in paths],
              "counts_file": str(counts_file) if counts_file else None, "max_index_range": max_index_range}
    return writer.finish(tuple(counts), source)
