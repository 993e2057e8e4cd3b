"""Shared by the quantization tests: a Kaggle-shaped set of small tables, random pairs, and the
derived float32 rounding bounds (u = 2**-24, float32's unit roundoff)."""

from __future__ import annotations

import torch

from dlrmkit.config import KAGGLE_CARDINALITIES, ModelConfig

U = 2.0 ** -24  # float32 unit roundoff (round to nearest)
SMALL_KAGGLE = tuple(max(3, c // 20_000) for c in KAGGLE_CARDINALITIES)  # Kaggle's shape, 3..505 rows


def random_inputs(cfg: ModelConfig, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    dense = torch.log1p(torch.rand(batch, cfg.num_dense, generator=g) * 100)  # (B, Nd) like log(1+x)
    indices = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in cfg.table_sizes], dim=1)  # (B, F)
    return dense, indices


def quantize_rounding(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Float32 rounding a dequantized element may add to the half step (float64, elementwise).

    In units of the step s: the code rounds t = (w - lo) / s (row-wise: 2 roundings of values
    <= 255, so t is off by <= 510 u) or t = w / s + 127.5 (per table: <= 127.5 u + 255 u); per
    table the bias -127.5 s is itself rounded (<= 127.5 u). Dequantizing, code * s (<= 255 u)
    plus bias rounds once more, by u * |result| <= u * (|w| + s / 2). Either scheme: below
    766.5 u * s + u * |w|, so 768 u * s + u * |w| (which also covers second-order terms).
    """
    return U * (768 * scale + w.abs())


def eval_rounding(scale: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Error of computing code * scale + bias in float32, with or without an FMA, against the
    exact value: the product (code <= 255) and the sum round once each."""
    return U * (255 * scale + value.abs())


def assert_within(got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor, what: str) -> None:
    err = (got.double() - want).abs()
    worst = int((err - tol).argmax())
    assert bool((err <= tol).all()), f"{what}: |error| {err.flatten()[worst]:.6g} > {tol.flatten()[worst]:.6g}"
