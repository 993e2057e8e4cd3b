"""The README's main job, end to end at a small scale: synth -> preprocess -> train -> evaluate ->
LoadGen Offline and Server in performance and accuracy mode."""

from __future__ import annotations

import json

import pytest

from dlrmkit.config import TrainConfig
from dlrmkit.demo import run_demo


def test_demo_runs_the_whole_road_and_reports_the_bench_table(tmp_path, capsys):
    train_cfg = TrainConfig(optimizer="adagrad", learning_rate=0.02, batch_size=1024, epochs=1.0, threads=1)
    result = run_demo(tmp_path, rows=60_000, train_cfg=train_cfg, preset_name="tiny", progress=False,
                      bench_duration_ms=300)
    assert json.loads((tmp_path / "demo.json").read_text())["test_auc"] == result["test_auc"]
    rows = {(r["scenario"], r["test_mode"]): r for r in result["bench"]}
    assert set(rows) == {(s, m) for s in ("Offline", "Server") for m in ("PerformanceOnly", "AccuracyOnly")}
    for scenario in ("Offline", "Server"):
        perf, acc = rows[scenario, "PerformanceOnly"], rows[scenario, "AccuracyOnly"]
        assert perf["samples_per_second"] > 0 and perf["result_validity"] in ("VALID", "INVALID")
        # the accuracy run covers the whole test split in the default precision (int8 tables, bf16
        # MLPs); its reference is evaluate's FP32 AUC on the same rows
        assert acc["threshold"] == pytest.approx(0.99 * result["test_auc"])
        assert acc["roc_auc"] != result["test_auc"] and abs(acc["roc_auc"] - result["test_auc"]) < 0.01
        assert acc["accuracy_pass"] is True
        assert (tmp_path / "bench" / f"{scenario}-AccuracyOnly" / "mlperf_log_accuracy.json").exists()
        assert (tmp_path / "bench" / f"{scenario}-PerformanceOnly" / "result.json").exists()
    table = capsys.readouterr().out
    assert "scenario" in table and "Server" in table and "pairs/s" in table
