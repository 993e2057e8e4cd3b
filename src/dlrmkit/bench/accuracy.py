"""AUC from LoadGen's accuracy log, as the MLPerf reference's ``tools/accuracy-dlrm.py`` computes it.

Each log entry holds one sample's response: hex bytes of float32 (prediction, label) per pair,
as the reference SUT packs them. For a SUT that answers with predictions only, the labels come
from the test split and the aggregation trace (which pairs each sample holds), as the reference
tool's ``--day-23-file`` mode does. A sample logged twice counts once.
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


def read_accuracy_log(path: str | Path, dtype: str = "float32", split_labels: np.ndarray | None = None,
                      offsets: np.ndarray | None = None) -> AccuracyLog:
    """Predictions and labels of every logged sample. With ``split_labels`` (the split's labels)
    and ``offsets`` (sample i holds pairs offsets[i]:offsets[i+1]) the log holds predictions only."""
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
    samples = np.array(samples, dtype=np.int64)
    if split_labels is not None:
        return _with_split_labels(path, samples, values, split_labels, offsets)
    if values.size % 2:
        raise EvaluationError(f"{path}: responses hold {values.size} values, not (prediction, label) pairs")
    pairs = values.reshape(-1, 2)  # (P, 2)
    return AccuracyLog(samples, pairs[:, 0].astype(np.float64), pairs[:, 1].astype(np.float64))


def _with_split_labels(path: Path, samples: np.ndarray, predictions: np.ndarray, split_labels: np.ndarray,
                       offsets: np.ndarray) -> AccuracyLog:
    from dlrmkit.bench.qsl import range_rows

    if samples.size and samples.max() >= len(offsets) - 1:
        raise EvaluationError(f"{path}: sample {samples.max()} is beyond the trace's {len(offsets) - 1} samples")
    sizes = np.diff(offsets)[samples]
    if predictions.size != sizes.sum():
        raise EvaluationError(f"{path}: {predictions.size} predictions for samples holding {sizes.sum()} pairs "
                              f"(does the log hold labels too? then leave out the dataset)")
    if offsets[-1] > len(split_labels):
        raise EvaluationError(f"the trace covers {offsets[-1]} pairs but the split has {len(split_labels)}")
    labels = np.asarray(split_labels)[range_rows(offsets[samples], sizes)]
    return AccuracyLog(samples, predictions.astype(np.float64), labels.astype(np.float64))


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
