"""Embedding tables sharded across processes (model parallel), exchanged by all-to-all: the DLRM
paper's "butterfly shuffle".

Each rank holds the rows of its shards (`ShardPlan.local`) in one local weight and sees only its
part of each global batch. A forward pass:

1. route every (sample, table) lookup of the local batch to the rank holding that row;
2. all-to-all the counts, then the local row numbers, to their holders;
3. each holder looks its rows up (``F.embedding``, sparse gradient on its local weight);
4. all-to-all the vectors back (an autograd function: in backward the gradients travel back the
   same way, so each holder's sparse gradient holds every rank's contributions to its rows).

The module stands in for `EmbeddingTables` inside a `DLRM`: one index per table in, (B, F, D) out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlrmkit.errors import ConfigError
from dlrmkit.model.embedding import init_rows
from dlrmkit.train.comm import AllToAll, Comm
from dlrmkit.train.plan import ShardPlan


class ShardedEmbeddingTables(nn.Module):
    def __init__(self, plan: ShardPlan, comm: Comm, dim: int, seed: int, sparse_grad: bool = True):
        super().__init__()
        self.plan = plan
        self.comm = comm
        self.table_sizes = plan.table_sizes
        self.dim = dim
        self.sparse_grad = sparse_grad
        self.local_shards = plan.local(comm.rank)
        weight = torch.empty(sum(s.rows for s in self.local_shards), dim)  # (local rows, D)
        start = 0
        for s in self.local_shards:
            init_rows(weight[start:start + s.rows], seed, s.table, self.table_sizes[s.table], s.row_lo)
            start += s.rows
        self.weight = nn.Parameter(weight.to(comm.device))
        starts, ranks, bases = plan.routes()
        device = comm.device
        self.register_buffer("table_starts", torch.from_numpy(plan.table_starts()).to(device), persistent=False)
        self.register_buffer("route_starts", torch.from_numpy(starts).to(device), persistent=False)
        self.register_buffer("route_ranks", torch.from_numpy(ranks).to(device), persistent=False)
        self.register_buffer("route_bases", torch.from_numpy(bases).to(device), persistent=False)

    def local_row_ranges(self) -> list[tuple[int, int, int, int]]:
        """(table, row_lo, row_hi, local_start) of each local shard."""
        out, start = [], 0
        for s in self.local_shards:
            out.append((s.table, s.row_lo, s.row_hi, start))
            start += s.rows
        return out

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """``indices`` (B, F): one row per table for the local batch -> pooled vectors (B, F, D)."""
        if offsets is not None:
            raise ConfigError("distributed training takes one index per table (one-hot, as Criteo data is); "
                              "multi-hot bags are not supported by sharded tables")
        batch, num_tables = indices.shape
        fused = (indices + self.table_starts).reshape(-1)  # (B*F,)
        k = torch.searchsorted(self.route_starts, fused, right=True) - 1
        dest = self.route_ranks[k]
        local_rows = fused - self.route_starts[k] + self.route_bases[k]
        order = torch.argsort(dest, stable=True)
        send = torch.bincount(dest, minlength=self.comm.world_size)
        recv_counts = self.comm.exchange_counts(send, "exchanging lookup counts")
        send_counts = send.tolist()
        rows = self.comm.all_to_all(local_rows[order], send_counts, recv_counts, "sending rows to their holders",
                                    kind="all_to_all_indices")
        vectors = F.embedding(rows, self.weight, sparse=self.sparse_grad)  # (received lookups, D)
        back = AllToAll.apply(vectors, self.comm, recv_counts, send_counts, "returning embedding vectors")
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0], device=order.device)
        return back[inverse].view(batch, num_tables, self.dim)
