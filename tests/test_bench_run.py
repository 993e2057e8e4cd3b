"""The MLPerf benchmark end to end with the real LoadGen: every scenario in performance mode, the
accuracy mode's AUC against dlrmkit's own evaluation, and loud failures of the system under test.

Runs are short (300 ms minimum duration, ``fast``) on the tiny preset and tiny synthetic data.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from dlrmkit.bench.accuracy import read_accuracy_log
from dlrmkit.bench.aggregation import aggregate_offsets, read_trace
from dlrmkit.bench.qsl import SampleLibrary
from dlrmkit.bench import run as bench_run
from dlrmkit.bench.run import run_benchmark
from dlrmkit.config import MLPERF_QUERY_SIZE_QUANTILE, AggregationConfig, BenchConfig, SynthConfig, preset
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.errors import BenchmarkError, ConfigError
from dlrmkit.infer.backend import TorchPredictor
from dlrmkit.metrics import roc_auc
from dlrmkit.model import build_model
from dlrmkit.train.evaluate import evaluate, predict_logits

DURATION_MS = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIX = 4  # pairs per sample in the performance runs
PERF_SAMPLES = 400  # 1600 pairs of the ~2100 in the test split
# the metric LoadGen reports for each scenario (mlperf.conf: SingleStream p90, MultiStream p99)
SCENARIO_KEYS = {
    "Offline": "result_samples_per_second",
    "Server": "result_completed_samples_per_sec",
    "SingleStream": "result_90.00_percentile_latency_ns",
    "MultiStream": "result_99.00_percentile_per_query_latency_ns",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    out = tmp_path_factory.mktemp("bench_run") / "data"
    synth.write_binary(SynthConfig(rows=30_000, cardinality_scale=0.001, workers=1), out, progress=False)
    return Dataset(out)


@pytest.fixture(scope="module")
def model(dataset):
    return build_model(preset("tiny", dataset.table_sizes), seed=0).eval()


@pytest.fixture(scope="module")
def predictor(model) -> TorchPredictor:
    return TorchPredictor(model)


def _quiet(_: str) -> None:
    pass


def _read_result(out: Path) -> dict:
    path = out / "result.json"
    assert path.is_file(), f"no {path}"
    return json.loads(path.read_text())


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


# --- performance mode, every scenario ---------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIO_KEYS))
def test_performance_run(scenario, dataset, predictor, tmp_path):
    out = tmp_path / "out"
    split = dataset.split("test")
    cfg = BenchConfig(scenario=scenario, duration_ms=DURATION_MS, fast=True, count_samples=PERF_SAMPLES)
    messages: list[str] = []
    returned = run_benchmark(predictor, split, cfg, AggregationConfig(fix=FIX), out, log=messages.append)

    result = _read_result(out)
    assert result == json.loads(json.dumps(returned))  # the file holds what the call returned
    key = SCENARIO_KEYS[scenario]
    assert result["scenario"] == scenario and result["test_mode"] == "PerformanceOnly"
    assert result["scenario_key"] == key
    assert isinstance(result[key], (int, float)) and result[key] > 0
    assert result["result_validity"] in ("VALID", "INVALID")
    assert result["result_validity"] == "VALID" or result["invalid_reasons"]
    assert isinstance(result["summary_string"], str) and key in result["summary_string"]
    assert result["summary_string"] in messages
    assert result["effective_min_duration_ms"] == DURATION_MS

    # every sample holds FIX pairs, so the SUT saw exactly FIX pairs per sample
    sut = result["sut"]
    assert sut["samples"] > 0 and sut["pairs"] == FIX * sut["samples"]
    assert result["mean_pairs_per_sample"] == FIX
    assert result["qsl"]["samples"] == PERF_SAMPLES and result["qsl"]["pairs"] == FIX * PERF_SAMPLES
    assert result["qsl"]["performance_sample_count"] == PERF_SAMPLES
    if scenario in ("Offline", "Server"):
        assert result["samples_per_second"] == result[key]
        want = result["samples_per_second"] * result["mean_pairs_per_sample"]
        assert result["pairs_per_second"] == pytest.approx(want, rel=1e-12)
    if scenario == "MultiStream":
        assert result["effective_samples_per_query"] == 8

    for log in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        assert (out / log).is_file() and (out / log).stat().st_size > 0, log
    trace = out / "dlrm_trace_of_aggregated_samples.txt"
    np.testing.assert_array_equal(read_trace(trace), np.arange(0, FIX * PERF_SAMPLES + 1, FIX))

    plots = ["latency_histogram.png"] + (["latency_over_time.png"] if scenario == "Server" else [])
    assert result["plots"] == plots
    for name in plots:
        assert _is_png(out / name), name
    if scenario != "Server":
        assert not (out / "latency_over_time.png").exists()


def test_offline_with_worker_threads_and_small_batches(dataset, predictor, tmp_path):
    cfg = BenchConfig(duration_ms=DURATION_MS, fast=True, count_samples=PERF_SAMPLES, threads=2, max_batchsize=16)
    result = run_benchmark(predictor, dataset.split("test"), cfg, AggregationConfig(fix=FIX), tmp_path, log=_quiet,
                           plots=False)
    sut = result["sut"]
    assert sut["threads"] == 2 and sut["max_batchsize"] == 16
    assert sut["batches"] >= -(-sut["samples"] // 16)  # no batch holds more than 16 samples
    assert sut["pairs"] == FIX * sut["samples"]
    assert "plots" not in result and not (tmp_path / "latency_histogram.png").exists()


def test_custom_trace_file_and_quantile_aggregation(dataset, predictor, tmp_path):
    split = dataset.split("test")
    aggregation = AggregationConfig(quantile=MLPERF_QUERY_SIZE_QUANTILE, seed=7)
    trace = tmp_path / "elsewhere" / "trace.txt"
    trace.parent.mkdir()
    result = run_benchmark(predictor, split, BenchConfig(duration_ms=DURATION_MS, fast=True), aggregation,
                           tmp_path / "out", trace_file=trace, log=_quiet, plots=False)
    offsets = aggregate_offsets(len(split), aggregation)
    np.testing.assert_array_equal(read_trace(trace), offsets)
    assert not (tmp_path / "out" / "dlrm_trace_of_aggregated_samples.txt").exists()
    assert result["qsl"]["samples"] == len(offsets) - 1 and result["qsl"]["pairs"] == len(split)
    assert result["qsl"]["aggregation"]["rule"] == "quantile" and result["qsl"]["aggregation"]["seed"] == 7
    sizes = np.diff(offsets)
    assert sizes.min() <= result["mean_pairs_per_sample"] <= sizes.max()


# --- accuracy mode ----------------------------------------------------------------------------


def _auc_tolerance(labels: np.ndarray, scores: np.ndarray, err: float) -> float:
    """The most the AUC can change when every score moves by at most ``err``: the share of
    positive-negative pairs whose scores are within 2 * err (only those can swap or tie)."""
    pos, neg = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    near = np.searchsorted(neg, pos + 2 * err, side="right") - np.searchsorted(neg, pos - 2 * err, side="left")
    return float(near.sum()) / (pos.size * neg.size)


def _sample_rows(offsets: np.ndarray, samples: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in samples.tolist()])


@pytest.fixture(scope="module")
def accuracy_run(dataset, predictor, model, tmp_path_factory):
    """An AccuracyOnly run over 40 samples of 20-80 pairs, loaded 7 samples at a time."""
    out = tmp_path_factory.mktemp("accuracy") / "out"
    split = dataset.split("test")
    aggregation = AggregationConfig(min=20, max=80, seed=3)
    cfg = BenchConfig(test_mode="AccuracyOnly", duration_ms=DURATION_MS, fast=True, count_samples=40,
                      samples_per_query_offline=7)
    loads: list[list[int]] = []
    original = SampleLibrary.load

    def recording_load(self, samples):
        loads.append(list(samples))
        original(self, samples)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SampleLibrary, "load", recording_load)
        result = run_benchmark(predictor, split, cfg, aggregation, out, log=_quiet)
    offsets = aggregate_offsets(len(split), aggregation)[:41]
    return out, result, offsets, loads


def test_accuracy_auc_equals_evaluate(accuracy_run, dataset, model):
    out, result, offsets, _ = accuracy_run
    assert _read_result(out) == json.loads(json.dumps(result))
    assert result["test_mode"] == "AccuracyOnly"
    pairs = result["qsl"]["pairs"]
    assert pairs == int(offsets[-1]) and result["qsl"]["samples"] == 40
    split = dataset.split("test").rows(0, pairs)
    want = evaluate(model, split)["auc"]
    # Within 1e-6, unless float32 rounding (batches of other sizes) reorders a near-tied
    # positive-negative pair: bound the gap by the pairs the largest difference can reorder.
    log = read_accuracy_log(out / "mlperf_log_accuracy.json")
    labels, logits = predict_logits(model, split)
    want_probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    got_probs = np.empty(pairs)
    got_probs[_sample_rows(offsets, log.samples)] = log.predictions
    err = float(np.abs(got_probs - want_probs).max())
    assert err < 1e-6
    tolerance = max(1e-6, _auc_tolerance(labels, want_probs, err))
    assert tolerance < 1e-4
    assert abs(result["roc_auc"] - want) <= tolerance
    [entry] = result["accuracy"]
    assert entry["name"] == "AUC"
    assert entry["value"] == pytest.approx(100 * result["roc_auc"], rel=1e-12)
    assert result["accuracy_metrics"]["total"] == pairs and result["accuracy_metrics"]["samples"] == 40
    assert "plots" not in result


def test_accuracy_log_holds_every_sample_once_with_its_labels(accuracy_run, dataset, predictor):
    out, result, offsets, _ = accuracy_run
    log = read_accuracy_log(out / "mlperf_log_accuracy.json")
    assert sorted(log.samples.tolist()) == list(range(40))
    raw = json.loads((out / "mlperf_log_accuracy.json").read_text())
    assert sorted(int(e["qsl_idx"]) for e in raw) == list(range(40))  # LoadGen issued each sample once
    split = dataset.split("test")
    rows = _sample_rows(offsets, log.samples)
    assert rows.size == result["qsl"]["pairs"]
    np.testing.assert_array_equal(log.labels, split.label[rows].astype(np.float64))
    want = predictor(np.array(split.dense[rows]), np.array(split.sparse[rows]))
    np.testing.assert_allclose(log.predictions, want, rtol=0, atol=1e-6)


def test_accuracy_mode_loads_every_sample_in_sets(accuracy_run):
    _, result, _, loads = accuracy_run
    assert result["qsl"]["performance_sample_count"] == 7
    assert len(loads) >= -(-40 // 7)  # LoadGen walks the library in sets of the performance sample count
    assert all(len(set(s)) <= 7 for s in loads)
    assert set().union(*map(set, loads)) == set(range(40))


def test_accuracy_threshold_from_measured_reference(accuracy_run):
    _, result, _, _ = accuracy_run
    # no reference AUC given: the same model on the same pairs, in file order
    assert result["reference_auc"] == pytest.approx(result["roc_auc"], abs=1e-6)
    assert result["reference_auc_source"].startswith("measured")
    [entry] = result["accuracy"]
    assert entry["threshold"] == pytest.approx(100 * 0.99 * result["reference_auc"], rel=1e-12)
    assert entry["pass"] is True and result["accuracy_pass"] is True
    assert result["summary_string"].startswith("[PASSED]")


@pytest.mark.parametrize("config_ver, reference, target", [("default", 0.6, 0.99), ("high_accuracy", 0.6, 0.999),
                                                           ("default", 1.0, 0.99)])
def test_accuracy_threshold_from_given_reference(dataset, predictor, tmp_path, config_ver, reference, target):
    cfg = BenchConfig(test_mode="AccuracyOnly", config_ver=config_ver, reference_auc=reference, count_samples=30,
                      duration_ms=DURATION_MS, fast=True)
    result = run_benchmark(predictor, dataset.split("test"), cfg, AggregationConfig(fix=20), tmp_path, log=_quiet)
    [entry] = result["accuracy"]
    assert result["reference_auc"] == reference and result["reference_auc_source"] == "option"
    assert entry["threshold"] == pytest.approx(100 * target * reference, rel=1e-12)
    assert entry["pass"] == result["accuracy_pass"] == (entry["value"] >= entry["threshold"])
    assert result["benchmark_full"] == ("dlrm-99" if target == 0.99 else "dlrm-99.9")
    if reference == 1.0:  # far above an untrained model's AUC
        assert result["roc_auc"] < 0.95
        assert result["accuracy_pass"] is False and result["summary_string"].startswith("[FAILED]")


def test_accuracy_reference_predict_sets_the_threshold(dataset, predictor, tmp_path):
    """A separate FP32 reference model: here a perfect one (it knows the labels), so AUC 1."""
    split = dataset.split("test")
    dense_to_label = {}
    for i in range(600):
        dense_to_label[np.asarray(split.dense[i]).tobytes()] = float(split.label[i])

    def oracle(dense, sparse):
        return np.array([dense_to_label[row.tobytes()] for row in dense], dtype=np.float32)

    cfg = BenchConfig(test_mode="AccuracyOnly", count_samples=30, duration_ms=DURATION_MS, fast=True)
    result = run_benchmark(predictor, split, cfg, AggregationConfig(fix=20), tmp_path, reference_predict=oracle,
                           log=_quiet)
    assert result["qsl"]["pairs"] == 600
    assert result["reference_auc"] == 1.0
    assert result["roc_auc"] == pytest.approx(roc_auc(split.label[:600].astype(np.float64),
                                                      predictor(np.array(split.dense[:600]),
                                                                np.array(split.sparse[:600]))), abs=1e-6)
    assert result["accuracy_pass"] is False


# --- failures ---------------------------------------------------------------------------------


@pytest.fixture
def fails_after_warmup(monkeypatch, predictor):
    """A model that works in the harness's warm-up and raises once LoadGen's run has begun."""
    armed = threading.Event()
    real_calibrate = bench_run.calibrate

    def calibrate_then_arm(*args, **kwargs):
        rate = real_calibrate(*args, **kwargs)
        armed.set()
        return rate

    monkeypatch.setattr(bench_run, "calibrate", calibrate_then_arm)

    def failing(dense, sparse):
        if armed.is_set():
            raise RuntimeError("boom")
        return predictor(dense, sparse)

    return failing


def test_sut_failure_fails_the_run_loudly(dataset, fails_after_warmup, tmp_path, capsys):
    """The model fails inside LoadGen's run (after the warm-up): no result, a BenchmarkError."""
    (tmp_path / "result.json").write_text('{"stale": true}\n')  # from an earlier run
    failing = fails_after_warmup

    cfg = BenchConfig(duration_ms=DURATION_MS, fast=True, count_samples=100)
    with pytest.raises(BenchmarkError, match="boom"):
        run_benchmark(failing, dataset.split("test"), cfg, AggregationConfig(fix=FIX), tmp_path, log=_quiet)
    assert not (tmp_path / "result.json").exists()
    assert "boom" in capsys.readouterr().err  # the traceback is shown


def test_model_failing_everywhere_raises_benchmark_error(dataset, tmp_path):
    def boom(dense, sparse):
        raise RuntimeError("boom")

    with pytest.raises(BenchmarkError, match="boom"):
        run_benchmark(boom, dataset.split("test"), BenchConfig(duration_ms=DURATION_MS, fast=True, count_samples=50),
                      AggregationConfig(fix=FIX), tmp_path, log=_quiet)
    assert not (tmp_path / "result.json").exists()


def test_wrong_number_of_predictions_fails_the_run(dataset, predictor, tmp_path, capsys):
    def short(dense, sparse):
        return predictor(dense, sparse)[:-1]

    cfg = BenchConfig(duration_ms=DURATION_MS, fast=True, count_samples=100)
    with pytest.raises(BenchmarkError, match="predictions"):
        run_benchmark(short, dataset.split("test"), cfg, AggregationConfig(fix=FIX), tmp_path, log=_quiet)
    assert not (tmp_path / "result.json").exists()
    capsys.readouterr()


def test_a_run_after_a_failed_run_works(dataset, predictor, fails_after_warmup, tmp_path):
    """LoadGen is process-wide: a void run must leave it usable."""
    failing = fails_after_warmup

    cfg = BenchConfig(scenario="SingleStream", duration_ms=DURATION_MS, fast=True, count_samples=50)
    with pytest.raises(BenchmarkError):
        run_benchmark(failing, dataset.split("test"), cfg, AggregationConfig(fix=FIX), tmp_path / "a", log=_quiet)
    result = run_benchmark(predictor, dataset.split("test"), cfg, AggregationConfig(fix=FIX), tmp_path / "b",
                           log=_quiet, plots=False)
    assert result[SCENARIO_KEYS["SingleStream"]] > 0


@pytest.mark.parametrize("scenario", ["Offline", "SingleStream", "MultiStream"])
def test_find_peak_performance_is_for_server_only(scenario):
    with pytest.raises(ConfigError, match="Server"):
        BenchConfig(scenario=scenario, test_mode="FindPeakPerformance")
    assert BenchConfig(scenario="Server", test_mode="FindPeakPerformance").test_mode == "FindPeakPerformance"
