"""A deliberately naive float64 DLRM, the reference the tests compare dlrmkit's model against.

Written from the DLRM paper / reference code's definition, not from dlrmkit's implementation:
explicit Python loops over tables, bag members and feature pairs; no bmm, no tril_indices, no
fused tables, no embedding_bag.

    x      = bottom MLP(dense), ReLU after every layer
    v_0    = x; v_f = sum of table f-1's rows in the sample's bag (one row for one-hot)
    dot    : z = [x, <v_i, v_j> for i in range(N) for j in range(i)]    (j <= i with self-interaction)
    cat    : z = [x, v_1, ..., v_F]
    logit  = top MLP(z), ReLU after every layer but the last
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class NaiveParams:
    """float64 leaf tensors (requires_grad) copied out of a dlrmkit DLRM."""

    bottom: list[tuple[torch.Tensor, torch.Tensor]]  # (W (out, in), b (out,)) per Linear layer
    top: list[tuple[torch.Tensor, torch.Tensor]]
    tables: list[torch.Tensor]  # table f: (rows_f, D)

    def leaves(self) -> list[torch.Tensor]:
        out = []
        for w, b in self.bottom + self.top:
            out += [w, b]
        return out + list(self.tables)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().to(torch.float64).requires_grad_(True)


def _linears(mlp: nn.Module) -> list[nn.Linear]:
    return [m for m in mlp.modules() if isinstance(m, nn.Linear)]


def params_from_model(model) -> NaiveParams:
    """Copy a dlrmkit DLRM's weights into independent float64 leaves."""
    bottom = [(_leaf(l.weight), _leaf(l.bias)) for l in _linears(model.bottom)]
    top = [(_leaf(l.weight), _leaf(l.bias)) for l in _linears(model.top)]
    tables = [_leaf(model.embeddings.table(f)) for f in range(len(model.embeddings.table_sizes))]
    return NaiveParams(bottom, top, tables)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y[n, o] = b[o] + sum_i x[n, i] w[o, i]."""
    return x @ w.t() + b


def mlp(x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]], relu_last: bool) -> torch.Tensor:
    for k, (w, b) in enumerate(layers):
        x = linear(x, w, b)
        if relu_last or k < len(layers) - 1:
            x = torch.clamp(x, min=0.0)
    return x


def pooled_one_hot(tables: list[torch.Tensor], indices: torch.Tensor) -> list[torch.Tensor]:
    """indices (B, F) -> F tensors (B, D): row indices[b, f] of table f, sample by sample."""
    batch = indices.shape[0]
    out = []
    for f, table in enumerate(tables):
        rows = [table[int(indices[b, f])] for b in range(batch)]
        out.append(torch.stack(rows))
    return out


def pooled_bags(tables: list[torch.Tensor], bags: list[list[list[int]]]) -> list[torch.Tensor]:
    """bags[f][b] = list of row indices of table f for sample b -> F tensors (B, D), sum pooled.

    An empty bag pools to the zero vector.
    """
    out = []
    for f, table in enumerate(tables):
        vecs = []
        for bag in bags[f]:
            acc = torch.zeros(table.shape[1], dtype=table.dtype)
            for r in bag:
                acc = acc + table[r]
            vecs.append(acc)
        out.append(torch.stack(vecs))
    return out


def interact(x: torch.Tensor, pooled: list[torch.Tensor], interaction: str, self_interaction: bool) -> torch.Tensor:
    if interaction == "cat":
        return torch.cat([x] + pooled, dim=1)
    assert interaction == "dot"
    vectors = [x] + pooled  # v_0 .. v_F
    feats = [x]
    n = len(vectors)
    for i in range(n):
        for j in range(i + 1 if self_interaction else i):
            feats.append((vectors[i] * vectors[j]).sum(dim=1, keepdim=True))
    return torch.cat(feats, dim=1)


def forward(params: NaiveParams, dense: torch.Tensor, indices: torch.Tensor | None = None, *,
            bags: list[list[list[int]]] | None = None, interaction: str = "dot",
            self_interaction: bool = False) -> torch.Tensor:
    """Logits (B,) in float64, from one-hot ``indices`` (B, F) or multi-hot ``bags``."""
    x = mlp(dense.to(torch.float64), params.bottom, relu_last=True)
    if bags is None:
        pooled = pooled_one_hot(params.tables, indices)
    else:
        pooled = pooled_bags(params.tables, bags)
    z = interact(x, pooled, interaction, self_interaction)
    return mlp(z, params.top, relu_last=False)[:, 0]


def bags_to_flat(bags: list[list[list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """dlrmkit's multi-hot layout: bags table after table, offsets (F*B,) the start of each bag."""
    flat, offsets = [], []
    for table_bags in bags:
        for bag in table_bags:
            offsets.append(len(flat))
            flat.extend(bag)
    return torch.tensor(flat, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64)


def reference_state(model) -> dict:
    """A dlrmkit model's weights in the DLRM reference's key layout (emb_l.<i>.weight,
    bot_l.<j>.weight/bias, top_l.<j>.weight/bias), as ``dlrm_s_pytorch.py --save-model`` writes them."""
    state = {}
    for i in range(len(model.embeddings.table_sizes)):
        state[f"emb_l.{i}.weight"] = model.embeddings.table(i).detach().clone()
    for prefix, mlp in (("bot_l", model.bottom), ("top_l", model.top)):
        for key, value in mlp.state_dict().items():
            state[f"{prefix}.{key}"] = value.clone()
    return state
