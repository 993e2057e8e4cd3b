"""LoadGen's detail log -> result.json shaped like the MLPerf harness's result."""

from __future__ import annotations

import json
from pathlib import Path

from dlrmkit.config import BenchConfig

DETAIL_LOG = "mlperf_log_detail.txt"
SUMMARY_LOG = "mlperf_log_summary.txt"
ACCURACY_LOG = "mlperf_log_accuracy.json"
_PREFIX = ":::MLLOG "


def read_detail_log(path: str | Path) -> dict:
    """{key: value} of LoadGen's detail log (the last value of each key), plus its errors."""
    values: dict = {}
    errors, warnings, messages = [], [], []
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.startswith(_PREFIX):
            continue
        try:
            entry = json.loads(line[len(_PREFIX):])
        except json.JSONDecodeError:
            continue
        key, value = entry.get("key"), entry.get("value")
        values[key] = value
        if key == "generic_message":
            messages.append(str(value))
        meta = entry.get("metadata") or {}
        if meta.get("is_error"):
            errors.append(f"{key}: {value}")
        elif meta.get("is_warning"):
            warnings.append(f"{key}: {value}")
    values["_errors"], values["_warnings"], values["_messages"] = errors, warnings, messages
    return values


def peak_qps(detail: dict) -> float | None:
    """The Server QPS LoadGen's FindPeakPerformance mode settled on, if it did."""
    marker = "Found peak performance field:"
    for message in reversed(detail.get("_messages", [])):
        if marker in message:
            return float(message.split(marker, 1)[1].strip())
    return None


def scenario_key(scenario: str, detail: dict) -> str:
    """The metric MLPerf reports for a scenario (throughput, or a latency percentile in ns)."""
    if scenario == "Offline":
        return "result_samples_per_second"
    if scenario == "Server":
        return "result_completed_samples_per_sec"
    percentile = 100 * float(detail.get("effective_target_latency_percentile",
                                        0.9 if scenario == "SingleStream" else 0.99))
    per_query = "per_query_" if scenario == "MultiStream" else ""
    return f"result_{percentile:.2f}_percentile_{per_query}latency_ns"


_COPIED = (
    "result_validity", "result_min_duration_met", "result_min_queries_met", "result_perf_constraints_met",
    "early_stopping_met", "early_stopping_result", "result_query_count", "result_overlatency_query_count",
    "result_scheduled_samples_per_sec", "result_completed_samples_per_sec", "result_samples_per_second",
    "result_mean_latency_ns", "result_50.00_percentile_latency_ns", "result_90.00_percentile_latency_ns",
    "result_99.00_percentile_latency_ns", "result_99.90_percentile_latency_ns", "result_max_latency_ns",
    "effective_min_duration_ms", "effective_min_query_count", "effective_samples_per_query",
    "effective_target_qps", "effective_target_latency_ns", "effective_target_latency_percentile",
    "effective_performance_sample_count", "effective_accuracy_sample_count", "loadgen_version",
)


def performance_result(cfg: BenchConfig, detail: dict, mean_pairs: float) -> dict:
    """The MLPerf-shaped fields of a run (performance fields only outside accuracy mode)."""
    key = scenario_key(cfg.scenario, detail)
    result = {
        "benchmark_short": "dlrm",
        "benchmark_full": f"dlrm-{100 * cfg.accuracy_target:g}",
        "config_ver": cfg.config_ver,
        "scenario": cfg.scenario,
        "test_mode": cfg.test_mode,
        "scenario_key": key,
    }
    result.update({k: detail[k] for k in _COPIED if k in detail})
    if "result_invalid_reason" in detail:
        result["result_invalid_reason"] = detail["result_invalid_reason"].strip()
    result["loadgen_errors"] = detail["_errors"]
    result["loadgen_warnings"] = detail["_warnings"]
    if cfg.test_mode == "AccuracyOnly":
        return result
    value = detail.get(key)
    result[key] = value
    result["satisfies_query_constraint"] = bool(detail.get("result_min_queries_met", False))
    reasons = [r.strip() for r in detail.get("result_invalid_reason", "").split(". ") if r.strip()]
    if detail.get("early_stopping_met") is False:
        reasons.append("early stopping not met:" + detail.get("early_stopping_result", "").replace("  ", " ").rstrip())
    result["invalid_reasons"] = reasons
    result["mean_pairs_per_sample"] = mean_pairs
    if key.endswith("_per_second") or key.endswith("_per_sec"):
        result["samples_per_second"] = value
        result["pairs_per_second"] = None if value is None else value * mean_pairs
    validity = detail.get("result_validity", "UNKNOWN")
    shown = f"{value:,.1f}" if isinstance(value, float) else f"{value}"
    pairs = f" ({result['pairs_per_second']:,.0f} pairs/s)" if result.get("pairs_per_second") else ""
    result["summary_string"] = (f"{key}: {shown}{pairs}, Result is {validity}, "
                                f"min duration met: {detail.get('result_min_duration_met')}")
    if cfg.test_mode == "FindPeakPerformance":
        result["peak_qps"] = peak_qps(detail)
        result["summary_string"] = f"peak Server QPS: {result['peak_qps']}; last run: " + result["summary_string"]
    return result


def accuracy_block(metrics: dict, reference_auc: float, target: float) -> dict:
    """MLPerf's accuracy entry: AUC in percent against ``target`` x the FP32 reference AUC."""
    value = 100 * metrics["auc"]
    threshold = 100 * target * reference_auc
    passed = value >= threshold
    return {
        "accuracy": [{"name": "AUC", "value": value, "threshold": threshold, "pass": passed}],
        "accuracy_pass": passed,
        "summary_string": f"[{'PASSED' if passed else 'FAILED'}] AUC: {value:.3f} (Threshold={threshold:.3f})",
    }
