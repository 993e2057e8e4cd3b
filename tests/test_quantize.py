"""Int8 inference: the quantization primitives and the int8 table module. Quantized models and their
AUC: tests/test_quantize_accuracy.py; the inference checkpoint: tests/test_inference_checkpoint.py.

Tolerances are derived, not picked. A round-to-nearest quantizer leaves each element within half
a step (scale / 2) of its original; on top of that only float32 rounding is allowed, bounded
operation by operation in ``quantize_cases.quantize_rounding`` and ``eval_rounding`` (u = 2**-24, float32's
unit roundoff). Sums of n rows add float32 summation error, at most n * u * sum |terms|.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dlrmkit.model.quantized as quantized_module
from quantize_cases import U, assert_within, eval_rounding, quantize_rounding
from dlrmkit.model.embedding import EmbeddingTables
from dlrmkit.model.quantized import (QuantizedEmbeddingTables, dequantize, pack, quantize, quantize_per_table,
                                     quantize_rowwise, unpack)

def _exact_rows(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(code * scale + bias in float64, scale per row in float64) of the packed rows."""
    codes, scale, bias = unpack(packed)
    s = scale.double()
    return codes.double() * s[:, None] + bias.double()[:, None], s


def _assert_within_half_step(deq: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> None:
    s = scale.double()[:, None].expand_as(w)
    err = (deq.double() - w.double()).abs()
    bound = s / 2 + quantize_rounding(s, w.double())
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (f"element {np.unravel_index(int(worst), w.shape)}: |error| "
                                         f"{err.flatten()[worst]:.6g} > bound {bound.flatten()[worst]:.6g}")


# --- weights to quantize ----------------------------------------------------------------------

def _mixed(dim: int = 8) -> tuple[torch.Tensor, tuple[int, ...]]:
    """One table per kind of row that can trip a quantizer."""
    g = torch.Generator().manual_seed(11)
    tables = [
        torch.tensor([[0.3] * dim, [-2.0] * dim, [0.0] * dim, [1e30] * dim]),  # constant rows
        torch.randn(5, dim, generator=g) * 1e30,  # huge
        torch.randn(5, dim, generator=g) * 1e-30,  # tiny (float32 normal range)
        -(torch.rand(4, dim, generator=g) + 0.5),  # negative only
        torch.cat([-1 - 1e-6 * torch.rand(1, dim, generator=g),  # negative, a very narrow range
                   1 + 1e-6 * torch.rand(1, dim, generator=g)]),
        torch.rand(3, dim, generator=g) + 1,  # positive only
        torch.randn(6, dim, generator=g) * torch.logspace(-20, 20, 6)[:, None],  # magnitudes 1e-20..1e20
        torch.randn(1, dim, generator=g),  # a one-row table
    ]
    return torch.cat(tables).float(), tuple(t.shape[0] for t in tables)


def _init_like_training(sizes: tuple[int, ...], dim: int, seed: int) -> torch.Tensor:
    tables = EmbeddingTables(sizes, dim, sparse_grad=False, seed=seed)
    return tables.weight.detach().clone()


CASES = {
    "init": lambda: (_init_like_training((10, 20, 7), 16, 0), (10, 20, 7)),
    "mixed": _mixed,
    "one_element": lambda: (torch.tensor([[0.7]]), (1,)),
    "dim_1": lambda: (torch.randn(9, 1, generator=torch.Generator().manual_seed(2)), (4, 5)),
    "wide": lambda: (torch.randn(64, 128, generator=torch.Generator().manual_seed(3)) * 0.05, (40, 24)),
}


def _table_slices(sizes: tuple[int, ...]) -> list[slice]:
    ends = np.cumsum(sizes).tolist()
    return [slice(end - n, end) for n, end in zip(sizes, ends)]


# --- primitives -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_rowwise_round_trip_within_half_a_step(case):
    w, sizes = CASES[case]()
    rows, dim = w.shape
    codes, scale, bias = quantize_rowwise(w)
    assert codes.dtype == torch.uint8 and codes.shape == (rows, dim)
    assert scale.dtype == bias.dtype == torch.float32 and scale.shape == bias.shape == (rows,)
    packed = quantize(w, sizes, "rowwise")
    assert packed.dtype == torch.uint8 and packed.shape == (rows, dim + 8)
    c, s, b = unpack(packed)
    assert torch.equal(c, codes) and torch.equal(s, scale) and torch.equal(b, bias)
    deq = dequantize(packed)
    assert deq.dtype == torch.float32 and deq.shape == w.shape
    _assert_within_half_step(deq, w, s)

    lo, hi = w.double().min(1).values, w.double().max(1).values
    varying = hi > lo
    # the step is the row's range over 255 codes (two roundings), so the bound above is not slack
    span = s.double() * 255
    assert bool(((span - (hi - lo)).abs() <= 2 * U * (1 + U) * (hi - lo))[varying].all())
    # the row's minimum is code 0 and its maximum code 255
    assert bool((codes[varying].min(1).values == 0).all()) and bool((codes[varying].max(1).values == 255).all())
    # a constant row comes back exactly
    assert torch.equal(deq[~varying], w[~varying])


@pytest.mark.parametrize("case", sorted(CASES))
def test_per_table_round_trip_within_half_a_step(case):
    w, sizes = CASES[case]()
    rows, dim = w.shape
    codes, scale, bias = quantize_per_table(w, sizes)
    assert codes.dtype == torch.uint8 and codes.shape == (rows, dim)
    assert scale.dtype == bias.dtype == torch.float32 and scale.shape == bias.shape == (rows,)
    packed = quantize(w, sizes, "table")
    assert packed.dtype == torch.uint8 and packed.shape == (rows, dim + 8)
    c, s, b = unpack(packed)
    assert torch.equal(c, codes) and torch.equal(s, scale) and torch.equal(b, bias)
    _assert_within_half_step(dequantize(packed), w, s)

    # symmetric: the bias is -127.5 steps, exactly as float32 computes it
    assert torch.equal(bias, -127.5 * scale)
    for f, rows_of_f in enumerate(_table_slices(sizes)):
        table, table_scale, table_codes = w[rows_of_f], scale[rows_of_f], codes[rows_of_f]
        assert bool((table_scale == table_scale[0]).all()), f"table {f}: rows with different scales"
        magnitude = float(table.abs().max())
        if magnitude == 0:
            continue  # see test_all_zero_table_comes_back_as_zeros
        # the table's largest magnitude is 127.5 steps (one rounding of M / 127.5) ...
        assert abs(float(table_scale[0]) * 127.5 - magnitude) <= U * magnitude, f"table {f}"
        # ... so +M is code 255 and -M code 0
        assert bool((table_codes[table == magnitude] == 255).all()), f"table {f}"
        assert bool((table_codes[table == -magnitude] == 0).all()), f"table {f}"


@pytest.mark.parametrize("scheme", ["rowwise", "table"])
def test_all_zero_table_comes_back_as_zeros(scheme):
    """A table of zeros (an unused feature, a zeroed-out table) must not come back as anything
    else: its largest magnitude is 0, so its step is 0 and the half-step bound is exactly 0."""
    g = torch.Generator().manual_seed(5)
    sizes = (3, 4, 2)
    w = torch.cat([torch.randn(3, 6, generator=g), torch.zeros(4, 6), torch.randn(2, 6, generator=g)])
    packed = quantize(w, sizes, scheme)
    deq = dequantize(packed)
    assert torch.equal(deq[3:7], torch.zeros(4, 6)), deq[3:7]
    tables = QuantizedEmbeddingTables(packed, sizes, scheme)
    pooled = tables(torch.tensor([[0, 1, 0], [2, 3, 1]]))  # (B, F, D)
    assert torch.equal(pooled[:, 1], torch.zeros(2, 6)), pooled[:, 1]


def test_pack_layout_and_exact_unpack():
    """FBGEMM's byte row-wise layout: D codes, then scale and bias as native float32 bytes."""
    g = torch.Generator().manual_seed(0)
    rows, dim = 7, 5
    codes = torch.randint(0, 256, (rows, dim), dtype=torch.uint8, generator=g)
    scale = torch.tensor([1.5, 0.0, -0.0, 3.4e38, 1e-45, float("inf"), 0.1], dtype=torch.float32)
    bias = torch.tensor([-2.25, 1e-38, -0.0, -3.4e38, float("-inf"), 7.0, -0.3], dtype=torch.float32)
    packed = pack(codes, scale, bias)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, dim + 8) and packed.is_contiguous()
    raw = packed.numpy()
    np.testing.assert_array_equal(raw[:, :dim], codes.numpy())
    np.testing.assert_array_equal(raw[:, dim:dim + 4].copy().view(np.int32).ravel(), scale.numpy().view(np.int32))
    np.testing.assert_array_equal(raw[:, dim + 4:].copy().view(np.int32).ravel(), bias.numpy().view(np.int32))
    c, s, b = unpack(packed)
    assert c.dtype == torch.uint8 and s.dtype == b.dtype == torch.float32
    assert torch.equal(c, codes)
    assert torch.equal(s.view(torch.int32), scale.view(torch.int32))  # bit for bit (-0.0 included)
    assert torch.equal(b.view(torch.int32), bias.view(torch.int32))


def test_unknown_scheme():
    with pytest.raises(ValueError, match="rowwise"):
        quantize(torch.zeros(2, 3), (2,), "int4")


# --- the int8 table module --------------------------------------------------------------------

SIZES = (7, 3, 11, 1, 5)
MAGNITUDES = (0.01, 1.0, 100.0, 1e-3, 10.0)  # per table: bags add rows of very different steps
DIM = 6


def _weights(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, DIM, generator=g) * m for n, m in zip(SIZES, MAGNITUDES)])


def _fp32_tables(w: torch.Tensor) -> EmbeddingTables:
    tables = EmbeddingTables(SIZES, DIM, sparse_grad=False)
    with torch.no_grad():
        tables.weight.copy_(w)
    return tables


def _bags(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Multi-hot input as EmbeddingTables.forward documents it: indices flat, table after table
    (all B bags of table 0, then table 1's ...), offsets (F * B,) the start of each bag; and the
    fused rows of each bag (bags of 0 to 4 rows, repeats allowed)."""
    g = torch.Generator().manual_seed(seed)
    starts = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    indices, offsets, bag_rows = [], [], []
    for f, n in enumerate(SIZES):
        for _ in range(batch):
            length = int(torch.randint(0, 5, (1,), generator=g))
            members = torch.randint(0, n, (length,), generator=g).tolist()
            offsets.append(len(indices))
            indices += members
            bag_rows.append([int(starts[f]) + i for i in members])
    return torch.tensor(indices, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64), bag_rows


def _bag_expectation(packed: torch.Tensor, w: torch.Tensor, bag_rows: list[list[int]], batch: int):
    """Per bag, float64 (B, F, D) arrays: the exact sum of dequantized rows, the bound on a float32
    computation of it, and the bound on its distance to the FP32 tables' float32 sum."""
    exact, s = _exact_rows(packed)
    w64 = w.double()
    shape = (len(SIZES), batch, DIM)
    want, tol_int8, tol_fp32 = (torch.zeros(shape, dtype=torch.float64) for _ in range(3))
    for bag, rows in enumerate(bag_rows):
        f, b = divmod(bag, batch)
        if not rows:
            continue
        n = len(rows)
        r = torch.tensor(rows)
        terms, steps = exact[r], s[r][:, None].expand(-1, DIM)
        want[f, b] = terms.sum(0)
        # each row computed in float32 (eval_rounding), then n float32 additions
        tol_int8[f, b] = eval_rounding(steps, terms).sum(0) + n * U * terms.abs().sum(0)
        # vs FP32: half a step per member, plus both float32 sums (the FP32 tables add exact w)
        tol_fp32[f, b] = (steps / 2 + quantize_rounding(steps, w64[r])).sum(0) + n * U * w64[r].abs().sum(0)
    swap = lambda t: t.transpose(0, 1)  # (F, B, D) -> (B, F, D)
    return swap(want), swap(tol_int8), swap(tol_int8 + tol_fp32)


@pytest.fixture(params=[True, False], ids=["fused", "fallback"])
def kernel(request, monkeypatch):
    """Both lookup paths: FBGEMM's fused byte row-wise bag kernel, and the gather + embedding_bag
    fallback (used off CPU). Without the fused op both would test the fallback."""
    if not quantized_module._fused_kernel_available(torch.device("cpu")):
        pytest.skip("this torch build has no quantized::embedding_bag_byte_rowwise_offsets")
    if not request.param:
        monkeypatch.setattr(quantized_module, "_fused_kernel_available", lambda device: False)
    return request.param


@pytest.mark.parametrize("scheme", ["rowwise", "table"])
def test_one_hot_lookup_is_dequantized_rows(scheme, kernel):
    w = _weights()
    packed = quantize(w, SIZES, scheme)
    tables = QuantizedEmbeddingTables(packed, SIZES, scheme)
    assert tables.dim == DIM and tables.table_sizes == SIZES and tables.memory_bytes() == sum(SIZES) * (DIM + 8)
    g = torch.Generator().manual_seed(1)
    batch = 40
    indices = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in SIZES], dim=1)  # (B, F)
    pooled = tables(indices)
    assert pooled.shape == (batch, len(SIZES), DIM) and pooled.dtype == torch.float32
    rows = indices + torch.tensor(np.concatenate([[0], np.cumsum(SIZES)[:-1]]))  # (B, F) fused rows
    exact, s = _exact_rows(packed)
    steps = s[rows][..., None].expand(-1, -1, DIM)
    assert_within(pooled, exact[rows], eval_rounding(steps, exact[rows]), "lookup vs exact rows")
    # dequantize() computes the same rows (float32 rounding apart)
    assert_within(pooled, dequantize(packed)[rows].double(), 2 * eval_rounding(steps, exact[rows]),
                   "lookup vs dequantize()")
    # and they are within half a step of the FP32 tables' rows
    fp32 = _fp32_tables(w)(indices)
    assert_within(pooled, fp32.double(), steps / 2 + quantize_rounding(steps, fp32.double()),
                   "lookup vs FP32 tables")


@pytest.mark.parametrize("scheme", ["rowwise", "table"])
def test_bags_are_sums_of_dequantized_rows(scheme, kernel):
    w = _weights(seed=3)
    packed = quantize(w, SIZES, scheme)
    tables = QuantizedEmbeddingTables(packed, SIZES, scheme)
    batch = 9
    indices, offsets, bag_rows = _bags(batch, seed=4)
    assert any(not r for r in bag_rows) and any(len(r) == 4 for r in bag_rows)  # empty and full bags
    pooled = tables(indices, offsets)
    assert pooled.shape == (batch, len(SIZES), DIM) and pooled.dtype == torch.float32
    want, tol_int8, tol_vs_fp32 = _bag_expectation(packed, w, bag_rows, batch)
    assert_within(pooled, want, tol_int8, "bags vs exact sums of dequantized rows")
    fp32 = _fp32_tables(w)(indices, offsets)
    assert_within(pooled, fp32.double(), tol_vs_fp32, "bags vs FP32 tables")


@pytest.mark.parametrize("scheme", ["rowwise", "table"])
def test_fused_and_fallback_paths_agree(scheme, monkeypatch):
    if not quantized_module._fused_kernel_available(torch.device("cpu")):
        pytest.skip("this torch build has no quantized::embedding_bag_byte_rowwise_offsets")
    w = _weights(seed=5)
    packed = quantize(w, SIZES, scheme)
    tables = QuantizedEmbeddingTables(packed, SIZES, scheme)
    batch = 12
    indices, offsets, bag_rows = _bags(batch, seed=6)
    one_hot = torch.stack([torch.randint(0, n, (batch,), generator=torch.Generator().manual_seed(7))
                           for n in SIZES], dim=1)
    fused = tables(indices, offsets), tables(one_hot)
    monkeypatch.setattr(quantized_module, "_fused_kernel_available", lambda device: False)
    fallback = tables(indices, offsets), tables(one_hot)
    # each path is within tol_int8 of the exact sums, so they are within twice that of each other
    _, tol_int8, _ = _bag_expectation(packed, w, bag_rows, batch)
    assert_within(fused[0], fallback[0].double(), 2 * tol_int8, "bags: fused vs fallback")
    rows = one_hot + torch.tensor(np.concatenate([[0], np.cumsum(SIZES)[:-1]]))
    exact, s = _exact_rows(packed)
    steps = s[rows][..., None].expand(-1, -1, DIM)
    assert_within(fused[1], fallback[1].double(), 2 * eval_rounding(steps, exact[rows]), "one-hot: fused vs fallback")


@pytest.mark.parametrize("packed, match", [
    (torch.zeros(27, DIM + 8, dtype=torch.float32), "uint8"),
    (torch.zeros(27, DIM + 8, dtype=torch.int8), "uint8"),
    (torch.zeros(27 * (DIM + 8), dtype=torch.uint8), "rows, dim"),
    (torch.zeros(1, 27, DIM + 8, dtype=torch.uint8), "rows, dim"),
    (torch.zeros(27, 8, dtype=torch.uint8), "rows, dim"),
    (torch.zeros(26, DIM + 8, dtype=torch.uint8), "26 rows"),
    (torch.zeros(28, DIM + 8, dtype=torch.uint8), "28 rows"),
], ids=["float32", "int8", "1d", "3d", "no_codes", "too_few_rows", "too_many_rows"])
def test_bad_packed_tables(packed, match):
    assert sum(SIZES) == 27
    with pytest.raises(ValueError, match=match):
        QuantizedEmbeddingTables(packed, SIZES, "rowwise")


@pytest.mark.parametrize("scheme", ["rowwise", "table"])
def test_quantizing_in_blocks_gives_the_same_bytes(scheme):
    """Quantizing a block of rows at a time (bounded memory) packs the bytes one pass packs, and
    the rows given by an order are those of weight[order]."""
    sizes = (5, 17, 1, 9)
    w = torch.randn(sum(sizes), 6, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 33)[:, None]
    whole = quantize(w, sizes, scheme, block_rows=len(w))
    expected = pack(*(quantize_rowwise(w) if scheme == "rowwise" else quantize_per_table(w, sizes)))
    assert torch.equal(whole, expected)
    for block_rows in (1, 4, 7):
        assert torch.equal(quantize(w, sizes, scheme, block_rows=block_rows), whole)
    order = torch.randperm(len(w), generator=torch.Generator().manual_seed(1))
    assert torch.equal(quantize(w, sizes, scheme, block_rows=4, rows=order), quantize(w[order], sizes, scheme))


def test_quantizing_large_tables_shows_progress(capsys):
    """Tables of 4M rows and more show a progress line (rows, rate) while they are quantized;
    smaller ones print nothing."""
    from dlrmkit.infer.quantize import PROGRESS_ROWS, quantize_embeddings
    from dlrmkit.model import DLRM

    for rows, shown in ((PROGRESS_ROWS, True), (1000, False)):
        model = DLRM((rows // 2, rows - rows // 2), 2, (13, 2), (1,), seed=0, sparse_grad=False)
        weight = model.embeddings.weight.detach().clone()
        quantize_embeddings(model, "rowwise")
        assert torch.equal(model.embeddings.packed, quantize(weight, (rows // 2, rows - rows // 2), "rowwise"))
        err = capsys.readouterr().err
        assert ("quantize tables to int8 (rowwise): 4.19M/4.19M rows" in err) == shown and (err == "") != shown
