"""Binary classification metrics on numpy arrays: exact AUC with ties, log loss, accuracy.

Pure functions of (labels, scores); float64 throughout. Used by training, evaluation, synthetic
data (oracle AUC) and, later, the benchmark's accuracy mode.
"""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, exact, ties counted as one half (the Mann-Whitney U statistic).

    Equals scikit-learn's ``roc_auc_score``. Raises ValueError when only one class is present.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes in the labels")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    # Average rank (1-based) of each group of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], s.size]
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.repeat(group_rank, ends - starts)
    pos_rank_sum = ranks[y[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float | None = None) -> float:
    """Mean binary cross-entropy of probabilities, clipped to [eps, 1 - eps] as scikit-learn does."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    eps = np.finfo(np.float64).eps if eps is None else eps
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def log_loss_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy computed stably from logits: softplus(-z) for y=1, softplus(z) for y=0."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of rows whose prediction (prob > threshold, as rounded targets) matches the label."""
    y = np.asarray(labels).astype(bool).ravel()
    return float(np.mean((np.asarray(probs).ravel() > threshold) == y))


def binary_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """AUC, log loss and accuracy of logits against 0/1 labels, plus counts."""
    probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    return {
        "auc": roc_auc(labels, probs),
        "log_loss": log_loss_from_logits(labels, logits),
        "accuracy": accuracy(labels, probs),
        "rows": int(np.asarray(labels).size),
        "positive_rate": float(np.mean(labels)),
    }
