"""Int8 embedding tables: pure quantization primitives and a module with EmbeddingTables' interface.

Storage is FBGEMM's "byte row-wise" layout, one row per table row: D uint8 codes, then a float32
scale and a float32 bias, so that row = codes * scale + bias. Two schemes fill it:

- ``rowwise``: each row's own [min, max] spans the 256 codes (scale = (max - min) / 255);
- ``table``: one symmetric range per table, its largest magnitude M mapped to 127.5
  (scale = M / 127.5, bias = -127.5 * scale), the same for every row of the table.

Either way a dequantized element is within half a step (scale / 2) of the original, and a bag of
n rows within n * scale / 2 per element. Shapes: R rows in all, D dim, B batch, F tables.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dlrmkit.model.embedding import bag_rows

SCHEMES = ("rowwise", "table")
_LEVELS = 255.0


def quantize_rowwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes uint8 (R, D), scale (R,), bias (R,)) with each row's min..max over 0..255."""
    w = weight.detach().float()
    lo, hi = w.min(dim=1).values, w.max(dim=1).values  # (R,)
    scale = (hi - lo) / _LEVELS
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant row: codes 0, exact
    codes = torch.round((w - lo[:, None]) / scale[:, None]).clamp_(0, 255).to(torch.uint8)
    return codes, scale, lo


def table_steps(row_magnitudes: torch.Tensor, table_sizes: tuple[int, ...]) -> torch.Tensor:
    """The per-table scheme's step of every row (R,): its table's max |w| / 127.5, from each
    row's own max |w| (R,); 0 for an all-zero table, whose rows dequantize to 0."""
    sizes = torch.tensor(table_sizes, device=row_magnitudes.device)
    table_of_row = torch.repeat_interleave(torch.arange(len(table_sizes), device=sizes.device), sizes)  # (R,)
    magnitude = torch.zeros(len(table_sizes), device=sizes.device).scatter_reduce(
        0, table_of_row, row_magnitudes, reduce="amax")  # (F,)
    return (magnitude / 127.5)[table_of_row]


def quantize_with_steps(weight: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, bias) of rows (n, D) with the symmetric steps (n,) given: w / step + 127.5."""
    divisor = torch.where(step > 0, step, torch.ones_like(step))
    codes = torch.round(weight.detach().float() / divisor[:, None] + 127.5).clamp_(0, 255).to(torch.uint8)
    return codes, step, -127.5 * step


def quantize_per_table(weight: torch.Tensor, table_sizes: tuple[int, ...]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, bias) per row, one symmetric scale per table: max |w| maps to 127.5."""
    w = weight.detach().float()
    return quantize_with_steps(w, table_steps(w.abs().amax(dim=1), table_sizes))


def pack(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The byte row-wise layout: (R, D + 8) uint8 = codes | scale as 4 bytes | bias as 4 bytes."""
    tail = torch.stack([scale.float(), bias.float()], dim=1).contiguous().view(torch.uint8)  # (R, 8)
    return torch.cat([codes, tail], dim=1).contiguous()


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    codes = packed[:, :-8]
    tail = packed[:, -8:].clone(memory_format=torch.contiguous_format).view(torch.float32)  # (R, 2), own storage
    return codes, tail[:, 0], tail[:, 1]


def dequantize(packed: torch.Tensor) -> torch.Tensor:
    """(R, D) float32 rows back from the packed layout."""
    codes, scale, bias = unpack(packed)
    return codes.float() * scale[:, None] + bias[:, None]


# Rows quantized at a time: the float temporaries are a few copies of a block (128 MiB at dim
# 128), not of the tables, so quantizing needs little memory beyond the packed result.
QUANTIZE_BLOCK_ROWS = 1 << 18


def quantize(weight: torch.Tensor, table_sizes: tuple[int, ...], scheme: str,
             block_rows: int = QUANTIZE_BLOCK_ROWS, rows: torch.Tensor | None = None,
             on_block: Callable[[int], None] | None = None) -> torch.Tensor:
    """Packed int8 rows of a fused table weight under ``scheme`` (rowwise or table), quantized
    ``block_rows`` rows at a time (the same bytes whatever the block). With ``rows`` (R,), the
    rows of ``weight[rows]`` (tables in order), gathered a block at a time. ``on_block(n)`` is
    told of each block's rows as it is packed."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown int8 scheme {scheme!r}; expected one of {SCHEMES}")
    w = weight.detach()
    blocks = [(lo, min(lo + block_rows, w.shape[0])) for lo in range(0, w.shape[0], block_rows)]

    def block(lo: int, hi: int) -> torch.Tensor:
        return w[lo:hi] if rows is None else w[rows[lo:hi]]

    if scheme == "table":  # one pass for the tables' ranges, one for the codes
        steps = table_steps(torch.cat([block(lo, hi).float().abs().amax(dim=1) for lo, hi in blocks]), table_sizes)
    packed = torch.empty(w.shape[0], w.shape[1] + 8, dtype=torch.uint8, device=w.device)
    for lo, hi in blocks:
        parts = quantize_rowwise(block(lo, hi)) if scheme == "rowwise" else \
            quantize_with_steps(block(lo, hi), steps[lo:hi])
        packed[lo:hi] = pack(*parts)
        if on_block is not None:
            on_block(hi - lo)
    return packed


def _fused_kernel_available(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch.ops.quantized, "embedding_bag_byte_rowwise_offsets")


def lookup(packed: torch.Tensor, rows: torch.Tensor, bag_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantized ``rows`` of packed int8 rows, sum-pooled per bag: (bags, D) float32; without
    ``bag_offsets`` each row is its own bag, (N, D). On CPU FBGEMM's fused kernel does it; elsewhere
    only the rows looked up are gathered and dequantized."""
    if _fused_kernel_available(packed.device):
        if bag_offsets is None:
            bag_offsets = torch.arange(rows.shape[0], device=rows.device)
        return torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
            packed, rows, bag_offsets, False, 0, False, None, None, False)
    gathered = dequantize(packed[rows])  # (N, D)
    if bag_offsets is None:
        return gathered
    return F.embedding_bag(torch.arange(rows.shape[0], device=rows.device), gathered, bag_offsets, mode="sum")


class QuantizedEmbeddingTables(nn.Module):
    """Int8 tables, dequantized on lookup; forward as EmbeddingTables' (pooled (B, F, D) float32)."""

    def __init__(self, packed: torch.Tensor, table_sizes: tuple[int, ...], scheme: str):
        super().__init__()
        if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] <= 8:
            raise ValueError(f"packed int8 tables must be (rows, dim + 8) uint8, got {tuple(packed.shape)} {packed.dtype}")
        if packed.shape[0] != sum(table_sizes):
            raise ValueError(f"packed tables hold {packed.shape[0]} rows, the table sizes {sum(table_sizes)}")
        self.table_sizes = tuple(int(t) for t in table_sizes)
        self.dim = packed.shape[1] - 8
        self.scheme = scheme
        self.register_buffer("packed", packed)
        offsets = torch.tensor((0,) + self.table_sizes[:-1], dtype=torch.int64).cumsum(0)
        self.register_buffer("row_offsets", offsets, persistent=False)  # (F,)

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        num_tables = len(self.table_sizes)
        if offsets is None:
            batch = indices.shape[0]
            rows = (indices + self.row_offsets).reshape(-1)  # (B*F,) one row per bag
            return lookup(self.packed, rows).view(batch, num_tables, self.dim)  # (B, F, D)
        batch = offsets.shape[0] // num_tables
        pooled = lookup(self.packed, bag_rows(indices, offsets, self.row_offsets), offsets)  # (F*B, D)
        return pooled.view(num_tables, batch, self.dim).transpose(0, 1)  # (B, F, D)

    def memory_bytes(self) -> int:
        return self.packed.numel()
