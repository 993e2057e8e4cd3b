"""Feature interactions: pairwise dot products, or concatenation.

Shapes: B batch, N = F + 1 vectors (the bottom MLP's output first, then the F pooled
embeddings), D embedding dim.
"""

from __future__ import annotations

import torch
from torch import nn


def dot_pairs(num_vectors: int, self_interaction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j), j < i (j <= i with self-interaction), in the DLRM reference's order."""
    offset = 0 if self_interaction else -1
    rows, cols = torch.tril_indices(num_vectors, num_vectors, offset=offset)
    return rows, cols


class DotInteraction(nn.Module):
    """[x, <v_i, v_j> for each pair]: the dense vector followed by the lower triangle of the Gram matrix."""

    def __init__(self, num_vectors: int, self_interaction: bool):
        super().__init__()
        rows, cols = dot_pairs(num_vectors, self_interaction)
        # Flat positions in the (N, N) Gram matrix, built once.
        self.register_buffer("flat_index", rows * num_vectors + cols, persistent=False)
        self.num_vectors = num_vectors

    def output_dim(self, dim: int) -> int:
        return dim + self.flat_index.numel()

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """dense (B, D), pooled (B, F, D) -> (B, D + num_pairs)."""
        vectors = torch.cat([dense.unsqueeze(1), pooled], dim=1)  # (B, N, D)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))  # (B, N, N)
        pairs = gram.flatten(1).index_select(1, self.flat_index)  # (B, num_pairs)
        return torch.cat([dense, pairs], dim=1)


class CatInteraction(nn.Module):
    """[x, v_1, ..., v_F]: all vectors concatenated."""

    def __init__(self, num_vectors: int):
        super().__init__()
        self.num_vectors = num_vectors

    def output_dim(self, dim: int, dense_dim: int) -> int:
        return dense_dim + (self.num_vectors - 1) * dim

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """dense (B, Dd), pooled (B, F, D) -> (B, Dd + F * D)."""
        return torch.cat([dense, pooled.flatten(1)], dim=1)
