"""dlrmkit.metrics against scikit-learn and hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from dlrmkit import metrics


def _labels(rng, n, rate=0.3):
    y = (rng.random(n) < rate).astype(np.int64)
    y[0], y[-1] = 1, 0  # both classes, always
    return y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 7, 100, 1000, 20001])
@pytest.mark.parametrize("decimals", [1, 2])
def test_roc_auc_equals_sklearn_with_ties(seed, n, decimals):
    rng = np.random.default_rng([seed, n, decimals])
    y = _labels(rng, n)
    # scores correlated with the labels, rounded so that most of them tie
    s = np.round(np.clip(rng.random(n) * 0.7 + 0.3 * y, 0, 1), decimals)
    got = metrics.roc_auc(y, s)
    assert got == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_roc_auc_untied_float32_and_bool_labels():
    rng = np.random.default_rng(5)
    y = _labels(rng, 5000)
    s = rng.normal(size=5000).astype(np.float32) + y
    assert metrics.roc_auc(y.astype(bool), s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.roc_auc(y.astype(np.float32), s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_roc_auc_hand_cases():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # pairs (pos, neg): (0.4, 0.1) win, (0.4, 0.4) tie, (0.2, 0.1) win, (0.2, 0.4) loss -> 2.5 / 4
    assert metrics.roc_auc([1, 0, 1, 0], [0.4, 0.1, 0.2, 0.4]) == 0.625


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0, 0], [0]])
def test_roc_auc_one_class_raises(labels):
    with pytest.raises(ValueError):
        metrics.roc_auc(np.array(labels), np.linspace(0, 1, len(labels)))


def test_roc_auc_length_mismatch_raises():
    with pytest.raises(ValueError):
        metrics.roc_auc(np.array([0, 1, 1]), np.array([0.1, 0.2]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_loss_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = _labels(rng, 3000)
    p = rng.uniform(0.001, 0.999, 3000)
    assert metrics.log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-12)


def test_log_loss_hand_value_and_clipping():
    assert metrics.log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2), rel=1e-15)
    assert metrics.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2, rel=1e-14)
    # probabilities 0 and 1 on the wrong side are clipped, not infinite
    v = metrics.log_loss([1, 0], [0.0, 1.0])
    assert math.isfinite(v) and v > 30


@pytest.mark.parametrize("seed", [0, 1])
def test_log_loss_from_logits_equals_log_loss_of_sigmoid(seed):
    rng = np.random.default_rng(seed)
    y = _labels(rng, 4000)
    z = rng.uniform(-12, 12, 4000)
    p = 1.0 / (1.0 + np.exp(-z))
    assert metrics.log_loss_from_logits(y, z) == pytest.approx(metrics.log_loss(y, p), rel=1e-10)
    assert metrics.log_loss_from_logits(y, z) == pytest.approx(sk_log_loss(y, p), rel=1e-10)


def test_log_loss_from_logits_is_stable_for_large_logits():
    # softplus(800) = 800 (a wrong, confident prediction), softplus(-800) = 0
    assert metrics.log_loss_from_logits([0], [800.0]) == pytest.approx(800.0, rel=1e-15)
    assert metrics.log_loss_from_logits([1], [-800.0]) == pytest.approx(800.0, rel=1e-15)
    assert metrics.log_loss_from_logits([1, 0], [800.0, -800.0]) == pytest.approx(0.0, abs=1e-300)


def test_accuracy_hand_count():
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.4, 0.5, 0.2, 0.7, 0.1])
    # predictions (p > 0.5): 1 0 0 0 1 0 -> correct: yes yes no no no yes
    assert metrics.accuracy(y, p) == pytest.approx(3 / 6)
    # threshold 0.15: predictions 1 1 1 1 1 0 -> correct: yes no yes yes no yes
    assert metrics.accuracy(y, p, threshold=0.15) == pytest.approx(4 / 6)


def test_binary_metrics_agree_with_sklearn():
    rng = np.random.default_rng(9)
    y = _labels(rng, 2000)
    z = rng.normal(size=2000) + y
    m = metrics.binary_metrics(y, z)
    p = 1.0 / (1.0 + np.exp(-z))
    assert m["auc"] == pytest.approx(roc_auc_score(y, z), abs=1e-12)
    assert m["log_loss"] == pytest.approx(sk_log_loss(y, p), rel=1e-10)
    assert m["accuracy"] == pytest.approx(np.mean((z > 0) == (y == 1)))
    assert m["rows"] == 2000
    assert m["positive_rate"] == pytest.approx(y.mean())
