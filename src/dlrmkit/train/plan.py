"""Which process holds which rows of which embedding table: a pure function of the table sizes,
the number of processes and the sharding policy.

- table-wise: each table whole on one rank; tables go largest first to the least-loaded rank;
- row-wise: each table cut into ``world_size`` contiguous row ranges, one per rank;
- auto: tables larger than ``row_wise_min_rows`` (default: an even share of all rows,
  ``ceil(total / world_size)``, i.e. a table too big for one rank's share) go row-wise, the
  rest table-wise on top of that load.

The fused row space is every table's rows one after another (table f starts at
``table_starts[f]``), as in the single-process `EmbeddingTables`; a shard is a contiguous
interval of it, so routing a lookup is one ``searchsorted``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlrmkit.config import SHARDINGS


@dataclass(frozen=True)
class Shard:
    table: int
    row_lo: int  # first row of the table held here
    row_hi: int  # one past the last
    rank: int

    @property
    def rows(self) -> int:
        return self.row_hi - self.row_lo


@dataclass(frozen=True)
class ShardPlan:
    table_sizes: tuple[int, ...]
    world_size: int
    shards: tuple[Shard, ...]  # each rank's shards in (table, row_lo) order, ranks in order
    sharding: str = "auto"

    def local(self, rank: int) -> tuple[Shard, ...]:
        """The shards ``rank`` holds, in the order their rows sit in its local weight."""
        return tuple(s for s in self.shards if s.rank == rank)

    def rows_on(self, rank: int) -> int:
        return sum(s.rows for s in self.local(rank))

    def table_starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.table_sizes[:-1], dtype=np.int64)]).astype(np.int64)

    def routes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, ranks, local_bases), sorted by start: shard k holds fused rows [starts[k],
        starts[k+1]) on rank ranks[k], at local row ``fused - starts[k] + local_bases[k]``."""
        table_starts = self.table_starts()
        base: dict[int, int] = {}
        entries = []
        for s in self.shards:
            entries.append((int(table_starts[s.table]) + s.row_lo, s.rank, base.get(s.rank, 0)))
            base[s.rank] = base.get(s.rank, 0) + s.rows
        entries.sort()
        starts, ranks, bases = (np.array(col, dtype=np.int64) for col in zip(*entries))
        return starts, ranks, bases

    def describe(self) -> str:
        parts = []
        for r in range(self.world_size):
            mine = self.local(r)
            whole = sum(1 for s in mine if s.rows == self.table_sizes[s.table])
            parts.append(f"rank {r}: {self.rows_on(r):,} rows ({whole} whole tables, {len(mine) - whole} row ranges)")
        return f"{self.sharding} sharding over {self.world_size} ranks; " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {"table_sizes": list(self.table_sizes), "world_size": self.world_size, "sharding": self.sharding,
                "shards": [[s.table, s.row_lo, s.row_hi, s.rank] for s in self.shards]}

    @classmethod
    def from_dict(cls, d: dict) -> "ShardPlan":
        return cls(tuple(d["table_sizes"]), d["world_size"], tuple(Shard(*s) for s in d["shards"]), d["sharding"])


def plan_shards(table_sizes: tuple[int, ...], world_size: int, sharding: str = "auto",
                row_wise_min_rows: int | None = None) -> ShardPlan:
    """Place every row of every table on exactly one rank (see the module docstring)."""
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    total = sum(table_sizes)
    if sharding == "table-wise":
        row_wise = set()
    elif sharding == "row-wise":
        row_wise = set(range(len(table_sizes)))
    else:
        limit = row_wise_min_rows if row_wise_min_rows is not None else -(-total // world_size)
        row_wise = {f for f, n in enumerate(table_sizes) if n > limit and world_size > 1}
    load = [0] * world_size
    shards: list[Shard] = []
    for f in sorted(row_wise):
        n = table_sizes[f]
        for r in range(world_size):
            lo, hi = n * r // world_size, n * (r + 1) // world_size
            if hi > lo:
                shards.append(Shard(f, lo, hi, r))
                load[r] += hi - lo
    whole = sorted((f for f in range(len(table_sizes)) if f not in row_wise), key=lambda f: (-table_sizes[f], f))
    for f in whole:
        r = min(range(world_size), key=lambda r: (load[r], r))
        shards.append(Shard(f, 0, table_sizes[f], r))
        load[r] += table_sizes[f]
    shards.sort(key=lambda s: (s.rank, s.table, s.row_lo))
    return ShardPlan(tuple(table_sizes), world_size, tuple(shards), sharding)
