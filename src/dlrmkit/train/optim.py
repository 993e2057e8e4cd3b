"""Optimizers for a DLRM: dense parameters by torch.optim, embedding tables by sparse row updates.

The tables get sparse gradients (only the rows a batch touched); SGD adds them in place and
row-wise Adagrad (the DLRM reference's and TorchRec's) keeps one accumulator per row:
``acc[r] += mean(g_r ** 2); w_r -= lr * g_r / (sqrt(acc[r]) + eps)``.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrmkit.config import OPTIMIZERS

ADAGRAD_EPS = 1e-10  # as the reference's Adagrad and row-wise Adagrad


def _row_index(rows: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) rows -> (N, D) index for scatter_add_ along dim 0 (several times faster than index_add_ on CPU)."""
    return rows.unsqueeze(1).expand(-1, dim)


def _rows_and_values(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique touched rows and their summed gradients, (U,) and (U, D), from a sparse or dense grad."""
    if not grad.is_sparse:
        return torch.arange(grad.shape[0], device=grad.device), grad
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    rows, values = grad._indices()[0], grad._values()
    unique, inverse = torch.unique(rows, return_inverse=True)
    summed = values.new_zeros(unique.shape[0], values.shape[1])
    summed.scatter_add_(0, _row_index(inverse, values.shape[1]), values)
    return unique, summed


class SparseSGD:
    def __init__(self, weight: nn.Parameter):
        self.weight = weight

    @torch.no_grad()
    def step(self, lr: float) -> None:
        grad = self.weight.grad
        if grad is None:
            return
        if grad.is_sparse:  # duplicates add up, as a coalesced gradient would
            values = grad._values()
            self.weight.scatter_add_(0, _row_index(grad._indices()[0], values.shape[1]), values * -lr)
        else:
            self.weight.add_(grad, alpha=-lr)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class RowWiseAdagrad:
    def __init__(self, weight: nn.Parameter, eps: float = ADAGRAD_EPS):
        self.weight = weight
        self.eps = eps
        self.accumulator = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)  # (R,)

    @torch.no_grad()
    def step(self, lr: float) -> None:
        grad = self.weight.grad
        if grad is None:
            return
        rows, values = _rows_and_values(grad)  # (U,) unique, (U, D)
        acc = self.accumulator.index_select(0, rows).add_(values.pow(2).mean(dim=1))
        self.accumulator.index_copy_(0, rows, acc)
        step = values / acc.sqrt_().add_(self.eps).unsqueeze(1)
        self.weight.scatter_add_(0, _row_index(rows, values.shape[1]), step.mul_(-lr))

    def state_dict(self) -> dict:
        return {"accumulator": self.accumulator}

    def load_state_dict(self, state: dict) -> None:
        self.accumulator.copy_(state["accumulator"])


class DLRMOptimizer:
    """One optimizer for the whole model: ``step(lr)`` updates dense layers and tables."""

    def __init__(self, model: nn.Module, name: str):
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
        self.name = name
        self.model = model
        dense = model.dense_parameters()
        weight = model.embeddings.weight
        if name == "sgd":
            self.dense = torch.optim.SGD(dense, lr=1.0)
            self.sparse = SparseSGD(weight)
        else:
            self.dense = torch.optim.Adagrad(dense, lr=1.0, eps=ADAGRAD_EPS)
            self.sparse = RowWiseAdagrad(weight)

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        self.model.embeddings.weight.grad = None

    def step(self, lr: float) -> None:
        for group in self.dense.param_groups:
            group["lr"] = lr
        self.dense.step()
        self.sparse.step(lr)

    def state_dict(self) -> dict:
        return {"name": self.name, "dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])
