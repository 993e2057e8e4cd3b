"""dlrmkit's DLRM against the naive float64 reference in naive_dlrm.py: forward and gradients."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import naive_dlrm as naive
from dlrmkit.config import ModelConfig
from dlrmkit.model import DLRM, build_model
from dlrmkit.model.embedding import EmbeddingTables

TABLES = (5, 3, 7, 2)  # small tables, so a batch of 9 repeats rows
BATCH = 9

ARCHS = {
    "dot": ModelConfig(TABLES, 4, (6, 8, 4), (12, 6, 1), interaction="dot"),
    "dot_self": ModelConfig(TABLES, 4, (6, 8, 4), (12, 6, 1), interaction="dot", interaction_self=True),
    # cat lets the bottom MLP end in a width other than the embedding dim
    "cat": ModelConfig(TABLES, 4, (6, 8, 5), (10, 1), interaction="cat"),
}


def _inputs(cfg: ModelConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(BATCH, cfg.num_dense, generator=g)
    indices = torch.stack([torch.randint(0, t, (BATCH,), generator=g) for t in cfg.table_sizes], dim=1)
    labels = torch.randint(0, 2, (BATCH,), generator=g).double()
    return dense, indices, labels


def _model(cfg: ModelConfig, seed: int = 0) -> DLRM:
    model = build_model(cfg, seed=seed)
    # Non-zero, distinct biases and larger tables values make every term matter.
    with torch.no_grad():
        model.embeddings.weight.mul_(3.0)
    return model


def _naive_forward(params, cfg, dense, indices=None, bags=None):
    return naive.forward(params, dense, indices, bags=bags, interaction=cfg.interaction,
                         self_interaction=cfg.interaction_self)


def _linears(mlp):
    return [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_top_mlp_input_width(arch):
    cfg = ARCHS[arch]
    model = build_model(cfg, seed=0)
    n = len(cfg.table_sizes) + 1
    expected = {"dot": cfg.embedding_dim + n * (n - 1) // 2,
                "dot_self": cfg.embedding_dim + n * (n + 1) // 2,
                "cat": cfg.bottom_mlp[-1] + len(cfg.table_sizes) * cfg.embedding_dim}[arch]
    assert _linears(model.top)[0].in_features == expected
    assert [l.out_features for l in _linears(model.top)] == list(cfg.top_mlp)
    assert [(l.in_features, l.out_features) for l in _linears(model.bottom)] == \
        list(zip(cfg.bottom_mlp[:-1], cfg.bottom_mlp[1:]))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_forward_float64_matches_naive(arch):
    cfg = ARCHS[arch]
    model = _model(cfg).double()
    dense, indices, _ = _inputs(cfg)
    params = naive.params_from_model(model)
    with torch.no_grad():
        got = model(dense.double(), indices)
    want = _naive_forward(params, cfg, dense, indices).detach()
    assert got.shape == (BATCH,)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # The comparison is not vacuous: logits vary across the batch.
    assert want.std() > 1e-3


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_forward_float32_matches_naive(arch):
    cfg = ARCHS[arch]
    model = _model(cfg)
    dense, indices, _ = _inputs(cfg, seed=1)
    params = naive.params_from_model(model)  # the same float32 weights, widened to float64
    with torch.no_grad():
        got = model(dense, indices)
    want = _naive_forward(params, cfg, dense, indices).detach()
    assert got.dtype == torch.float32
    # float32 rounding through three short layers: a few hundred ulps of the values' scale.
    eps32 = torch.finfo(torch.float32).eps
    scale = 1.0 + want.abs().max().item()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=300 * eps32 * scale)


def _model_grads(model: DLRM) -> dict[str, torch.Tensor]:
    grads = {}
    for k, lin in enumerate(_linears(model.bottom)):
        grads[f"bottom{k}.w"], grads[f"bottom{k}.b"] = lin.weight.grad, lin.bias.grad
    for k, lin in enumerate(_linears(model.top)):
        grads[f"top{k}.w"], grads[f"top{k}.b"] = lin.weight.grad, lin.bias.grad
    g = model.embeddings.weight.grad
    g = g.to_dense() if g.is_sparse else g
    start = 0
    for f, n in enumerate(model.embeddings.table_sizes):
        grads[f"table{f}"] = g[start:start + n]
        start += n
    return grads


def _naive_grads(params: naive.NaiveParams, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    leaves = params.leaves()
    gs = torch.autograd.grad(loss, leaves)
    names = []
    for k in range(len(params.bottom)):
        names += [f"bottom{k}.w", f"bottom{k}.b"]
    for k in range(len(params.top)):
        names += [f"top{k}.w", f"top{k}.b"]
    names += [f"table{f}" for f in range(len(params.tables))]
    return dict(zip(names, gs))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_gradients_match_naive_autograd(arch):
    cfg = ARCHS[arch]
    model = _model(cfg, seed=2).double()
    dense, indices, labels = _inputs(cfg, seed=2)
    params = naive.params_from_model(model)

    loss = F.binary_cross_entropy_with_logits(model(dense.double(), indices), labels, reduction="sum")
    loss.backward()
    got = _model_grads(model)
    assert model.embeddings.weight.grad.is_sparse  # tables get sparse gradients by default

    naive_loss = F.binary_cross_entropy_with_logits(_naive_forward(params, cfg, dense, indices), labels,
                                                    reduction="sum")
    torch.testing.assert_close(loss.detach(), naive_loss.detach(), rtol=1e-12, atol=1e-12)
    want = _naive_grads(params, naive_loss)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    # Touched rows have gradients, untouched rows none: the table comparison is meaningful.
    for f in range(len(cfg.table_sizes)):
        touched = set(indices[:, f].tolist())
        for r in range(cfg.table_sizes[f]):
            nonzero = bool(want[f"table{f}"][r].abs().sum() > 0)
            assert nonzero == (r in touched), (f, r)


def test_gradients_match_finite_differences():
    """Independent of autograd: central differences of the float64 model's summed BCE loss."""
    cfg = ARCHS["dot_self"]
    model = _model(cfg, seed=3).double()
    model.embeddings.sparse_grad = False
    dense, indices, labels = _inputs(cfg, seed=3)

    def loss_fn():
        return F.binary_cross_entropy_with_logits(model(dense.double(), indices), labels, reduction="sum")

    loss_fn().backward()
    g = torch.Generator().manual_seed(0)
    h = 1e-6
    checked = 0
    for name, p in model.named_parameters():
        flat = p.data.view(-1)
        grad = p.grad.view(-1)
        if name == "embeddings.weight":  # rows actually looked up (first one of each table)
            coords = [(int(model.embeddings.row_offsets[f]) + int(indices[0, f])) * cfg.embedding_dim + d
                      for f in range(len(cfg.table_sizes)) for d in (0, cfg.embedding_dim - 1)]
        else:
            coords = torch.randint(0, flat.numel(), (3,), generator=g).tolist()
        for c in coords:
            old = flat[c].item()
            with torch.no_grad():
                flat[c] = old + h
                up = loss_fn().item()
                flat[c] = old - h
                down = loss_fn().item()
                flat[c] = old
            fd = (up - down) / (2 * h)
            assert abs(fd - grad[c].item()) <= 1e-5 * (1 + abs(fd)), (name, c, fd, grad[c].item())
            checked += 1
    assert checked > 20


def _random_bags(table_sizes, batch, seed, empty=()):
    g = torch.Generator().manual_seed(seed)
    bags = []
    for f, n in enumerate(table_sizes):
        table_bags = []
        for b in range(batch):
            length = 0 if (f, b) in empty else int(torch.randint(1, 5, (1,), generator=g))
            table_bags.append(torch.randint(0, n, (length,), generator=g).tolist())
        bags.append(table_bags)
    return bags


def test_embedding_bags_sum_pooling_with_empty_bags():
    sizes = (5, 3, 7)
    batch = 4
    emb = EmbeddingTables(sizes, 3).double()
    # empty bags: the very first, one in the middle, and the very last
    bags = _random_bags(sizes, batch, seed=5, empty={(0, 0), (1, 2), (2, batch - 1)})
    flat, offsets = naive.bags_to_flat(bags)
    assert offsets.shape == (len(sizes) * batch,)
    with torch.no_grad():
        got = emb(flat, offsets)
    tables = [emb.table(f).detach().clone() for f in range(len(sizes))]
    want = naive.pooled_bags(tables, bags)  # F x (B, D)
    assert got.shape == (batch, len(sizes), 3)
    for f in range(len(sizes)):
        torch.testing.assert_close(got[:, f], want[f], rtol=1e-12, atol=1e-12)
    assert torch.all(got[0, 0] == 0) and torch.all(got[2, 1] == 0) and torch.all(got[batch - 1, 2] == 0)
    # a bag with a repeated row counts it twice
    assert any(len(set(bag)) < len(bag) for tb in bags for bag in tb)


def test_embedding_table_views_partition_the_fused_weight():
    sizes = (5, 3, 7)
    emb = EmbeddingTables(sizes, 2)
    assert emb.weight.shape == (sum(sizes), 2)
    seen = torch.cat([emb.table(f) for f in range(len(sizes))])
    assert torch.equal(seen, emb.weight)
    # each table initialized within +-1/sqrt(rows), as the DLRM reference does
    for f, n in enumerate(sizes):
        assert emb.table(f).abs().max() <= n ** -0.5


@pytest.mark.parametrize("arch", ["dot", "cat"])
def test_multi_hot_forward_and_gradients_match_naive(arch):
    cfg = ARCHS[arch]
    model = _model(cfg, seed=4).double()
    batch = 5
    bags = _random_bags(cfg.table_sizes, batch, seed=6, empty={(1, 0), (3, batch - 1)})
    flat, offsets = naive.bags_to_flat(bags)
    g = torch.Generator().manual_seed(7)
    dense = torch.randn(batch, cfg.num_dense, generator=g, dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    params = naive.params_from_model(model)

    logits = model(dense, flat, offsets)
    want_logits = _naive_forward(params, cfg, dense, bags=bags)
    torch.testing.assert_close(logits.detach(), want_logits.detach(), rtol=1e-12, atol=1e-12)

    F.binary_cross_entropy_with_logits(logits, labels, reduction="sum").backward()
    want = _naive_grads(params, F.binary_cross_entropy_with_logits(want_logits, labels, reduction="sum"))
    got = _model_grads(model)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def test_bags_of_one_equal_one_hot():
    cfg = ARCHS["dot"]
    model = _model(cfg, seed=8)
    dense, indices, _ = _inputs(cfg, seed=8)
    bags = [[[int(indices[b, f])] for b in range(BATCH)] for f in range(len(cfg.table_sizes))]
    flat, offsets = naive.bags_to_flat(bags)
    with torch.no_grad():
        torch.testing.assert_close(model(dense, flat, offsets), model(dense, indices), rtol=1e-6, atol=1e-6)


def test_dense_parameters_exclude_tables():
    model = _model(ARCHS["dot"])
    dense_ids = {id(p) for p in model.dense_parameters()}
    assert id(model.embeddings.weight) not in dense_ids
    assert len(dense_ids) == len(list(model.parameters())) - 1


def test_build_model_seed_is_deterministic():
    a, b = build_model(ARCHS["dot"], seed=11), build_model(ARCHS["dot"], seed=11)
    c = build_model(ARCHS["dot"], seed=12)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_max_index_range_caps_tables():
    cfg = ModelConfig((100, 3, 50), 4, (6, 4), (1,), max_index_range=10)
    model = build_model(cfg, seed=0)
    assert model.embeddings.table_sizes == (10, 3, 10)
    assert model.embeddings.weight.shape == (23, 4)
