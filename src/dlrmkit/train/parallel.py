"""How one training step reaches other processes: not at all (`OneProcess`), or as data-parallel
dense layers and model-parallel tables over torch.distributed (`Distributed`).

The training loop calls the same methods either way. With W ranks and a global batch of n rows,
rank r sees its share of each batch (`loader.part_bounds`), computes ``sum(BCE) / n`` over it,
and after backward the dense gradients (and the loss) are summed over ranks in one all-reduce:
exactly the mean-loss gradient one process computes on the whole batch. The tables' gradients
reach their holders through the all-to-all's backward (`sharded.ShardedEmbeddingTables`), so each
holder's sparse update is the one-process update of its rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlrmkit.checkpoint import checkpoint_payload, load_checkpoint, load_model_state, save_checkpoint, write_atomic
from dlrmkit.checkpoint_shards import (WEIGHT_KEY, RowReader, link_checkpoint, remove_stale_shards,
                                       shard_file_name, write_shard)
from dlrmkit.config import ModelConfig
from dlrmkit.data.dataset import SplitArrays
from dlrmkit.data.loader import part_positions
from dlrmkit.errors import CheckpointError
from dlrmkit.model import DLRM, build_model
from dlrmkit.train.comm import Comm
from dlrmkit.train.evaluate import predict_logits
from dlrmkit.train.optim import DLRMOptimizer
from dlrmkit.train.plan import ShardPlan
from dlrmkit.train.sharded import ShardedEmbeddingTables


def _same_architecture(ckpt: dict, path: Path, cfg: ModelConfig) -> dict:
    if ckpt["model_config"] != cfg.to_dict():
        raise CheckpointError(f"{path}: was trained with a different architecture than requested")
    return ckpt


class OneProcess:
    """All tables and the whole batch in this process."""

    rank, world_size, is_main = 0, 1, True
    device = torch.device("cpu")

    def describe(self) -> str:
        return "one process"

    def build_model(self, cfg: ModelConfig, seed: int) -> DLRM:
        return build_model(cfg, seed=seed)

    def loss(self, logits: torch.Tensor, label: torch.Tensor, global_rows: int) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), label)

    def sync(self, model: DLRM, loss: torch.Tensor) -> float:
        """After backward: the batch's mean loss (here nothing to exchange)."""
        return loss.item()

    def predict(self, model: DLRM, split: SplitArrays, batch_size: int, max_index_range: int | None,
                max_rows: int | None, bf16: bool) -> tuple[np.ndarray, np.ndarray]:
        return predict_logits(model, split, batch_size, max_index_range, max_rows, bf16)

    def save(self, path: Path, model: DLRM, cfg: ModelConfig, optimizer: DLRMOptimizer, **fields) -> None:
        save_checkpoint(path, model, cfg, optimizer_state=optimizer.state_dict(), **fields)
        remove_stale_shards(path, set())  # left by a distributed run this one resumed

    def restore(self, path: Path, model: DLRM, optimizer: DLRMOptimizer, cfg: ModelConfig) -> dict:
        ckpt = _same_architecture(load_checkpoint(path), path, cfg)
        load_model_state(model, ckpt["model_state"], str(path))
        optimizer.load_state_dict(ckpt["optimizer_state"])
        return ckpt

    def link(self, src: Path, dst: Path) -> None:
        link_checkpoint(src, dst)

    def barrier(self, what: str) -> None:
        pass


class Distributed(OneProcess):
    """W ranks: dense layers replicated (gradients all-reduced), tables sharded by ``plan``."""

    def __init__(self, comm: Comm, plan: ShardPlan):
        if plan.world_size != comm.world_size:
            raise ValueError(f"plan is for {plan.world_size} ranks, the job has {comm.world_size}")
        self.comm = comm
        self.plan = plan
        self.rank, self.world_size, self.is_main = comm.rank, comm.world_size, comm.is_main
        self.device = comm.device

    def describe(self) -> str:
        return f"{self.world_size} processes ({self.comm.backend}, {self.device.type}); {self.plan.describe()}"

    def build_model(self, cfg: ModelConfig, seed: int) -> DLRM:
        tables = ShardedEmbeddingTables(self.plan, self.comm, cfg.embedding_dim, seed)
        return build_model(cfg, seed=seed, embeddings=tables).to(self.device)

    def loss(self, logits: torch.Tensor, label: torch.Tensor, global_rows: int) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), label, reduction="sum") / global_rows

    def sync(self, model: DLRM, loss: torch.Tensor) -> float:
        params = model.dense_parameters()
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [loss.detach().reshape(1)])
        self.comm.all_reduce_(flat, "summing dense gradients", kind="all_reduce_gradients")
        start = 0
        for p in params:
            p.grad.copy_(flat[start:start + p.numel()].view_as(p.grad))
            start += p.numel()
        return float(flat[-1])

    def predict(self, model: DLRM, split: SplitArrays, batch_size: int, max_index_range: int | None,
                max_rows: int | None, bf16: bool) -> tuple[np.ndarray, np.ndarray]:
        """Every rank predicts its share of each batch; all get the whole split's (labels, logits)."""
        labels, logits = predict_logits(model, split, batch_size, max_index_range, max_rows, bf16,
                                        part=(self.rank, self.world_size), device=self.device)
        rows = len(split) if max_rows is None else min(max_rows, len(split))
        positions = [part_positions(rows, batch_size, r, self.world_size) for r in range(self.world_size)]
        longest = max(len(p) for p in positions)
        mine = torch.zeros(2, longest, dtype=torch.float32)
        mine[0, :len(labels)] = torch.from_numpy(labels)
        mine[1, :len(logits)] = torch.from_numpy(logits)
        parts = self.comm.all_gather(mine.to(self.device), "gathering predictions")
        all_labels, all_logits = np.empty(rows, np.float32), np.empty(rows, np.float32)
        for pos, part in zip(positions, parts):
            part = part.cpu().numpy()
            all_labels[pos] = part[0, :len(pos)]
            all_logits[pos] = part[1, :len(pos)]
        return all_labels, all_logits

    def save(self, path: Path, model: DLRM, cfg: ModelConfig, optimizer: DLRMOptimizer, **fields) -> None:
        """Each rank writes its rows, then rank 0 the checkpoint naming them (see checkpoint_shards)."""
        step = fields["train_state"]["step"]
        tables: ShardedEmbeddingTables = model.embeddings
        acc = optimizer.sparse.state_dict().get("accumulator")
        ranges = [(t, lo, hi) for t, lo, hi, _ in tables.local_row_ranges()]
        write_shard(path.parent / shard_file_name(path.name, step, self.rank, self.world_size), ranges,
                    tables.weight, acc)
        self.barrier("writing checkpoint shards")
        if self.is_main:
            files = [{"name": shard_file_name(path.name, step, r, self.world_size),
                      "ranges": [[s.table, s.row_lo, s.row_hi] for s in self.plan.local(r)]}
                     for r in range(self.world_size)]
            dense = {k: v for k, v in model.state_dict().items() if k != WEIGHT_KEY}
            opt = optimizer.state_dict()
            payload = checkpoint_payload(dense, cfg, optimizer_state={**opt, "sparse": {}}, **fields)
            payload["sharded"] = {"world_size": self.world_size, "plan": self.plan.to_dict(), "files": files}
            write_atomic(path, payload)
            remove_stale_shards(path, {f["name"] for f in files})
        self.barrier("writing the checkpoint")

    def restore(self, path: Path, model: DLRM, optimizer: DLRMOptimizer, cfg: ModelConfig) -> dict:
        """This rank's rows (and accumulators) from a checkpoint saved on any number of ranks."""
        ckpt = _same_architecture(load_checkpoint(path, assemble_shards=False), path, cfg)
        reader = RowReader(ckpt, path)
        tables: ShardedEmbeddingTables = model.embeddings
        weights, accs = [], []
        for table, lo, hi, _ in tables.local_row_ranges():
            w, a = reader.read(table, lo, hi)
            weights.append(w)
            accs.append(a)
        dim = tables.dim
        state = {k: v for k, v in ckpt["model_state"].items() if k != WEIGHT_KEY}
        state[WEIGHT_KEY] = torch.cat(weights) if weights else torch.empty(0, dim)
        load_model_state(model, state, str(path))
        opt = ckpt["optimizer_state"]
        sparse = {}
        if opt.get("name") == "adagrad":
            if any(a is None for a in accs):
                raise CheckpointError(f"{path}: holds no row-wise Adagrad accumulators for the tables")
            sparse = {"accumulator": torch.cat(accs) if accs else torch.empty(0)}
        optimizer.load_state_dict({**opt, "sparse": sparse})
        return ckpt

    def link(self, src: Path, dst: Path) -> None:
        if self.is_main:
            link_checkpoint(src, dst)
        self.barrier("linking the best checkpoint")

    def barrier(self, what: str) -> None:
        self.comm.barrier(what)
