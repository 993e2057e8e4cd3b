"""A dataset's splits as Parquet (``OUT/parquet/<split>.parquet``), for tools that read Parquet
(NVIDIA's DLRM examples, Spark, pandas): columns ``label`` (int8), ``I1..I13`` (float32, the
dataset's log(1 + x) values), ``C1..C26`` (int32 row indices), in the dataset's row order,
row groups of ``ROW_GROUP_ROWS`` rows. Written from the binary dataset, so both engines' Parquet
files hold exactly the dataset's values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrmkit.data.dataset import Dataset
from dlrmkit.errors import EngineError
from dlrmkit.progress import Progress

ROW_GROUP_ROWS = 1 << 20


def write_parquet(path: str | Path, progress: bool = True) -> dict[str, str]:
    """Write every split of the dataset at ``path``; returns {split: file}."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise EngineError("--parquet needs pyarrow: `pip install 'dlrmkit[spark]'` (or `pip install pyarrow`)") from None
    ds = Dataset(path)
    out_dir = Path(path) / "parquet"
    out_dir.mkdir(exist_ok=True)
    names = ["label"] + [f"I{i + 1}" for i in range(ds.num_dense)] + [f"C{j + 1}" for j in range(ds.num_sparse)]
    schema = pa.schema([("label", pa.int8())] + [(n, pa.float32()) for n in names[1:1 + ds.num_dense]]
                       + [(n, pa.int32()) for n in names[1 + ds.num_dense:]])
    bar = Progress(sum(ds.splits.values()), "rows", "parquet", enabled=progress)
    written = {}
    for split, rows in ds.splits.items():
        arrays = ds.split(split)
        target = out_dir / f"{split}.parquet"
        tmp = target.with_name(f".{target.name}.tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            for lo in range(0, rows, ROW_GROUP_ROWS):
                hi = min(rows, lo + ROW_GROUP_ROWS)
                dense, sparse = np.asarray(arrays.dense[lo:hi]), np.asarray(arrays.sparse[lo:hi])
                columns = [pa.array(np.asarray(arrays.label[lo:hi]).astype(np.int8))]
                columns += [pa.array(dense[:, i]) for i in range(ds.num_dense)]
                columns += [pa.array(sparse[:, j]) for j in range(ds.num_sparse)]
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
                bar.update(hi - lo)
        tmp.replace(target)
        written[split] = str(target)
    bar.close()
    return written
