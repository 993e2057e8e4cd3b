"""One benchmark run: aggregate the test pairs into samples, hand LoadGen a QSL and a SUT, and
turn its logs into result.json (plus the accuracy check and latency plots)."""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path
from typing import Callable

import mlperf_loadgen as lg
import numpy as np

from dlrmkit.bench.accuracy import accuracy_metrics, read_accuracy_log
from dlrmkit.bench.aggregation import aggregate_offsets, write_trace
from dlrmkit.bench.plots import write_plots
from dlrmkit.bench.qsl import SampleLibrary
from dlrmkit.bench.results import ACCURACY_LOG, DETAIL_LOG, accuracy_block, performance_result, read_detail_log
from dlrmkit.bench.settings import build_settings
from dlrmkit.bench.sut import Predict, SystemUnderTest
from dlrmkit.config import AggregationConfig, BenchConfig
from dlrmkit.data.dataset import SplitArrays, write_json_atomic
from dlrmkit.errors import BenchmarkError
from dlrmkit.metrics import roc_auc
from dlrmkit.progress import Progress

RESULT_FILE = "result.json"
TRACE_FILE = "dlrm_trace_of_aggregated_samples.txt"


def _prepared(predict: Predict, sparse: np.ndarray) -> np.ndarray:
    prepare = getattr(predict, "prepare", None)
    return sparse if prepare is None else prepare(sparse)


def calibrate(predict: Predict, qsl: SampleLibrary, max_batchsize: int, threads: int = 1,
              repeats: int = 3) -> float:
    """Warm the model up on the first batch of samples, then time ``threads`` concurrent callers
    as the SUT's workers will be; returns the samples/s they reached together."""
    k = min(max_batchsize, qsl.total_count)
    rows = slice(0, int(qsl.offsets[k]))
    dense = np.array(qsl.split.dense[rows], dtype=np.float32)
    sparse = _prepared(predict, np.array(qsl.split.sparse[rows]))
    warm_up = getattr(predict, "warm_up", None)
    if warm_up is not None:  # a compiled model: every call size the SUT can send, compiled now
        largest_call = int(np.sort(np.diff(qsl.offsets))[-k:].sum())  # the k largest samples merged
        warm_up(dense, sparse, largest_call)
    for _ in range(2):
        predict(dense, sparse)

    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(repeats):
                predict(dense, sparse)
        except Exception as e:  # noqa: BLE001 - re-raised in the calling thread below
            failures.append(e)

    workers = [threading.Thread(target=work) for _ in range(threads - 1)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    work()  # the calling thread serves too, as in SystemUnderTest.run
    for w in workers:
        w.join()
    if failures:
        raise failures[0]
    return k * repeats * threads / max(time.perf_counter() - start, 1e-9)


def reference_auc(predict: Predict, qsl: SampleLibrary, batch_pairs: int = 16384) -> float:
    """AUC of ``predict`` over every pair of the QSL's samples, in file order."""
    probs = []
    for lo in range(0, qsl.pairs, batch_pairs):
        rows = slice(lo, min(lo + batch_pairs, qsl.pairs))
        probs.append(predict(np.array(qsl.split.dense[rows], dtype=np.float32),
                             _prepared(predict, np.array(qsl.split.sparse[rows]))))
    labels = np.asarray(qsl.split.label[: qsl.pairs], dtype=np.float64)
    return roc_auc(labels, np.concatenate(probs).astype(np.float64))


def _host() -> dict:
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def run_benchmark(predict: Predict, split: SplitArrays, cfg: BenchConfig, aggregation: AggregationConfig,
                  out: str | Path, *, reference_predict: Predict | None = None,
                  trace_file: str | Path | None = None, plots: bool = True, describe: dict | None = None,
                  log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """Run LoadGen on ``predict`` over the split's pairs; writes OUT/result.json and returns it.

    ``reference_predict`` (the FP32 model) sets the accuracy threshold when ``cfg.reference_auc``
    is not given; by default it is ``predict`` itself.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)

    offsets = aggregate_offsets(len(split), aggregation)
    count = len(offsets) - 1 if cfg.count_samples is None else min(cfg.count_samples, len(offsets) - 1)
    write_trace(trace_file or out / TRACE_FILE, offsets, count)
    qsl = SampleLibrary(split, offsets[: count + 1], getattr(predict, "prepare", None))
    log(f"QSL: {count:,} samples of {qsl.pairs:,} pairs ({qsl.pairs / count:.1f} pairs per sample, "
        f"{aggregation.rule} aggregation)")

    try:
        calibrated = calibrate(predict, qsl, cfg.max_batchsize, cfg.threads)
    except Exception as e:  # noqa: BLE001 - any model failure: one clear error, no result
        raise BenchmarkError(f"the model failed in the warm-up, before LoadGen started: "
                             f"{type(e).__name__}: {e}") from e
    resolved = build_settings(cfg, count, calibrated)
    log(f"warm-up: {calibrated:,.0f} samples/s in batches of {min(cfg.max_batchsize, count)} samples; "
        f"target QPS from {resolved.expected_qps_source}")

    meter = None
    if progress:
        # accuracy runs answer every sample once; performance runs last the minimum duration
        total = count if cfg.test_mode == "AccuracyOnly" else None
        meter = Progress(total, "samples", f"LoadGen {cfg.scenario}", interval_s=2.0)
        if total is None:
            log(f"performance run: at least {resolved.settings.min_duration_ms / 1000:g} s "
                f"and {resolved.settings.min_query_count} queries")
    sut = SystemUnderTest(predict, qsl, cfg.max_batchsize, cfg.threads, progress=meter)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(out)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    lg_sut = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    lg_qsl = lg.ConstructQSL(count, resolved.performance_sample_count, qsl.load, qsl.unload)
    log(f"LoadGen: {cfg.scenario} {cfg.test_mode}, {cfg.threads} worker thread(s), "
        f"max batch {cfg.max_batchsize} samples")
    started = time.perf_counter()
    try:
        sut.run(lambda: lg.StartTestWithLogSettings(lg_sut, lg_qsl, resolved.settings, log_settings,
                                                    str(out / "audit.config")))
    finally:
        lg.DestroyQSL(lg_qsl)
        lg.DestroySUT(lg_sut)
    wall = time.perf_counter() - started
    if meter is not None:
        meter.close()
    if sut.error is not None:
        last = sut.error.strip().splitlines()[-1]
        raise BenchmarkError(f"the system under test failed, no result written ({last}); LoadGen logs in {out}")

    detail = read_detail_log(out / DETAIL_LOG)
    mean_pairs = sut.stats.pairs / sut.stats.samples if sut.stats.samples else 0.0
    result = performance_result(cfg, detail, mean_pairs)
    result.update({
        "sut": {"backend": getattr(predict, "name", type(predict).__name__), "max_batchsize": cfg.max_batchsize,
                "threads": cfg.threads, "batches": sut.stats.batches, "samples": sut.stats.samples,
                "pairs": sut.stats.pairs, "warmup_samples_per_second": calibrated},
        "qsl": {"samples": count, "pairs": qsl.pairs, "performance_sample_count": resolved.performance_sample_count,
                "aggregation": aggregation.to_dict()},
        "target_qps_source": resolved.expected_qps_source,
        "config": cfg.to_dict(),
        "wall_seconds": wall,
        "host": _host(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(describe or {}),
    })

    if cfg.test_mode == "AccuracyOnly":
        metrics = accuracy_metrics(read_accuracy_log(out / ACCURACY_LOG))
        if metrics["samples"] != count:
            raise BenchmarkError(f"the accuracy log holds {metrics['samples']} samples, expected all {count}")
        if cfg.reference_auc is not None:
            ref, source = cfg.reference_auc, "option"
        else:
            ref, source = reference_auc(reference_predict or predict, qsl), "measured (FP32 model, same pairs)"
        result.update(accuracy_block(metrics, ref, cfg.accuracy_target))
        result.update({"roc_auc": metrics["auc"], "accuracy_metrics": metrics,
                       "reference_auc": ref, "reference_auc_source": source})

    if plots and cfg.test_mode != "AccuracyOnly":
        bound = detail.get("effective_target_latency_ns") if cfg.scenario in ("Server", "MultiStream") else None
        paths = write_plots(out, cfg.scenario, sut.stats.timings, bound / 1e6 if bound else None)
        result["plots"] = [p.name for p in paths]
    write_json_atomic(out / RESULT_FILE, result)
    log(result["summary_string"])
    return result
