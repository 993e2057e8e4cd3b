"""The README's main job: synthetic Criteo logs -> preprocessing -> the kaggle DLRM -> test AUC ->
MLPerf LoadGen runs (Offline and Server, performance and accuracy).

Each step is the same plain function the CLI verbs call; the demo only chains them and prints
what a user wants to see: test AUC beside the oracle AUC, throughput, and where the files are.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

from dlrmkit.bench.run import run_benchmark
from dlrmkit.checkpoint import load_checkpoint, model_from_checkpoint
from dlrmkit.config import (MLPERF_QUERY_SIZE_QUANTILE, PRECISION_FOR_CONFIG_VER, AggregationConfig, BenchConfig,
                            PreprocessConfig, SynthConfig, TrainConfig, preset)
from dlrmkit.data import synth
from dlrmkit.data.preprocess import preprocess
from dlrmkit.data.dataset import Dataset, write_json_atomic
from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.quantize import quantize_model
from dlrmkit.train.evaluate import evaluate
from dlrmkit.train.loop import train

DEMO_ROWS = 4_000_000
# Kaggle table sizes x 0.01 (the largest table 100k rows, 338k rows in all): with a few million
# rows, the full 33.8M-row tables would mostly hold rows seen once, whose noise costs AUC.
DEMO_CARDINALITY_SCALE = 0.01
DEMO_TRAIN = TrainConfig(optimizer="adagrad", learning_rate=0.02, batch_size=2048, epochs=1.0,
                         eval_every=500, eval_max_rows=100_000, threads=None)


def run_demo(out: str | os.PathLike, rows: int = DEMO_ROWS, seed: int = 0, train_cfg: TrainConfig = DEMO_TRAIN,
             preset_name: str = "kaggle", cardinality_scale: float = DEMO_CARDINALITY_SCALE, progress: bool = True,
             bench_duration_ms: int | None = None) -> dict:
    """Run the whole road under ``out``: data/, run/, demo.json. Returns the demo's figures."""
    out = Path(out)
    t0 = time.perf_counter()
    raw_dir, data_dir, run_dir = out / "raw", out / "data", out / "run"
    print(f"[1/5] synth: {rows:,} Criteo-like rows as Kaggle train.txt text (table sizes x {cardinality_scale}) "
          f"-> {raw_dir}", flush=True)
    meta = synth.write_raw(SynthConfig(rows=rows, seed=seed, cardinality_scale=cardinality_scale), raw_dir,
                           progress=progress)
    print(f"[2/5] preprocess: {raw_dir / 'train.txt'} -> {data_dir} (frequency vocabulary, reference splits)",
          flush=True)
    prep = preprocess(PreprocessConfig(dataset="kaggle", inputs=(str(raw_dir / "train.txt"),), vocab="frequency"),
                      data_dir, progress=progress)
    dataset = Dataset(data_dir)
    model_cfg = preset(preset_name, dataset.table_sizes)
    print(f"[3/5] train: the {preset_name} DLRM ({sum(model_cfg.table_sizes):,} embedding rows) for "
          f"{train_cfg.epochs:g} epoch(s) of {dataset.splits['train']:,} rows -> {run_dir}", flush=True)
    summary = train(data_dir, run_dir, model_cfg, train_cfg, progress=progress)
    print(f"[4/5] evaluate: {run_dir / 'checkpoint.pt'} on the test split", flush=True)
    model, cfg = model_from_checkpoint(load_checkpoint(run_dir / "checkpoint.pt"))
    test = evaluate(model, dataset.split("test"), max_index_range=cfg.max_index_range)
    bench_dir = out / "bench"
    precision = PRECISION_FOR_CONFIG_VER["default"]
    print(f"[5/5] bench: MLPerf LoadGen, Offline and Server, performance and accuracy (--fast), {precision} "
          f"(the default config version's) -> {bench_dir}", flush=True)
    quantized = quantize_model(copy.deepcopy(model), precision)
    bench = run_bench_table(TorchPredictor(quantized, cfg.max_index_range, precision=precision), dataset,
                            test["auc"], bench_dir, bench_duration_ms)
    result = {
        "test_auc": test["auc"],
        "oracle_test_auc": meta["oracle_auc"]["test"],
        "test_log_loss": test["log_loss"],
        "test_accuracy": test["accuracy"],
        "train_samples_per_s": summary["train_samples_per_s"],
        "synth_rows_per_s": meta["generation"]["rows_per_s"],
        "preprocess_rows_per_s": prep["preprocess"]["rows_per_s"],
        "steps": summary["steps"],
        "bench": bench,
        "seconds": time.perf_counter() - t0,
        "data": str(data_dir),
        "run": str(run_dir),
    }
    write_json_atomic(out / "demo.json", result)
    print()
    print(f"test AUC     {result['test_auc']:.4f}   (oracle AUC {result['oracle_test_auc']:.4f}, "
          f"gap {result['oracle_test_auc'] - result['test_auc']:.4f}; a constant predictor scores 0.5)")
    print(f"log loss     {result['test_log_loss']:.4f}   accuracy {result['test_accuracy']:.4f} "
          f"on {test['rows']:,} test rows")
    print(f"throughput   {result['train_samples_per_s'] / 1e3:.1f}k samples/s training; "
          f"{result['synth_rows_per_s'] / 1e3:.0f}k rows/s synthetic text; "
          f"{result['preprocess_rows_per_s'] / 1e3:.0f}k rows/s preprocessing")
    print()
    print_bench_table(bench)
    print()
    print(f"artifacts    {raw_dir} (train.txt), {data_dir} (dataset), {run_dir} (checkpoint.pt, metrics.jsonl, "
          f"summary.json), {bench_dir} (LoadGen logs, result.json, plots), {out / 'demo.json'}")
    print(f"total        {result['seconds']:.0f} s")
    return result


def run_bench_table(predict, dataset: Dataset, fp32_auc: float, out: Path,
                    duration_ms: int | None = None) -> list[dict]:
    """Offline and Server, performance then accuracy, with MLPerf's query-size distribution."""
    aggregation = AggregationConfig(quantile=MLPERF_QUERY_SIZE_QUANTILE)
    rows = []
    for scenario in ("Offline", "Server"):
        for mode in ("PerformanceOnly", "AccuracyOnly"):
            # The test split is the whole accuracy set, so evaluate's AUC (FP32) is the reference.
            cfg = BenchConfig(scenario=scenario, test_mode=mode, fast=True, duration_ms=duration_ms,
                              reference_auc=fp32_auc)
            r = run_benchmark(predict, dataset.split("test"), cfg, aggregation, out / f"{scenario}-{mode}",
                              log=lambda _: None)
            rows.append({k: r.get(k) for k in ("scenario", "test_mode", "scenario_key", "result_validity",
                                                 "samples_per_second", "pairs_per_second", "roc_auc",
                                                 "accuracy_pass", "result_99.00_percentile_latency_ns",
                                                 "effective_target_latency_ns")}
                        | {"threshold": r["accuracy"][0]["threshold"] / 100 if "accuracy" in r else None})
            print(f"      {scenario} {mode}: {r['summary_string']}", flush=True)
    return rows


def print_bench_table(rows: list[dict]) -> None:
    print(f"{'scenario':<9} {'mode':<12} {'result':<46} {'validity':<9} {'AUC':<7} pass")
    for r in rows:
        if r["test_mode"] == "AccuracyOnly":
            result, validity = "", ""
            auc = f"{r['roc_auc']:.4f}"
            passed = f"{'yes' if r['accuracy_pass'] else 'NO'} (>= {r['threshold']:.4f})"
        else:
            result = f"{r['samples_per_second']:,.0f} samples/s ({r['pairs_per_second']:,.0f} pairs/s)"
            if r["scenario"] == "Server":
                p99 = r["result_99.00_percentile_latency_ns"] / 1e6
                result += f", p99 {p99:.1f} ms"
            validity, auc, passed = r["result_validity"], "", ""
        print(f"{r['scenario']:<9} {r['test_mode'].replace('Only', ''):<12} {result:<46} {validity:<9} {auc:<7} {passed}")
