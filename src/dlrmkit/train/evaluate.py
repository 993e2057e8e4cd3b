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
                   bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(labels, logits) of the first ``max_rows`` rows (all by default), in file order."""
    if max_rows is not None:
        split = split.rows(0, min(max_rows, len(split)))
    was_training = model.training
    model.eval()
    labels, logits = [], []
    try:
        for batch in batches(split, batch_size, max_index_range=max_index_range):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(batch.dense, batch.sparse)
            logits.append(out.float().numpy())
            labels.append(batch.label.numpy())
    finally:
        model.train(was_training)
    if not logits:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    return np.concatenate(labels), np.concatenate(logits)


def evaluate(model: DLRM, split: SplitArrays, batch_size: int = 16384,
             max_index_range: int | None = None, max_rows: int | None = None, bf16: bool = False) -> dict:
    """AUC, log loss, accuracy (and row count, positive rate) of the model on a split."""
    labels, logits = predict_logits(model, split, batch_size, max_index_range, max_rows, bf16)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise EvaluationError(f"AUC is undefined on {labels.size} rows holding only one class "
                              f"({positives} positive); evaluate on more rows")
    return binary_metrics(labels, logits)
