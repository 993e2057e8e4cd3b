"""Pass 1 of preprocessing, stage: each input file is parsed block by block
(dlrmkit.data.criteo_text, on a pool of worker processes) into raw arrays under
``OUT/.stage/<k>/`` (label uint8, dense int32, sparse uint32 = int(hex, 16)); for the hash
vocabulary the final index and log values instead. A file's stage is complete once its
``done.json`` exists (written last, atomically), so a rerun after a crash skips the files already
staged. `StagedRows` reads all staged rows back as one sequence for pass 2."""

from __future__ import annotations

import functools
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from dlrmkit.config import NUM_DENSE, NUM_SPARSE, PreprocessConfig
from dlrmkit.data.criteo_text import BAD_KINDS, ParsedBlock, parse_block
from dlrmkit.data.dataset import write_json_atomic
from dlrmkit.data.raw_files import read_blocks, truncated_gzip
from dlrmkit.data.transforms import log1p_dense
from dlrmkit.data.vocab import hash_index
from dlrmkit.errors import DatasetError
from dlrmkit.progress import Progress

CHUNK_ROWS = 1 << 20  # rows StagedRows.chunks reads at a time
STAGE_VERSION = 1
# What pass 1 stages: raw values, or for hash (no vocabulary needed) the final index and log values,
# computed on the parse workers so pass 2 only cuts, counts and writes.
RAW_STAGE = {"label": (np.uint8, ()), "dense": (np.int32, (NUM_DENSE,)), "sparse": (np.uint32, (NUM_SPARSE,))}
HASHED_STAGE = {"label": (np.uint8, ()), "dense": (np.float32, (NUM_DENSE,)), "sparse": (np.int32, (NUM_SPARSE,))}


def stage_layout(cfg: PreprocessConfig) -> tuple[str, dict]:
    """(a name recorded in done.json, the staged arrays) for a config."""
    return (f"hash:{cfg.max_index_range}", HASHED_STAGE) if cfg.vocab == "hash" else ("raw", RAW_STAGE)



@dataclass
class StageInfo:
    rows: int
    lines: int
    bad: dict[str, int]


def stage_dir(out: Path, k: int) -> Path:
    return out / ".stage" / f"{k:04d}"


def input_identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def stage_file(path: Path, stage: Path, cfg: PreprocessConfig, pool: ProcessPoolExecutor | None,
               bar: Progress | None) -> StageInfo:
    """Parse one input file into ``stage``; raises DatasetError on the first bad line under 'error'."""
    done = stage / "done.json"
    identity = input_identity(path)
    layout, arrays = stage_layout(cfg)
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("version") == STAGE_VERSION and info.get("input") == identity and info.get("layout") == layout:
            if bar is not None:
                bar.update(identity["bytes"])
            return StageInfo(info["rows"], info["lines"], info["bad"])
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    files = {name: open(stage / f"{name}.part", "wb") for name in arrays}
    bad = {kind: 0 for kind in BAD_KINDS + ("truncated_gzip", "empty_file")}
    rows = lines = 0
    blocks = read_blocks(path, cfg.block_bytes, on_read=bar.update if bar is not None else None)
    truncated = [False]

    def texts() -> Iterator[bytes]:
        for block, cut in blocks:
            if cut:
                truncated[0] = True
            elif block:
                yield block

    parse = functools.partial(parse_for_stage, hash_range=cfg.max_index_range if cfg.vocab == "hash" else None)
    parsed = _ordered_map(pool, parse, texts(), window=2 * cfg.workers) if pool is not None else map(parse, texts())
    for block in parsed:
        if block.bad:
            if cfg.on_bad_line == "error":
                first = block.bad[0]
                raise DatasetError(f"{path}: line {lines + first.line + 1}: {first.kind}: {first.detail} "
                                   f"(use --on-bad-line skip to skip such lines)")
            for b in block.bad:
                bad[b.kind] += 1
        _write_stage(files, block, arrays)
        rows += block.label.size
        lines += block.lines
    if truncated[0]:
        if cfg.on_bad_line == "error":
            raise truncated_gzip(str(path), lines)
        bad["truncated_gzip"] += 1
    if lines == 0:
        if cfg.on_bad_line == "error":
            raise DatasetError(f"{path}: the file is empty")
        bad["empty_file"] += 1
    for name, f in files.items():
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(stage / f"{name}.part", stage / f"{name}.bin")
    info = {"version": STAGE_VERSION, "input": identity, "layout": layout, "rows": rows, "lines": lines, "bad": bad}
    write_json_atomic(done, info)
    return StageInfo(rows, lines, bad)


def parse_for_stage(data: bytes, hash_range: int | None = None) -> ParsedBlock:
    """parse_block with the stage's compact dtypes (half the bytes to send back from a worker);
    with ``hash_range`` also the final hash index and log values (HASHED_STAGE)."""
    block = parse_block(data, compact=True)
    if hash_range is not None:
        block.dense = log1p_dense(block.dense)
        block.sparse = hash_index(block.sparse, hash_range).astype(np.int32)
    return block


def _ordered_map(pool: ProcessPoolExecutor, fn, items: Iterator, window: int) -> Iterator:
    """pool.map with at most ``window`` items in flight (Executor.map would read all input first)."""
    pending = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    while pending:
        yield pending.pop(0).result()


def _write_stage(files: dict, block: ParsedBlock, arrays: dict) -> None:
    for name in arrays:
        files[name].write(getattr(block, name).astype(arrays[name][0], copy=False).tobytes())


class StagedRows:
    """All staged rows of all inputs as one sequence, read in chunks by global row range."""

    def __init__(self, stages: list[Path], rows: list[int], layout: dict):
        self.layout = layout
        self.arrays = []
        for stage, n in zip(stages, rows):
            self.arrays.append({name: np.memmap(stage / f"{name}.bin", dtype=dtype, mode="r", shape=(n,) + shape)
                                if n else np.empty((0,) + shape, dtype=dtype)
                                for name, (dtype, shape) in layout.items()})
        self.starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)

    def read(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.layout}
        for k, arrays in enumerate(self.arrays):
            a, b = max(lo, self.starts[k]), min(hi, self.starts[k + 1])
            if a < b:
                for name in self.layout:
                    parts[name].append(np.asarray(arrays[name][a - self.starts[k]:b - self.starts[k]]))
        return {name: np.concatenate(p) if p else np.empty((0,) + self.layout[name][1], self.layout[name][0])
                for name, p in parts.items()}

    def chunks(self, lo: int, hi: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for a in range(lo, hi, CHUNK_ROWS):
            yield a, self.read(a, min(hi, a + CHUNK_ROWS))
