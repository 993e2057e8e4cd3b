"""The dlrmkit binary dataset format (version 1), documented in docs/dataset-format.md.

A dataset is a directory::

    metadata.json            format name and version, schema, table sizes, splits, provenance
    <split>/label.bin        uint8    (rows,)             0 or 1
    <split>/dense.bin        float32  (rows, num_dense)   log(1 + max(x, 0)), missing -> 0
    <split>/sparse.bin       int32    (rows, num_sparse)  row index into each table

All arrays are little-endian, C order, with no header: ``metadata.json`` carries every shape and
dtype, so a split is a few ``np.memmap`` calls. ``metadata.json`` is written last, atomically; a
directory without it is not a dataset (an interrupted write never looks complete).

Beside it, ``feature_spec.yaml`` describes the same files in NVIDIA's Dataset Feature Specification
(`dlrmkit.data.feature_spec`). `Dataset` also opens any dataset such a spec describes: a directory
with ``feature_spec.yaml`` and no ``metadata.json``, or the path of a ``.yaml`` file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrmkit.data import feature_spec as fspec
from dlrmkit.errors import DatasetError

FORMAT_NAME = "dlrmkit-dataset"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
SPLITS = ("train", "val", "test")

LABEL_DTYPE = np.dtype("<u1")
DENSE_DTYPE = np.dtype("<f4")
SPARSE_DTYPE = np.dtype("<i4")
ARRAYS = {"label": LABEL_DTYPE, "dense": DENSE_DTYPE, "sparse": SPARSE_DTYPE}


@dataclass(frozen=True)
class SplitArrays:
    """One split's arrays: labels (N,), dense (N, num_dense), sparse (N, num_sparse)."""

    label: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray

    def __len__(self) -> int:
        return self.label.shape[0]

    def rows(self, start: int, stop: int) -> "SplitArrays":
        return SplitArrays(self.label[start:stop], self.dense[start:stop], self.sparse[start:stop])

    def load(self) -> "SplitArrays":
        """A copy held in memory (for shuffled reads without page faults)."""
        return SplitArrays(np.array(self.label), np.array(self.dense), np.array(self.sparse))


def _shape(name: str, rows: int, num_dense: int, num_sparse: int) -> tuple[int, ...]:
    return {"label": (rows,), "dense": (rows, num_dense), "sparse": (rows, num_sparse)}[name]


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _spec_path(path: Path) -> Path | None:
    """The feature spec to open ``path`` by, or None to open it as a dlrmkit dataset (metadata.json
    wins where both exist: it is the complete description, and keeps every old error message)."""
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if path.is_dir() and not (path / METADATA_FILE).exists() and (path / fspec.SPEC_FILE).is_file():
        return path / fspec.SPEC_FILE
    return None


class Dataset:
    """A dataset opened for reading; arrays are memory-mapped on demand.

    ``path`` is a dlrmkit dataset directory, or a feature spec (a directory holding
    ``feature_spec.yaml`` but no ``metadata.json``, or a ``.yaml`` file). A spec's splits are
    memory-mapped where their files are laid out as dlrmkit's, and assembled in memory otherwise.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._spec: fspec.FeatureSpec | None = None
        spec_path = _spec_path(self.path)
        if spec_path is not None:
            self._open_spec(spec_path)
            return
        meta_path = self.path / METADATA_FILE
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: no such dataset directory")
        if not meta_path.is_file():
            raise DatasetError(f"{self.path}: not a dlrmkit dataset (no {METADATA_FILE}; "
                               f"an interrupted write leaves none)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{meta_path}: not valid JSON ({e})") from None
        if meta.get("format") != FORMAT_NAME:
            raise DatasetError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
                               f"(this dlrmkit reads version {FORMAT_VERSION})")
        self.metadata: dict = meta
        self.num_dense: int = int(meta["num_dense"])
        self.num_sparse: int = int(meta["num_sparse"])
        self.table_sizes: tuple[int, ...] = tuple(int(t) for t in meta["table_sizes"])
        if len(self.table_sizes) != self.num_sparse:
            raise DatasetError(f"{meta_path}: {len(self.table_sizes)} table sizes for {self.num_sparse} sparse features")

    def _open_spec(self, spec_path: Path) -> None:
        spec = fspec.read_feature_spec(spec_path)
        self._spec = spec
        self.num_dense = len(spec.numerical)
        self.num_sparse = len(spec.categorical)
        self.table_sizes = spec.table_sizes
        self.metadata = {
            "format": fspec.SPEC_FORMAT,
            "feature_spec": str(spec_path),
            "num_dense": self.num_dense,
            "num_sparse": self.num_sparse,
            "table_sizes": list(spec.table_sizes),
            "splits": {name: {"rows": rows} for name, rows in spec.rows.items()},
            "source": {"kind": "feature_spec", "path": str(spec_path), "metadata": spec.metadata},
        }

    @property
    def splits(self) -> dict[str, int]:
        return {name: int(s["rows"]) for name, s in self.metadata["splits"].items()}

    def split(self, name: str) -> SplitArrays:
        if name not in self.metadata["splits"]:
            raise DatasetError(f"{self.path}: no split {name!r}; it has {sorted(self.metadata['splits'])}")
        if self._spec is not None:
            return SplitArrays(*fspec.load_split(self._spec, name))
        rows = int(self.metadata["splits"][name]["rows"])
        arrays = {}
        for array, dtype in ARRAYS.items():
            file = self.path / name / f"{array}.bin"
            shape = _shape(array, rows, self.num_dense, self.num_sparse)
            expected = int(np.prod(shape)) * dtype.itemsize
            if not file.is_file():
                raise DatasetError(f"{file}: missing (metadata lists {rows} rows in split {name!r})")
            found = file.stat().st_size
            if found != expected:
                raise DatasetError(f"{file}: {found} bytes, expected {expected} for {rows} rows of {shape[1:]} {dtype}")
            arrays[array] = (np.memmap(file, dtype=dtype, mode="r", shape=shape) if rows
                             else np.empty(shape, dtype=dtype))
        return SplitArrays(**arrays)


def mark_incomplete(path: Path) -> None:
    """Remove what makes a directory open as a dataset, before rewriting it."""
    (path / METADATA_FILE).unlink(missing_ok=True)
    (path / fspec.SPEC_FILE).unlink(missing_ok=True)


class DatasetWriter:
    """Writes a dataset split by split, in order, by appending row blocks.

    Any earlier ``metadata.json`` and ``feature_spec.yaml`` are removed first, so a crash midway
    leaves a directory that `Dataset` refuses; `finish` writes them last.
    """

    def __init__(self, path: str | os.PathLike, num_dense: int, num_sparse: int):
        self.path = Path(path)
        self.num_dense = num_dense
        self.num_sparse = num_sparse
        self.path.mkdir(parents=True, exist_ok=True)
        mark_incomplete(self.path)
        self._files: dict[str, dict[str, object]] = {}
        self._rows: dict[str, int] = {}

    def preallocate(self, split: str, rows: int) -> dict[str, np.memmap]:
        """Create a split of known size and return writable memmaps of its arrays."""
        (self.path / split).mkdir(exist_ok=True)
        maps = {}
        for array, dtype in ARRAYS.items():
            file = self.path / split / f"{array}.bin"
            shape = _shape(array, rows, self.num_dense, self.num_sparse)
            with open(file, "wb") as f:
                f.truncate(int(np.prod(shape)) * dtype.itemsize)
            maps[array] = np.memmap(file, dtype=dtype, mode="r+", shape=shape) if rows else None
        self._rows[split] = rows
        return maps

    def append(self, split: str, label: np.ndarray, dense: np.ndarray, sparse: np.ndarray) -> None:
        """Append rows to a split (streaming writers whose row count is not known up front)."""
        if split not in self._files:
            (self.path / split).mkdir(exist_ok=True)
            self._files[split] = {a: open(self.path / split / f"{a}.bin", "wb") for a in ARRAYS}
            self._rows[split] = 0
        n = label.shape[0]
        if dense.shape != (n, self.num_dense) or sparse.shape != (n, self.num_sparse):
            raise ValueError(f"block shapes {label.shape}, {dense.shape}, {sparse.shape} do not agree")
        files = self._files[split]
        for array, block in (("label", label), ("dense", dense), ("sparse", sparse)):
            files[array].write(np.ascontiguousarray(block, dtype=ARRAYS[array]).tobytes())
        self._rows[split] += n

    def finish(self, table_sizes: tuple[int, ...], source: dict, extra: dict | None = None) -> dict:
        for files in self._files.values():
            for f in files.values():
                f.flush()
                os.fsync(f.fileno())
                f.close()
        self._files.clear()
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "num_dense": self.num_dense,
            "num_sparse": self.num_sparse,
            "arrays": {a: {"file": f"<split>/{a}.bin", "dtype": d.str} for a, d in ARRAYS.items()},
            "table_sizes": [int(t) for t in table_sizes],
            "splits": {name: {"rows": rows} for name, rows in self._rows.items()},
            "source": source,
        }
        if extra:
            meta.update(extra)
        write_json_atomic(self.path / METADATA_FILE, meta)
        fspec.write_feature_spec(self.path, meta)
        return meta
