"""LoadGen benchmark of the kaggle DLRM on this machine: Offline samples/s, Server QPS at the
60 ms p99 bound, and the LoadGen + SUT overhead against a model that returns at once; then the
same per inference variant (table/MLP precision, row placement).

    python benchmarks/bench_loadgen.py [--rows 2000000] [--duration 10000] [--out runs/bench_loadgen]

Data: synthetic Criteo-like rows with the full Kaggle table sizes (33.8M embedding rows, dim 16),
the test split grouped by MLPerf's query-size distribution (mean ~270 pairs per sample). The
model is the kaggle preset with its initial weights (speed does not depend on training).
Every variant runs in this one process, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from dlrmkit.bench.aggregation import aggregate_offsets
from dlrmkit.bench.qsl import SampleLibrary
from dlrmkit.bench.run import run_benchmark
from dlrmkit.config import MLPERF_QUERY_SIZE_QUANTILE, AggregationConfig, BenchConfig, Precision, SynthConfig, preset
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.allocator import retain_freed_memory
from dlrmkit.infer.placement import place_by_frequency
from dlrmkit.infer.onnx_backend import OnnxPredictor
from dlrmkit.infer.onnx_export import export_in_precision
from dlrmkit.infer.quantize import calibration_batches, embedding_bytes, quantize_model
from dlrmkit.model import build_model
from timing import seconds_per_call

SERVER_BOUND_MS = 60.0  # mlperf.conf: dlrm.Server.target_latency = 60


def instant(dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """A model that returns at once: what is left of a run's time is LoadGen's and the SUT's."""
    return np.zeros(dense.shape[0], dtype=np.float32)


instant.name = "instant"


def model_only(predict, split, max_batchsize: int) -> float:
    """Samples/s of the bare predictor on batches of max_batchsize samples (no LoadGen, no SUT)."""
    offsets = aggregate_offsets(len(split), AggregationConfig(quantile=MLPERF_QUERY_SIZE_QUANTILE))
    qsl = SampleLibrary(split, offsets)
    qsl.load(list(range(qsl.total_count)))
    rng = np.random.default_rng(0)
    batches = [qsl.gather(rng.integers(0, qsl.total_count, max_batchsize)) for _ in range(8)]
    it = iter(range(1 << 30))

    def step():
        dense, sparse, _, _ = batches[next(it) % len(batches)]
        predict(dense, sparse)

    return max_batchsize / seconds_per_call(step, steps=8, warmup=4, repeats=3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="synthetic rows (the test split is 1/14)")
    p.add_argument("--duration", type=int, default=10_000, help="min duration of each LoadGen run, ms")
    p.add_argument("--batch-sizes", default="32,128", help="max_batchsize values (samples) to compare")
    p.add_argument("--variants", default="fp32:fp32:file,int8-rowwise:bf16:file,int8-rowwise:int8-static:file,"
                                         "int8-rowwise:bf16:file:torch-compile,fp32:fp32:file:onnxruntime",
                   help="tables:MLPs:placement[:backend] to compare (placement: file or frequency; backend: torch, "
                        "torch-compile, onnxruntime)")
    p.add_argument("--server-fractions", default="0.5,0.65,0.8,0.9",
                   help="Server target QPS tried, as fractions of the best Offline samples/s")
    p.add_argument("--out", default="runs/bench_loadgen")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--no-retain-memory", action="store_true",
                   help="leave glibc's malloc thresholds alone (the CLI raises them)")
    args = p.parse_args(argv)
    if not args.no_retain_memory:
        retain_freed_memory()  # as the dlrmkit CLI does
    out = Path(args.out)
    data = out / "data"
    if not (data / "metadata.json").exists():
        synth.write_binary(SynthConfig(rows=args.rows, seed=0), data, progress=False)
    dataset = Dataset(data)
    split = dataset.split("test")
    torch.manual_seed(0)
    base = build_model(preset("kaggle", dataset.table_sizes), seed=0, sparse_grad=False)
    predictor = TorchPredictor(base)
    aggregation = AggregationConfig(quantile=MLPERF_QUERY_SIZE_QUANTILE)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
          f"test split {len(split):,} pairs; kaggle preset, {sum(dataset.table_sizes):,} embedding rows", flush=True)

    def offline(predict, bs: int, threads: int, tag: str, qps: float | None = None) -> dict:
        cfg = BenchConfig(scenario="Offline", max_batchsize=bs, threads=threads, duration_ms=args.duration,
                          fast=True, target_qps=qps)
        r = run_benchmark(predict, split, cfg, aggregation, out / tag, plots=False, log=lambda _: None)
        return {"samples_per_s": r["samples_per_second"], "pairs_per_s": r["pairs_per_second"],
                "expected_qps": r["effective_target_qps"], "query_samples": r["effective_samples_per_query"],
                "validity": r["result_validity"], "max_batchsize": bs, "threads": threads}

    results: dict = {"rows": args.rows, "test_pairs": len(split), "duration_ms": args.duration, "offline": {},
                     "retain_freed_memory": not args.no_retain_memory}
    # One model call per LoadGen batch, or calls of 2048 pairs (TorchPredictor's CPU default)?
    whole = TorchPredictor(predictor.model, max_pairs_per_call=1 << 62)
    results["bare_128_whole"] = model_only(whole, split, 128)
    results["bare_128_chunked"] = model_only(predictor, split, 128)
    print(f"bare model, 128-sample batches (~35k pairs): {results['bare_128_whole']:,.1f} samples/s in one call, "
          f"{results['bare_128_chunked']:,.1f} in calls of {predictor.max_pairs_per_call} pairs "
          f"(x{results['bare_128_chunked'] / results['bare_128_whole']:.2f})", flush=True)
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        torch.set_num_threads(2)
        bare = model_only(predictor, split, bs)  # one caller, the main thread, 2 torch threads
        for threads in (1, 2):
            torch.set_num_threads(max(1, 2 // threads))
            tag = f"bs{bs}-t{threads}"
            model = offline(predictor, bs, threads, f"offline-{tag}")
            # the same query (sample count) as the model's run, answered at once
            null = offline(instant, bs, threads, f"instant-{tag}", model["expected_qps"])
            model.update(model_only_samples_per_s=bare,
                         loadgen_sut_overhead=model["samples_per_s"] / null["samples_per_s"],
                         vs_model_only=model["samples_per_s"] / bare,
                         instant_samples_per_s=null["samples_per_s"])
            results["offline"][tag] = model
            print(f"Offline {tag}: {model['samples_per_s']:,.1f} samples/s ({model['pairs_per_s']:,.0f} pairs/s) "
                  f"{model['validity']}; bare model {bare:,.1f} samples/s (x{model['vs_model_only']:.3f}); "
                  f"instant model {null['samples_per_s']:,.0f} samples/s -> LoadGen+SUT overhead "
                  f"{100 * model['loadgen_sut_overhead']:.2f}% of the Offline time", flush=True)

    best_tag = max(results["offline"], key=lambda t: results["offline"][t]["samples_per_s"])
    best = results["offline"][best_tag]
    bs, threads = best["max_batchsize"], best["threads"]
    torch.set_num_threads(max(1, 2 // threads))

    # Precision and placement variants, each: Offline, then Server at fractions of its Offline rate.
    results["variants"] = []
    for spec in args.variants.split(","):
        emb, mlp, placement, *rest = spec.split(":")
        backend = rest[0] if rest else "torch"
        precision = Precision(emb, mlp)
        model = copy.deepcopy(base)
        calibration = calibration_batches(dataset.split("val")) if mlp == "int8-static" else None
        if backend != "onnxruntime":  # ONNX Runtime's export quantizes the model itself
            quantize_model(model, precision, calibration)
        if placement == "frequency":
            place_by_frequency(model, dataset)
        if backend == "onnxruntime":
            variant = OnnxPredictor(export_in_precision(model, precision, out / "model.onnx", 13),
                                    threads=torch.get_num_threads(), precision=precision)
        else:
            variant = TorchPredictor(model, precision=precision, compile=backend == "torch-compile")
        name = f"{backend} {emb}/{mlp}/{placement}"
        row = {"variant": name, "backend": backend, "precision": precision.to_dict(), "placement": placement,
               "table_mib": embedding_bytes(model) / 2**20, "max_batchsize": bs, "threads": threads}
        tag = f"{backend}-{emb}-{mlp}-{placement}"
        row["offline"] = offline(variant, bs, threads, f"variant-{tag}")
        print(f"{name}: Offline {row['offline']['samples_per_s']:,.1f} samples/s "
              f"({row['offline']['pairs_per_s']:,.0f} pairs/s) {row['offline']['validity']}; "
              f"tables {row['table_mib']:,.0f} MiB", flush=True)
        row["server"] = []
        for fraction in (float(f) for f in args.server_fractions.split(",")):
            qps = fraction * row["offline"]["samples_per_s"]
            cfg = BenchConfig(scenario="Server", max_batchsize=bs, threads=threads, duration_ms=args.duration,
                              fast=True, target_qps=qps)
            r = run_benchmark(variant, split, cfg, aggregation, out / f"server-{tag}-{fraction:g}",
                              log=lambda _: None)
            point = {"target_qps": qps, "completed_samples_per_s": r["samples_per_second"],
                     "pairs_per_s": r["pairs_per_second"], "p99_ms": r["result_99.00_percentile_latency_ns"] / 1e6,
                     "validity": r["result_validity"]}
            row["server"].append(point)
            print(f"  Server target {qps:,.1f} QPS: {point['completed_samples_per_s']:,.1f} samples/s "
                  f"({point['pairs_per_s']:,.0f} pairs/s), p99 {point['p99_ms']:.1f} ms, {point['validity']}", flush=True)
        valid = [p for p in row["server"] if p["validity"] == "VALID" and p["p99_ms"] <= SERVER_BOUND_MS]
        row["server_qps_at_bound"] = max((p["completed_samples_per_s"] for p in valid), default=None)
        print(f"  {name}: Server {row['server_qps_at_bound'] or 0:,.1f} QPS within the {SERVER_BOUND_MS:g} ms p99 bound",
              flush=True)
        results["variants"].append(row)
        del model, variant
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
