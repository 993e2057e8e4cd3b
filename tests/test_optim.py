"""Sparse optimizers against dense / naive per-row references."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlrmkit.config import ModelConfig
from dlrmkit.model import build_model
from dlrmkit.train.optim import ADAGRAD_EPS, DLRMOptimizer, RowWiseAdagrad, SparseSGD

ROWS, DIM = 12, 3


def _sparse_grad(rows: list[int], seed: int) -> torch.Tensor:
    """An uncoalesced sparse (ROWS, DIM) gradient with the given (possibly repeated) rows."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(len(rows), DIM, generator=g)
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, (ROWS, DIM), check_invariants=True)


def _weight(seed=0) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(seed)))


def test_sparse_sgd_with_duplicate_rows_equals_dense_sgd():
    w = _weight()
    start = w.detach().clone()
    grad = _sparse_grad([3, 1, 3, 7, 3, 1], seed=1)
    assert not grad.is_coalesced()
    w.grad = grad
    SparseSGD(w).step(0.25)
    want = start - 0.25 * grad.to_dense()
    torch.testing.assert_close(w.detach(), want, rtol=1e-6, atol=1e-7)
    untouched = [r for r in range(ROWS) if r not in (1, 3, 7)]
    assert torch.equal(w.detach()[untouched], start[untouched])


def test_sparse_sgd_from_embedding_backward():
    w = _weight(1)
    start = w.detach().clone()
    idx = torch.tensor([[0, 5], [5, 5], [11, 0]])
    coef = torch.randn(3, 2, DIM, generator=torch.Generator().manual_seed(2))
    (F.embedding(idx, w, sparse=True) * coef).sum().backward()
    dense_grad = torch.zeros(ROWS, DIM)
    for (b, f) in np.ndindex(*idx.shape):
        dense_grad[idx[b, f]] += coef[b, f]
    SparseSGD(w).step(0.1)
    torch.testing.assert_close(w.detach(), start - 0.1 * dense_grad, rtol=1e-6, atol=1e-7)


def test_sparse_sgd_dense_grad_and_no_grad():
    w = _weight()
    start = w.detach().clone()
    SparseSGD(w).step(1.0)  # no grad: nothing happens
    assert torch.equal(w.detach(), start)
    w.grad = torch.ones(ROWS, DIM)
    SparseSGD(w).step(0.5)
    torch.testing.assert_close(w.detach(), start - 0.5)


def _naive_rowwise_adagrad(w0: np.ndarray, steps: list[tuple[list[int], np.ndarray]], lrs: list[float]) -> np.ndarray:
    """Per-row loop: acc[r] += mean(g_r^2); w_r -= lr * g_r / (sqrt(acc[r]) + eps), g_r summed per step."""
    w = w0.astype(np.float64).copy()
    acc = np.zeros(w.shape[0])
    for (rows, values), lr in zip(steps, lrs):
        g = {}
        for r, v in zip(rows, values):
            g[r] = g.get(r, 0.0) + v.astype(np.float64)
        for r, gr in g.items():
            acc[r] += np.mean(gr ** 2)
            w[r] -= lr * gr / (np.sqrt(acc[r]) + 1e-10)
    return w


def test_rowwise_adagrad_equals_naive_loop():
    w = _weight(3)
    w0 = w.detach().numpy().copy()
    opt = RowWiseAdagrad(w)
    assert opt.eps == ADAGRAD_EPS == 1e-10
    steps, lrs = [], [0.1, 0.05, 0.2, 0.1]
    row_sets = [[2, 2, 5], [5, 9, 2, 9, 9], [0, 11], [2, 5, 5, 0]]
    for k, (rows, lr) in enumerate(zip(row_sets, lrs)):
        grad = _sparse_grad(rows, seed=10 + k)
        steps.append((rows, grad._values().numpy().copy()))
        w.grad = grad
        opt.step(lr)
    want = _naive_rowwise_adagrad(w0, steps, lrs)
    np.testing.assert_allclose(w.detach().numpy(), want, rtol=1e-5, atol=1e-6)
    # the accumulator holds the per-row sums of mean squared gradients
    assert opt.accumulator[[1, 3, 4]].abs().sum() == 0
    assert torch.all(opt.accumulator[[0, 2, 5, 9, 11]] > 0)


def test_rowwise_adagrad_dense_grad_updates_every_row():
    w = _weight(4)
    w0 = w.detach().numpy().copy()
    g = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(5))
    w.grad = g.clone()
    opt = RowWiseAdagrad(w)
    opt.step(0.3)
    want = _naive_rowwise_adagrad(w0, [(list(range(ROWS)), g.numpy())], [0.3])
    np.testing.assert_allclose(w.detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_rowwise_adagrad_state_round_trip():
    w1, w2 = _weight(6), _weight(6)
    o1, o2 = RowWiseAdagrad(w1), RowWiseAdagrad(w2)
    w1.grad = _sparse_grad([1, 4, 4], 20)
    o1.step(0.1)
    with torch.no_grad():
        w2.copy_(w1)
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))
    g = _sparse_grad([4, 8], 21)
    w1.grad, w2.grad = g, g.clone()
    o1.step(0.1)
    o2.step(0.1)
    assert torch.equal(w1, w2)


CFG = ModelConfig((6, 4, 5), 4, (3, 8, 4), (6, 1))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(8, 3, generator=g)
    idx = torch.stack([torch.randint(0, n, (8,), generator=g) for n in CFG.table_sizes], 1)
    return dense, idx, torch.randint(0, 2, (8,), generator=g).float()


def test_dlrm_optimizer_sgd_equals_plain_dense_sgd():
    sparse_model = build_model(CFG, seed=0)
    dense_model = build_model(CFG, seed=0, sparse_grad=False)
    opt = DLRMOptimizer(sparse_model, "sgd")
    ref = torch.optim.SGD(dense_model.parameters(), lr=0.1)
    for step, lr in enumerate([0.1, 0.05, 0.2]):
        dense, idx, y = _batch(step)
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(sparse_model(dense, idx), y).backward()
        opt.step(lr)
        for group in ref.param_groups:
            group["lr"] = lr
        ref.zero_grad()
        F.binary_cross_entropy_with_logits(dense_model(dense, idx), y).backward()
        ref.step()
    a, b = sparse_model.state_dict(), dense_model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.equal(a["embeddings.weight"], build_model(CFG, seed=0).state_dict()["embeddings.weight"])


def test_dlrm_optimizer_adagrad_dense_layers_follow_torch_adagrad():
    model = build_model(CFG, seed=1)
    ref_model = build_model(CFG, seed=1)
    opt = DLRMOptimizer(model, "adagrad")
    ref = torch.optim.Adagrad(ref_model.dense_parameters(), lr=0.07, eps=1e-10)
    for step in range(3):
        dense, idx, y = _batch(10 + step)
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(dense, idx), y).backward()
        opt.step(0.07)
        ref.zero_grad()
        ref_model.embeddings.weight.grad = None
        F.binary_cross_entropy_with_logits(ref_model(dense, idx), y).backward()
        ref.step()
        ref_model.embeddings.weight.grad = None
        # keep the tables equal so the dense gradients stay comparable
        with torch.no_grad():
            ref_model.embeddings.weight.copy_(model.embeddings.weight)
    a, b = model.state_dict(), ref_model.state_dict()
    for k in a:
        if not k.startswith("embeddings."):
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_dlrm_optimizer_rejects_mismatched_state():
    model = build_model(CFG, seed=0)
    state = DLRMOptimizer(model, "sgd").state_dict()
    with pytest.raises(ValueError):
        DLRMOptimizer(model, "adagrad").load_state_dict(state)
    with pytest.raises(ValueError):
        DLRMOptimizer(model, "adam")
