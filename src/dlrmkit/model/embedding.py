"""All embedding tables of a DLRM in one fused weight, looked up in one call.

Shapes: B batch, F tables (sparse features), D embedding dim, R total rows of all tables.
Table f owns rows [row_offsets[f], row_offsets[f] + table_sizes[f]) of the fused weight, so one
``F.embedding`` (one-hot) or ``F.embedding_bag`` (multi-hot, sum pooling) serves every table.

Initial values are a pure function of (seed, table, row): rows come in blocks of
``INIT_BLOCK_ROWS``, each drawn from its own generator, so a process holding only some rows of a
table (a shard, in distributed training) draws exactly the values the whole table would hold.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


INIT_BLOCK_ROWS = 1 << 16


def init_rows(out: torch.Tensor, seed: int, table: int, table_rows: int, lo: int) -> torch.Tensor:
    """Fill ``out`` (n, D) with the initial values of rows [lo, lo + n) of ``table`` (of
    ``table_rows`` rows): Uniform(-1/sqrt(table_rows), 1/sqrt(table_rows)), as the DLRM reference
    initializes, drawn block by block from generators seeded by (seed, table, block)."""
    bound = 1.0 / math.sqrt(table_rows)
    hi = lo + out.shape[0]
    generator = torch.Generator()
    for block in range(lo // INIT_BLOCK_ROWS, -(-hi // INIT_BLOCK_ROWS)):
        b_lo = block * INIT_BLOCK_ROWS
        b_hi = min(b_lo + INIT_BLOCK_ROWS, table_rows)
        state = np.random.SeedSequence([seed & 0xFFFFFFFF, table, block]).generate_state(2, np.uint64)[0]
        generator.manual_seed(int(state) & 0x7FFFFFFFFFFFFFFF)
        values = torch.empty(b_hi - b_lo, out.shape[1]).uniform_(-bound, bound, generator=generator)
        take_lo, take_hi = max(lo, b_lo), min(hi, b_hi)
        out[take_lo - lo:take_hi - lo] = values[take_lo - b_lo:take_hi - b_lo]
    return out


class EmbeddingTables(nn.Module):
    def __init__(self, table_sizes: tuple[int, ...], dim: int, sparse_grad: bool = True, seed: int | None = None,
                 init: bool = True):
        """``init=False`` leaves the weight uninitialized (untouched memory), for a caller that
        fills every row, e.g. from a checkpoint."""
        super().__init__()
        self.table_sizes = tuple(table_sizes)
        self.dim = dim
        self.sparse_grad = sparse_grad
        self.weight = nn.Parameter(torch.empty(sum(table_sizes), dim))  # (R, D)
        offsets = torch.tensor((0,) + self.table_sizes[:-1], dtype=torch.int64).cumsum(0)
        self.register_buffer("row_offsets", offsets, persistent=False)  # (F,)
        if init:
            self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Uniform(-1/sqrt(n), 1/sqrt(n)) per table of n rows (see `init_rows`); without a seed,
        one is drawn from torch's global generator."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()))
        start = 0
        for f, n in enumerate(self.table_sizes):
            init_rows(self.weight[start:start + n], seed, f, n, 0)
            start += n

    def table(self, f: int) -> torch.Tensor:
        """A view of table f's rows: (table_sizes[f], D)."""
        start = int(self.row_offsets[f])
        return self.weight[start:start + self.table_sizes[f]]

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled vectors (B, F, D).

        One-hot: ``indices`` (B, F), one row index per table. Multi-hot: ``indices`` (N,) holding
        the bags table after table (all of table 0's B bags, then table 1's, ...), ``offsets``
        (F * B,) the start of each bag in ``indices``; each bag is summed.
        """
        num_tables = len(self.table_sizes)
        if offsets is None:
            rows = indices + self.row_offsets  # (B, F)
            return F.embedding(rows, self.weight, sparse=self.sparse_grad)  # (B, F, D)
        batch = offsets.shape[0] // num_tables
        rows = bag_rows(indices, offsets, self.row_offsets)
        pooled = F.embedding_bag(rows, self.weight, offsets, mode="sum", sparse=self.sparse_grad)  # (F*B, D)
        return pooled.view(num_tables, batch, self.dim).transpose(0, 1)  # (B, F, D)


def bag_rows(indices: torch.Tensor, offsets: torch.Tensor, row_offsets: torch.Tensor) -> torch.Tensor:
    """Fused-table rows of multi-hot ``indices`` (N,) whose bags (``offsets``, F * B of them, table
    after table) each belong to one table: index + that table's first row."""
    num_tables = row_offsets.shape[0]
    batch = offsets.shape[0] // num_tables
    bag_lengths = torch.diff(offsets, append=offsets.new_tensor([indices.shape[0]]))
    table_of_bag = torch.arange(num_tables, device=indices.device).repeat_interleave(batch)
    return indices + row_offsets[table_of_bag].repeat_interleave(bag_lengths)  # (N,)
