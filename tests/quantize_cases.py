"""Inputs shared by the quantization tests: a Kaggle-shaped set of small tables and random pairs."""

from __future__ import annotations

import torch

from dlrmkit.config import KAGGLE_CARDINALITIES, ModelConfig

SMALL_KAGGLE = tuple(max(3, c // 20_000) for c in KAGGLE_CARDINALITIES)  # Kaggle's shape, 3..505 rows


def random_inputs(cfg: ModelConfig, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    dense = torch.log1p(torch.rand(batch, cfg.num_dense, generator=g) * 100)  # (B, Nd) like log(1+x)
    indices = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in cfg.table_sizes], dim=1)  # (B, F)
    return dense, indices
