"""Tables split in two tiers by row: a hot tier on the fast device, a cold tier in host memory.

The fused table must be laid out hot rows first (dlrmkit.infer.placement puts the most looked-up
rows there): rows [0, hot_rows) form the hot tier, the rest the cold tier. The hot tier is a
buffer and moves with ``.to(device)``; the cold tier is deliberately not a registered tensor, so
it stays in host memory (pinned when CUDA is present), and so does ``row_remap`` (4 bytes a row of
the whole table, read on the host only: on a GPU it would take 60% more than a 5% hot tier of
int8 rows at dim 128). Lookups of hot rows run on the device;
cold rows are gathered on the host and copied over (on a GPU: through pinned memory, int8 rows
still packed, dequantized there).
One-hot inputs only (one row per table per pair, as MLPerf's DLRM). Shapes: B, F, D as elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlrmkit.model.quantized import QuantizedEmbeddingTables, dequantize, lookup


def _lookup(part: torch.Tensor, rows: torch.Tensor, packed: bool) -> torch.Tensor:
    """(N, D) float32 vectors of ``rows`` of one tier (FP32 rows, or packed int8 rows)."""
    return lookup(part, rows) if packed else F.embedding(rows, part)


class TieredEmbeddingTables(nn.Module):
    def __init__(self, tables: nn.Module, hot_rows: int):
        super().__init__()
        if not hasattr(tables, "row_remap"):
            raise ValueError("tiers need tables placed by frequency (hot rows first)")
        self.packed = isinstance(tables, QuantizedEmbeddingTables)
        full = tables.packed if self.packed else tables.weight.detach()
        if not 0 < hot_rows <= full.shape[0]:
            raise ValueError(f"hot_rows must be in [1, {full.shape[0]}], got {hot_rows}")
        self.table_sizes = tables.table_sizes
        self.dim = tables.dim
        self.hot_rows = hot_rows
        self.register_buffer("hot", full[:hot_rows].contiguous())
        self.row_remap = tables.row_remap.cpu()
        cold = full[hot_rows:].contiguous()
        self.cold = cold.pin_memory() if torch.cuda.is_available() and cold.numel() else cold

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        if offsets is not None:
            raise NotImplementedError("tiered tables take one-hot inputs (one row per table per pair)")
        batch, num_tables = indices.shape
        flat = indices.reshape(-1).long()  # (B*F,) rows of the placed fused table
        out = torch.empty(flat.shape[0], self.dim, dtype=torch.float32, device=self.hot.device)
        is_hot = flat < self.hot_rows
        hot_at = is_hot.nonzero().squeeze(1)
        out[hot_at] = _lookup(self.hot, flat[hot_at], self.packed)
        cold_at = (~is_hot).nonzero().squeeze(1)
        if cold_at.numel():
            out[cold_at] = self._cold_vectors((flat[cold_at] - self.hot_rows).cpu(), out.device)
        return out.view(batch, num_tables, self.dim)  # (B, F, D)

    def _cold_vectors(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(N, D) float32 vectors of cold ``rows`` on ``device``. For another device than the host
        the rows are gathered into pinned memory and copied asynchronously, int8 rows still packed
        (D + 8 bytes a row instead of 4 D) and dequantized on the device."""
        if device.type == "cpu":
            return _lookup(self.cold, rows, self.packed)
        staging = torch.empty((rows.shape[0], self.cold.shape[1]), dtype=self.cold.dtype, pin_memory=True)
        torch.index_select(self.cold, 0, rows, out=staging)
        moved = staging.to(device, non_blocking=True)
        return dequantize(moved) if self.packed else moved

    def memory_bytes(self) -> dict[str, int]:
        return {"hot": self.hot.numel() * self.hot.element_size(), "cold": self.cold.numel() * self.cold.element_size()}
