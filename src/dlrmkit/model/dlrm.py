"""The DLRM: sparse arch (embedding tables), dense arch (bottom MLP), interaction, over arch (top MLP).

Shapes: B batch, Nd dense features, F tables, D embedding dim.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrmkit.config import ModelConfig
from dlrmkit.model.embedding import EmbeddingTables
from dlrmkit.model.interaction import CatInteraction, DotInteraction
from dlrmkit.model.mlp import MLP


class DLRM(nn.Module):
    """Tensors in, logits out: ``model(dense, indices[, offsets]) -> (B,)`` logits (no sigmoid)."""

    def __init__(self, table_sizes: tuple[int, ...], embedding_dim: int, bottom_mlp: tuple[int, ...],
                 top_mlp: tuple[int, ...], interaction: str = "dot", interaction_self: bool = False,
                 sparse_grad: bool = True, seed: int | None = None, embeddings: nn.Module | None = None):
        """``embeddings``: a module that stands in for the tables (same call, (B, F, D) out), e.g.
        tables sharded across processes; by default one `EmbeddingTables` initialized from ``seed``."""
        super().__init__()
        num_vectors = len(table_sizes) + 1
        self.embeddings = embeddings if embeddings is not None else \
            EmbeddingTables(table_sizes, embedding_dim, sparse_grad, seed)
        self.bottom = MLP(bottom_mlp, relu_last=True)
        if interaction == "dot":
            self.interaction = DotInteraction(num_vectors, interaction_self)
            top_in = self.interaction.output_dim(embedding_dim)
        elif interaction == "cat":
            self.interaction = CatInteraction(num_vectors)
            top_in = self.interaction.output_dim(embedding_dim, bottom_mlp[-1])
        else:
            raise ValueError(f"unknown interaction {interaction!r}")
        self.top = MLP((top_in,) + tuple(top_mlp), relu_last=False)

    def forward(self, dense: torch.Tensor, indices: torch.Tensor,
                offsets: torch.Tensor | None = None) -> torch.Tensor:
        """dense (B, Nd) float, indices (B, F) or flat with offsets (F*B,) -> logits (B,)."""
        x = self.bottom(dense)  # (B, D)
        pooled = self.embeddings(indices, offsets)  # (B, F, D)
        return self.top(self.interaction(x, pooled)).squeeze(1)  # (B,)

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("embeddings.")]


def build_model(cfg: ModelConfig, seed: int | None = None, sparse_grad: bool = True,
                embeddings: nn.Module | None = None, init_tables: bool = True) -> DLRM:
    """A DLRM for ``cfg``, initialized from ``seed`` when given: the tables from (seed, table, row)
    alone, the MLPs from torch's generator seeded with ``seed``, so a process that builds only
    some of the tables (``embeddings``) gets the same MLPs and the same rows. ``init_tables=False``
    leaves the tables uninitialized, for loading weights into (no time, no memory touched)."""
    if seed is not None:
        torch.manual_seed(seed)
    if embeddings is None and not init_tables:
        embeddings = EmbeddingTables(cfg.effective_table_sizes, cfg.embedding_dim, sparse_grad, init=False)
    return DLRM(cfg.effective_table_sizes, cfg.embedding_dim, cfg.bottom_mlp, cfg.top_mlp,
                cfg.interaction, cfg.interaction_self, sparse_grad, seed, embeddings)
