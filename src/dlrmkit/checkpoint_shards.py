"""Sharded checkpoints: what a distributed run writes, readable by any number of processes.

Each rank writes the rows it holds to its own shard file; rank 0 then writes the checkpoint
file proper (the same format as a single-process checkpoint, see `dlrmkit.checkpoint`), whose
``model_state`` lacks ``embeddings.weight`` and which names the shard files::

    sharded    {"world_size": W, "plan": {...},
                "files": [{"name": "checkpoint.pt.step100.shard0-of-2",
                           "ranges": [[table, row_lo, row_hi], ...]}, ...]}

A shard file holds ``weight`` (its ranges' rows, one after another) and, for row-wise Adagrad,
``accumulator``. Shard file names carry the step, so a checkpoint file only ever names complete
files: a crash while shards are written leaves the previous checkpoint intact.

Reading: `read_rows` gives any row range of any table from a sharded or a single-file
checkpoint (memory-mapped: a rank touches only its rows), so a run saved on W ranks resumes on
any other number; `assemble` gives the whole tables, for one process, evaluation and inference.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from dlrmkit.checkpoint import write_atomic
from dlrmkit.errors import CheckpointError

SHARD_FORMAT = "dlrmkit-checkpoint-shard"
WEIGHT_KEY = "embeddings.weight"


def shard_file_name(checkpoint_name: str, step: int, rank: int, world_size: int) -> str:
    return f"{checkpoint_name}.step{step}.shard{rank}-of-{world_size}"


def write_shard(path: str | os.PathLike, ranges: list[tuple[int, int, int]], weight: torch.Tensor,
                accumulator: torch.Tensor | None) -> Path:
    return write_atomic(path, {"format": SHARD_FORMAT, "ranges": [list(r) for r in ranges],
                               "weight": weight.detach().cpu(),
                               "accumulator": None if accumulator is None else accumulator.cpu()})


def remove_stale_shards(checkpoint: Path, keep: set[str]) -> None:
    """Delete ``<checkpoint name>.step*.shard*`` files beside it that ``keep`` does not name."""
    pattern = re.compile(re.escape(checkpoint.name) + r"\.step\d+\.shard\d+-of-\d+$")
    for p in checkpoint.parent.iterdir():
        if pattern.match(p.name) and p.name not in keep:
            p.unlink(missing_ok=True)


def is_sharded(ckpt: dict) -> bool:
    return "sharded" in ckpt


def link_checkpoint(src: Path, dst: Path) -> None:
    """Make ``dst`` a second name for checkpoint ``src`` (hard links where the file system allows,
    copies elsewhere), shard files included; ``dst``'s old shard files go."""
    payload = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
    keep: set[str] = set()
    if is_sharded(payload):
        files = []
        for entry in payload["sharded"]["files"]:
            name = dst.name + entry["name"][len(src.name):]
            _link(src.parent / entry["name"], dst.parent / name)
            files.append({**entry, "name": name})
            keep.add(name)
        write_atomic(dst, {**payload, "sharded": {**payload["sharded"], "files": files}})
    else:
        _link(src, dst)
    remove_stale_shards(dst, keep)


def _link(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class RowReader:
    """Rows of any table out of a loaded checkpoint payload (sharded or not), file by file."""

    def __init__(self, ckpt: dict, path: str | os.PathLike):
        self.ckpt = ckpt
        self.path = Path(path)
        self.table_sizes = tuple(ckpt["model_config"]["table_sizes"])
        cap = ckpt["model_config"].get("max_index_range")
        if cap is not None:
            self.table_sizes = tuple(min(n, cap) for n in self.table_sizes)
        self._files: dict[str, dict] = {}

    def _load(self, name: str) -> dict:
        if name not in self._files:
            p = self.path.parent / name
            if not p.is_file():
                raise CheckpointError(f"{self.path}: its shard file {p} is missing; the checkpoint is incomplete")
            try:
                shard = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise CheckpointError(f"{p}: cannot be read as a checkpoint shard (truncated or corrupt?): "
                                      f"{type(e).__name__}") from None
            if not isinstance(shard, dict) or shard.get("format") != SHARD_FORMAT:
                raise CheckpointError(f"{p}: not a dlrmkit checkpoint shard")
            listed = next(e["ranges"] for e in self.ckpt["sharded"]["files"] if e["name"] == name)
            rows = sum(hi - lo for _, lo, hi in listed)
            acc = shard["accumulator"]
            if [list(r) for r in shard["ranges"]] != [list(r) for r in listed] or shard["weight"].shape[0] != rows \
                    or (acc is not None and acc.shape[0] != rows):
                raise CheckpointError(f"{p}: holds {shard['weight'].shape[0]} rows of ranges {shard['ranges']}, but "
                                      f"{self.path} lists {rows} rows of ranges {listed}; the files do not belong together")
            self._files[name] = shard
        return self._files[name]

    def _accumulator_full(self) -> torch.Tensor | None:
        opt = self.ckpt.get("optimizer_state") or {}
        return (opt.get("sparse") or {}).get("accumulator")

    def read(self, table: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight rows (hi - lo, D), row-wise Adagrad accumulator (hi - lo,) or None) of ``table``."""
        if not is_sharded(self.ckpt):
            start = sum(self.table_sizes[:table])
            weight = self.ckpt["model_state"][WEIGHT_KEY][start + lo:start + hi]
            acc = self._accumulator_full()
            return weight.clone(), None if acc is None else acc[start + lo:start + hi].clone()
        weight, acc = None, None
        covered = torch.zeros(hi - lo, dtype=torch.int32)
        for entry in self.ckpt["sharded"]["files"]:
            offset = 0
            for t, r_lo, r_hi in entry["ranges"]:
                a, b = max(lo, r_lo), min(hi, r_hi)
                if t == table and a < b:
                    shard = self._load(entry["name"])
                    rows = shard["weight"][offset + a - r_lo:offset + b - r_lo]
                    if weight is None:
                        weight = rows.new_empty((hi - lo, rows.shape[1]))
                    weight[a - lo:b - lo] = rows
                    if shard["accumulator"] is not None:
                        if acc is None:
                            acc = torch.zeros(hi - lo)
                        acc[a - lo:b - lo] = shard["accumulator"][offset + a - r_lo:offset + b - r_lo]
                    covered[a - lo:b - lo] += 1
                offset += r_hi - r_lo
        if hi > lo and not bool((covered == 1).all()):
            missing, doubled = int((covered == 0).sum()), int((covered > 1).sum())
            raise CheckpointError(f"{self.path}: of rows [{lo}, {hi}) of table {table}, its shard files miss {missing} "
                                  f"and hold {doubled} more than once; the checkpoint is incomplete or inconsistent")
        if weight is None:  # an empty range
            weight = torch.empty(0, self.ckpt["model_config"]["embedding_dim"])
        return weight, acc


def assemble(ckpt: dict, path: str | os.PathLike) -> dict:
    """A sharded checkpoint payload as a single-process one: whole tables, whole accumulator."""
    if not is_sharded(ckpt):
        return ckpt
    reader = RowReader(ckpt, path)
    weights, accs = [], []
    for f, n in enumerate(reader.table_sizes):
        w, a = reader.read(f, 0, n)
        weights.append(w)
        accs.append(a)
    out = dict(ckpt)
    out["model_state"] = {**ckpt["model_state"], WEIGHT_KEY: torch.cat(weights)}
    opt = ckpt.get("optimizer_state")
    if opt is not None and all(a is not None for a in accs):
        out["optimizer_state"] = {**opt, "sparse": {"accumulator": torch.cat(accs)}}
    del out["sharded"]
    return out
