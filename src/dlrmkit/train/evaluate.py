"""Predictions of a model over a split, and their metrics."""

from __future__ import annotations

import numpy as np
import torch

from dlrmkit.data.dataset import SplitArrays
from dlrmkit.data.loader import batches
from dlrmkit.errors import EvaluationError
from dlrmkit.metrics import binary_metrics
from dlrmkit.model import DLRM


@torch.inference_mode()
def predict_logits(model: DLRM, split: SplitArrays, batch_size: int = 16384,
                   max_index_range: int | None = None, max_rows: int | None = None,
                   bf16: bool = False, part: tuple[int, int] = (0, 1),
                   device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, logits) of the first ``max_rows`` rows (all by default), in file order; with
    ``part=(rank, world_size)`` only that rank's share of each batch (`loader.part_positions`)."""
    if max_rows is not None:
        split = split.rows(0, min(max_rows, len(split)))
    was_training = model.training
    model.eval()
    labels, logits = [], []
    try:
        device = device or torch.device("cpu")
        for batch in batches(split, batch_size, max_index_range=max_index_range, part=part):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(batch.dense.to(device), batch.sparse.to(device))
            logits.append(out.float().cpu().numpy())
            labels.append(batch.label.numpy())
    finally:
        model.train(was_training)
    if not logits:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    return np.concatenate(labels), np.concatenate(logits)


def evaluate(model: DLRM, split: SplitArrays, batch_size: int = 16384,
             max_index_range: int | None = None, max_rows: int | None = None, bf16: bool = False) -> dict:
    """AUC, log loss, accuracy (and row count, positive rate) of the model on a split."""
    return metrics_of(*predict_logits(model, split, batch_size, max_index_range, max_rows, bf16))


def metrics_of(labels: np.ndarray, logits: np.ndarray) -> dict:
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise EvaluationError(f"AUC is undefined on {labels.size} rows holding only one class "
                              f"({positives} positive); evaluate on more rows")
    return binary_metrics(labels, logits)
