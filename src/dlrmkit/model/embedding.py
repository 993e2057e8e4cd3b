"""All embedding tables of a DLRM in one fused weight, looked up in one call.

Shapes: B batch, F tables (sparse features), D embedding dim, R total rows of all tables.
Table f owns rows [row_offsets[f], row_offsets[f] + table_sizes[f]) of the fused weight, so one
``F.embedding`` (one-hot) or ``F.embedding_bag`` (multi-hot, sum pooling) serves every table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingTables(nn.Module):
    def __init__(self, table_sizes: tuple[int, ...], dim: int, sparse_grad: bool = True):
        super().__init__()
        self.table_sizes = tuple(table_sizes)
        self.dim = dim
        self.sparse_grad = sparse_grad
        self.weight = nn.Parameter(torch.empty(sum(table_sizes), dim))  # (R, D)
        offsets = torch.tensor((0,) + self.table_sizes[:-1], dtype=torch.int64).cumsum(0)
        self.register_buffer("row_offsets", offsets, persistent=False)  # (F,)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Uniform(-1/sqrt(n), 1/sqrt(n)) per table of n rows, as the DLRM reference initializes."""
        start = 0
        for n in self.table_sizes:
            bound = 1.0 / math.sqrt(n)
            self.weight[start:start + n].uniform_(-bound, bound, generator=generator)
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
