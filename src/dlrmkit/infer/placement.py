"""Row placement by access frequency (the NVIDIA MLPerf submission's hot/cold split).

Each table's rows are reordered so that its most frequently looked-up rows come first: on CPU
the rows a batch touches crowd into few cache lines and pages. What preprocessing with
``--vocab frequency`` does for the indices, this does for a model trained on any vocabulary
(hashed indices scatter the hot rows across the table).

The inputs follow the rows: ``remap[table_offset + index]`` is a pair's row in the new layout.
Remapping is a random gather into an array as large as the tables, as slow as the lookup it
saves, so it is done once per sample when the QSL loads samples to RAM (LoadGen does not time
that), the way preprocessing would write frequency-ordered indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlrmkit.data.dataset import Dataset
from dlrmkit.errors import DatasetError
from dlrmkit.model import DLRM
from dlrmkit.model.quantized import QuantizedEmbeddingTables


def table_starts(table_sizes: tuple[int, ...]) -> np.ndarray:
    """First fused row of each table: (F,) int64."""
    return np.concatenate([[0], np.cumsum(table_sizes)[:-1]]).astype(np.int64)


def row_counts(dataset: Dataset, table_sizes: tuple[int, ...]) -> np.ndarray:
    """Training lookups per row of the fused tables (R,): from DATA/counts when preprocessing
    saved them, else counted over the train split."""
    offsets = table_starts(table_sizes)
    counts = np.zeros(int(sum(table_sizes)), dtype=np.int64)
    saved = Path(dataset.path) / "counts"
    for j, size in enumerate(table_sizes):
        file = saved / f"C{j + 1}.npz"  # Criteo's column names: C1..C26
        if file.is_file():
            with np.load(file) as z:
                index, count = z["index"], z["count"]
            keep = index < size  # rows past a capped table (max_index_range) fold in below
            counts[offsets[j] + index[keep]] += count[keep]
            np.add.at(counts, offsets[j] + index[~keep] % size, count[~keep])
        else:
            column = np.asarray(dataset.split("train").sparse[:, j])
            counts[offsets[j]:offsets[j] + size] += np.bincount(column % size, minlength=size)[:size]
    if counts.sum() == 0:
        raise DatasetError(f"{dataset.path}: no training lookups to place rows by")
    return counts


def frequency_order(counts: np.ndarray, table_sizes: tuple[int, ...] | None = None,
                    hot_rows: int | None = None) -> np.ndarray:
    """Old fused row of each new row, hottest first (ties keep their order): (R,) int64.

    With ``table_sizes`` each table's rows are sorted within the table (tables stay contiguous);
    without, the rows of all tables are sorted together. With ``hot_rows`` as well, the
    ``hot_rows`` most looked-up rows of all tables come first (a hot block, table by table), then
    the rest (a cold block, table by table)."""
    if table_sizes is None:
        return np.argsort(-counts, kind="stable")
    table = np.repeat(np.arange(len(table_sizes)), table_sizes)
    if hot_rows is None:
        return np.lexsort((-counts, table))  # by table, then hottest first
    cold = np.ones(counts.size, dtype=bool)
    cold[np.argsort(-counts, kind="stable")[:hot_rows]] = False
    return np.lexsort((-counts, table, cold))


def inverse(order: np.ndarray) -> np.ndarray:
    """New row of each old row: (R,), int32 where it fits."""
    dtype = np.int32 if order.size < 2**31 else np.int64
    remap = np.empty(order.size, dtype=dtype)
    remap[order] = np.arange(order.size, dtype=dtype)
    return remap


def reorder_rows(model: DLRM, order: np.ndarray) -> None:
    """Permute the model's fused table rows to ``order`` (in place). The tables then take rows of
    the reordered fused table and carry the remap (old fused row -> new) as ``row_remap``."""
    tables = model.embeddings
    if hasattr(tables, "row_remap"):
        raise ValueError("the rows are already placed")
    perm = torch.from_numpy(np.asarray(order, dtype=np.int64))
    if isinstance(tables, QuantizedEmbeddingTables):
        tables.packed = tables.packed[perm].contiguous()
    else:
        with torch.no_grad():
            tables.weight.data = tables.weight.data[perm].contiguous()
    mark_placed(model, torch.from_numpy(inverse(order)))


def mark_placed(model: DLRM, row_remap: torch.Tensor) -> None:
    """Tables whose rows are already reordered: they take rows of the fused, reordered table
    (no per-table offset) and carry the remap."""
    model.embeddings.row_offsets.zero_()
    model.embeddings.register_buffer("row_remap", row_remap)


def place_in_tiers(model: DLRM, dataset: Dataset, hot_fraction: float) -> None:
    """Place rows by frequency with the hottest ``hot_fraction`` of all rows in a hot tier that
    follows the model to its device; the rest stays in host memory (TieredEmbeddingTables)."""
    from dlrmkit.model.tiered import TieredEmbeddingTables

    sizes = tuple(model.embeddings.table_sizes)
    counts = row_counts(dataset, sizes)
    hot_rows = max(1, min(counts.size, round(hot_fraction * counts.size)))
    reorder_rows(model, frequency_order(counts, sizes, hot_rows))
    model.embeddings = TieredEmbeddingTables(model.embeddings, hot_rows)


def place_by_frequency(model: DLRM, dataset: Dataset) -> None:
    """Reorder each table's rows by the dataset's training lookups, hottest first (in place).

    Within tables, so tables stay contiguous as a ``--vocab frequency`` dataset's own indices
    are. On the project's 2-core CPU the layouts (file, random, sorted across or within tables)
    ran within run-to-run noise of each other (BENCHMARKS.md): lookups are a small share of a
    forward pass there."""
    sizes = tuple(model.embeddings.table_sizes)
    reorder_rows(model, frequency_order(row_counts(dataset, sizes), sizes))


def remap_indices(sparse: np.ndarray, remap: np.ndarray, table_sizes: tuple[int, ...],
                  max_index_range: int | None = None) -> np.ndarray:
    """Per-table indices (P, F) -> rows of the reordered fused table (P, F)."""
    from dlrmkit.data.loader import cap_indices

    return remap[cap_indices(sparse, max_index_range) + table_starts(table_sizes)]
