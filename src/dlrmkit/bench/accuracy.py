"""AUC from LoadGen's accuracy log, as the MLPerf reference's ``tools/accuracy-dlrm.py`` computes it.

Each log entry holds one sample's response: hex bytes of float32 (prediction, label) per pair.
A sample logged twice counts once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrmkit.errors import EvaluationError
from dlrmkit.metrics import roc_auc

DTYPES = {"float32": np.float32, "int32": np.int32, "int64": np.int64}


@dataclass(frozen=True)
class AccuracyLog:
    samples: np.ndarray  # (K,) QSL indices in log order, duplicates dropped
    predictions: np.ndarray  # (P,)
    labels: np.ndarray  # (P,)


def read_accuracy_log(path: str | Path, dtype: str = "float32") -> AccuracyLog:
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except OSError as e:
        raise EvaluationError(f"cannot read accuracy log {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{path}: not LoadGen JSON ({e.msg} at line {e.lineno})") from None
    seen: set[int] = set()
    samples, chunks = [], []
    for k, entry in enumerate(entries):
        try:
            index, data = int(entry["qsl_idx"]), entry["data"]
        except (KeyError, TypeError, ValueError):
            raise EvaluationError(f"{path}: entry {k} lacks qsl_idx/data") from None
        if index in seen:
            continue
        seen.add(index)
        samples.append(index)
        chunks.append(data)
    try:
        raw = bytes.fromhex("".join(chunks))
    except ValueError:
        raise EvaluationError(f"{path}: response data is not hex") from None
    values = np.frombuffer(raw, dtype=DTYPES[dtype])
    if values.size % 2:
        raise EvaluationError(f"{path}: responses hold {values.size} values, not (prediction, label) pairs")
    pairs = values.reshape(-1, 2)  # (P, 2)
    return AccuracyLog(np.array(samples, dtype=np.int64), pairs[:, 0].astype(np.float64),
                       pairs[:, 1].astype(np.float64))


def accuracy_metrics(log: AccuracyLog) -> dict:
    """AUC, accuracy (rounded prediction equals the label), and counts."""
    labels, preds = log.labels, log.predictions
    if labels.size == 0:
        raise EvaluationError("the accuracy log holds no predictions (was the run in AccuracyOnly mode?)")
    positives = int(labels.sum())
    if positives in (0, labels.size):
        raise EvaluationError(f"AUC is undefined on {labels.size} pairs holding only one class")
    good = int((np.round(preds) == labels).sum())
    return {"auc": roc_auc(labels, preds), "accuracy": good / labels.size, "good": good,
            "total": int(labels.size), "samples": int(log.samples.size)}
