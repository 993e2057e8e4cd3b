"""NVIDIA's Dataset Feature Specification (``feature_spec.yaml``): write it for every dlrmkit
dataset, and read any ``split_binary`` dataset it describes ("bring your own dataset").

A spec has three sections that matter here (see docs/dataset-format.md):

    feature_spec   feature name -> {dtype, cardinality (categoricals)}
    source_spec    split name -> chunks {type: split_binary, features: [...], files: [...]}
    channel_spec   label: [one feature], numerical: [...], categorical: [...]

A ``split_binary`` file holds its chunk's features interleaved row by row, little-endian, no
header; several files in one chunk hold consecutive rows. Each chunk of a split must hold the same
number of rows. This module only reads and writes specs and arrays; `dlrmkit.data.dataset.Dataset`
wraps them in the usual interface.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dlrmkit.errors import DatasetError

SPEC_FILE = "feature_spec.yaml"
SPEC_FORMAT = "nvidia-feature-spec"  # the "format" a Dataset opened from a spec reports
SPLIT_BINARY = "split_binary"
LABEL, NUMERICAL, CATEGORICAL = "label", "numerical", "categorical"  # NVIDIA DLRM's channel names

# Every dtype a feature may have; torch spellings ("torch.float16", "torch.long") map onto these.
_DTYPES = {n: np.dtype(n).newbyteorder("<") for n in
           ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")}
_TORCH_ALIASES = {"half": "float16", "float": "float32", "double": "float64",
                  "short": "int16", "int": "int32", "long": "int64"}
_OUT_LABEL, _OUT_DENSE, _OUT_SPARSE = np.dtype("<u1"), np.dtype("<f4"), np.dtype("<i4")


@dataclass(frozen=True)
class Chunk:
    """One ``split_binary`` chunk: ``record`` is a packed structured dtype, one record per row."""

    features: tuple[str, ...]
    record: np.dtype
    files: tuple[Path, ...]
    rows: tuple[int, ...]  # per file


@dataclass(frozen=True)
class FeatureSpec:
    """A validated spec whose files all exist and agree on each split's row count."""

    path: Path
    label: str
    numerical: tuple[str, ...]
    categorical: tuple[str, ...]
    dtypes: dict[str, np.dtype]
    table_sizes: tuple[int, ...]
    splits: dict[str, tuple[Chunk, ...]]
    rows: dict[str, int]
    metadata: dict


# --- writing ----------------------------------------------------------------------------------


def write_feature_spec(path: Path, meta: dict) -> None:
    """Write ``path/feature_spec.yaml`` describing the dlrmkit dataset whose metadata is ``meta``.

    The spec describes our bytes exactly, so NVIDIA-style tools (and `read_feature_spec`) can read
    the files in place: label.bin says ``bool`` (our uint8 0/1 are the same bytes, and ``bool`` is
    the label dtype NVIDIA's DLRM expects); dense.bin and sparse.bin are one chunk each with their
    features interleaved, float32 and int32. Written atomically, like metadata.json.
    """
    nd, ns = int(meta["num_dense"]), int(meta["num_sparse"])
    dtypes = {a: np.dtype(meta["arrays"][a]["dtype"]) for a in ("label", "dense", "sparse")}
    if dtypes["label"] != np.uint8:
        raise ValueError(f"label dtype {dtypes['label']} cannot be described as bool")
    num = [f"num_{i}" for i in range(nd)]
    cat = [f"cat_{i}" for i in range(ns)]
    features: dict[str, dict] = {"label": {"dtype": "bool"}}
    features.update({f: {"dtype": dtypes["dense"].name} for f in num})
    features.update({f: {"dtype": dtypes["sparse"].name, "cardinality": int(t)}
                     for f, t in zip(cat, meta["table_sizes"])})
    source = {split: [{"type": SPLIT_BINARY, "features": ["label"], "files": [f"{split}/label.bin"]},
                      {"type": SPLIT_BINARY, "features": list(num), "files": [f"{split}/dense.bin"]},
                      {"type": SPLIT_BINARY, "features": list(cat), "files": [f"{split}/sparse.bin"]}]
              for split in meta["splits"]}
    spec = {
        "feature_spec": features,
        "source_spec": source,
        "channel_spec": {LABEL: ["label"], NUMERICAL: list(num), CATEGORICAL: list(cat)},
        "metadata": {"format": meta["format"], "format_version": meta["format_version"],
                     "byte_order": "little", "rows": {s: int(v["rows"]) for s, v in meta["splits"].items()}},
    }
    target = Path(path) / SPEC_FILE
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False, default_flow_style=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


# --- reading ----------------------------------------------------------------------------------


def _dtype(name: object, feature: str, where: Path) -> np.dtype:
    key = str(name).removeprefix("torch.")
    key = _TORCH_ALIASES.get(key, key)
    if key not in _DTYPES:
        raise DatasetError(f"{where}: feature {feature!r} has dtype {name!r}; dlrmkit reads {', '.join(_DTYPES)}")
    return _DTYPES[key]


def _names(value: object, what: str, where: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: {what} must be a non-empty list of feature names, got {value!r}")
    return tuple(str(v) for v in value)


def _load_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line for the CLI
        raise DatasetError(f"{path}: not valid YAML ({where}{problem})") from None
    sections = ("feature_spec", "source_spec", "channel_spec")
    if not isinstance(doc, dict) or any(not isinstance(doc.get(s), dict) for s in sections):
        raise DatasetError(f"{path}: not a feature specification (expected mappings {', '.join(sections)})")
    return doc


def _chunk(raw: object, split: str, dtypes: dict[str, np.dtype], base: Path, where: Path) -> Chunk:
    """Validate one chunk and measure its files (rows = size / record size, per file)."""
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: split {split!r} has a chunk that is not a mapping: {raw!r}")
    files = [base / str(f) for f in (raw.get("files") or [])]
    if raw.get("type") != SPLIT_BINARY:
        raise DatasetError(f"{where}: split {split!r}: chunk type {raw.get('type')!r} "
                           f"({', '.join(map(str, files)) or 'no files'}) is not supported; dlrmkit reads {SPLIT_BINARY}")
    features = _names(raw.get("features"), f"split {split!r} chunk features", where)
    if not files:
        raise DatasetError(f"{where}: split {split!r}: the chunk of {features[0]!r}... lists no files")
    unknown = [f for f in features if f not in dtypes]
    if unknown:
        raise DatasetError(f"{where}: split {split!r} lists feature {unknown[0]!r}, which feature_spec lacks")
    record = np.dtype({"names": list(features), "formats": [dtypes[f] for f in features]})
    rows = []
    for file in files:
        if not file.is_file():
            raise DatasetError(f"{file}: missing (listed in {where} for split {split!r})")
        size = file.stat().st_size
        if size % record.itemsize:
            raise DatasetError(f"{file}: {size} bytes is not a whole number of {record.itemsize}-byte rows "
                               f"({len(features)} features {', '.join(features[:3])}{'...' if len(features) > 3 else ''})")
        rows.append(size // record.itemsize)
    return Chunk(features, record, tuple(files), tuple(rows))


def read_feature_spec(path: str | os.PathLike) -> FeatureSpec:
    """Parse and check a spec: channels, dtypes, cardinalities, chunks, files and row counts.

    Everything is checked here, on open, so a bad dataset fails before any training starts; files
    are resolved relative to the yaml's directory.
    """
    path = Path(path)
    doc = _load_yaml(path)
    feats, channels = doc["feature_spec"], doc["channel_spec"]
    missing = [c for c in (LABEL, NUMERICAL, CATEGORICAL) if c not in channels]
    if missing:
        raise DatasetError(f"{path}: channel_spec lacks {', '.join(missing)} (it has {', '.join(map(str, channels))}); "
                           f"DLRM needs channels {LABEL}, {NUMERICAL}, {CATEGORICAL}")
    label = _names(channels[LABEL], "channel label", path)
    if len(label) != 1:
        raise DatasetError(f"{path}: channel label must name one feature, not {list(label)}")
    numerical = _names(channels[NUMERICAL], "channel numerical", path)
    categorical = _names(channels[CATEGORICAL], "channel categorical", path)
    used = (*label, *numerical, *categorical)
    if len(set(used)) != len(used):
        raise DatasetError(f"{path}: channel_spec names a feature twice")

    dtypes: dict[str, np.dtype] = {}
    for name, info in feats.items():
        if not isinstance(info, dict) or "dtype" not in info:
            raise DatasetError(f"{path}: feature {str(name)!r} has no dtype")
        dtypes[str(name)] = _dtype(info["dtype"], str(name), path)
    absent = [f for f in used if f not in dtypes]
    if absent:
        raise DatasetError(f"{path}: channel_spec names feature {absent[0]!r}, which feature_spec lacks")
    info = {str(k): v for k, v in feats.items()}
    table_sizes = []
    for f in categorical:
        card = info[f].get("cardinality")
        if card is None:
            raise DatasetError(f"{path}: categorical feature {f!r} has no cardinality")
        if not isinstance(card, int) or isinstance(card, bool) or not 0 < card <= np.iinfo(np.int32).max:
            raise DatasetError(f"{path}: categorical feature {f!r} has cardinality {card!r}; "
                               f"expected a positive integer up to 2**31-1")
        table_sizes.append(card)

    base = path.parent
    splits: dict[str, tuple[Chunk, ...]] = {}
    rows: dict[str, int] = {}
    if not doc["source_spec"]:
        raise DatasetError(f"{path}: source_spec lists no splits")
    for split, raw_chunks in doc["source_spec"].items():
        split = str(split)
        if not isinstance(raw_chunks, list) or not raw_chunks:
            raise DatasetError(f"{path}: split {split!r} must be a non-empty list of chunks")
        chunks = tuple(_chunk(c, split, dtypes, base, path) for c in raw_chunks)
        listed = [f for c in chunks for f in c.features]
        twice = sorted({f for f in listed if listed.count(f) > 1})
        lacking = [f for f in used if f not in listed]
        if twice or lacking:
            raise DatasetError(f"{path}: split {split!r} " + (f"lists feature {twice[0]!r} twice" if twice
                               else f"has no chunk with feature {lacking[0]!r}"))
        ref = chunks[0]
        for c in chunks[1:]:
            if sum(c.rows) != sum(ref.rows):
                file = c.files[0] if len(c.files) == 1 else ", ".join(map(str, c.files))
                size = sum(f.stat().st_size for f in c.files)
                raise DatasetError(f"{file}: {size} bytes, expected {sum(ref.rows) * c.record.itemsize} "
                                   f"({sum(ref.rows)} rows of {c.record.itemsize} bytes, as {ref.files[0]} holds)")
        splits[split], rows[split] = chunks, sum(ref.rows)
    meta = doc.get("metadata")
    return FeatureSpec(path, label[0], numerical, categorical, dtypes, tuple(table_sizes), splits, rows,
                       meta if isinstance(meta, dict) else {})


def _group(spec: FeatureSpec, split: str, features: tuple[str, ...], out: np.dtype, flat: bool) -> np.ndarray:
    """One array (rows, len(features)) of dtype ``out`` (or (rows,) when ``flat``).

    A chunk that is exactly these features in this order, in one file, with a dtype whose bytes
    are ``out``'s (dlrmkit's own layout), is memory-mapped; otherwise each feature's column is
    copied out of its chunk's memory-mapped records, converting with numpy, one call per feature
    and file.
    """
    rows = spec.rows[split]
    shape = (rows,) if flat else (rows, len(features))
    if rows == 0:
        return np.empty(shape, dtype=out)
    owner = {f: c for c in spec.splits[split] for f in c.features}
    chunk = owner[features[0]]
    same_bytes = all(spec.dtypes[f] == out or (out == _OUT_LABEL and spec.dtypes[f] == _DTYPES["bool"])
                     for f in features)
    if chunk.features == features and len(chunk.files) == 1 and same_bytes:
        return np.memmap(chunk.files[0], dtype=out, mode="r", shape=shape)
    result = np.empty((rows, len(features)), dtype=out)
    for j, f in enumerate(features):
        c, start = owner[f], 0
        for file, n in zip(c.files, c.rows):
            if n:
                result[start:start + n, j] = np.memmap(file, dtype=c.record, mode="r", shape=(n,))[f]
            start += n
    return result[:, 0] if flat else result


def load_split(spec: FeatureSpec, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label uint8 (N,), dense float32 (N, Nd), sparse int32 (N, F)) of one split.

    Values are taken as stored: dense features are not transformed again (NVIDIA's files already
    hold log(1 + x) values, as dlrmkit's do).
    """
    return (_group(spec, split, (spec.label,), _OUT_LABEL, flat=True),
            _group(spec, split, spec.numerical, _OUT_DENSE, flat=False),
            _group(spec, split, spec.categorical, _OUT_SPARSE, flat=False))
