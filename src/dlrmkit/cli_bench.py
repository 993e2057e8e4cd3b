"""The ``bench`` and ``accuracy`` verbs of the command line (flags as in the MLPerf DLRM harness)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dlrmkit.config import (ACCURACY_TARGETS, EMBEDDING_PRECISIONS, MLP_PRECISIONS, MLPERF_DLRM_REFERENCE_AUC,
                            MLPERF_QUERY_SIZE_QUANTILE, PRECISION_FOR_CONFIG_VER, SCENARIOS, TEST_MODES,
                            AggregationConfig, BenchConfig, Precision)
from dlrmkit.errors import ConfigError

# As in the reference harness: a profile fills in options the command line leaves out.
PROFILES = {
    "dlrm-kaggle-pytorch": {"max_batchsize": 128},
    "dlrm-terabyte-pytorch": {"max_batchsize": 2048, "samples_per_query_offline": 204800,
                              "quantile": MLPERF_QUERY_SIZE_QUANTILE, "reference_auc": MLPERF_DLRM_REFERENCE_AUC},
}
DEFAULT_MAX_BATCHSIZE = 128
BACKENDS = ("torch", "torch-compile", "onnxruntime")


def add_bench(sub, positive_int) -> None:
    p = sub.add_parser("bench", help="MLPerf LoadGen run of a checkpoint on a dataset's test split")
    p.add_argument("--checkpoint", "--model-path", required=True,
                   help="dlrmkit or DLRM-reference checkpoint, or the reference's ONNX export (.onnx) "
                        "(--model-path: the reference harness's name)")
    p.add_argument("--data", required=True, help="dlrmkit dataset directory")
    p.add_argument("--split", default="test")
    p.add_argument("--output", required=True, help="directory for LoadGen's logs, result.json and plots")
    p.add_argument("--profile", choices=tuple(PROFILES), help="defaults of the reference harness's profiles")
    p.add_argument("--scenario", choices=SCENARIOS, default="Offline")
    p.add_argument("--test-mode", choices=TEST_MODES, default=None)
    p.add_argument("--accuracy", action="store_true", help="same as --test-mode AccuracyOnly")
    p.add_argument("--find-peak-performance", action="store_true", help="same as --test-mode FindPeakPerformance")
    p.add_argument("--config-ver", choices=tuple(ACCURACY_TARGETS), default="default",
                   help="accuracy target: default 99%%, high_accuracy 99.9%% of the FP32 AUC")
    p.add_argument("--max-batchsize", type=positive_int, help=f"samples per model call (default {DEFAULT_MAX_BATCHSIZE})")
    p.add_argument("--threads", type=positive_int, default=1, help="SUT worker threads")
    p.add_argument("--intra-op-threads", type=positive_int,
                   help="torch threads (default: the cores divided among the SUT threads)")
    p.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda, cuda:N)")
    p.add_argument("--use-gpu", dest="device", action="store_const", const="cuda",
                   help="same as --device cuda (the reference harness's flag; CUDA_VISIBLE_DEVICES picks the GPU)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch: eager PyTorch; torch-compile: torch.compile (inductor); onnxruntime: the model "
                        "exported to OUTPUT/model.onnx (an .onnx --checkpoint as it is), run by ONNX Runtime (FP32 "
                        "unless --embeddings/--mlp ask for int8)")
    p.add_argument("--embeddings", choices=EMBEDDING_PRECISIONS,
                   help="table precision (default: the config version's, "
                        + ", ".join(f"{k}: {v}" for k, v in PRECISION_FOR_CONFIG_VER.items()) + ")")
    p.add_argument("--mlp", choices=MLP_PRECISIONS, help="MLP precision (default: the config version's)")
    p.add_argument("--placement", choices=("file", "frequency"), default="file",
                   help="frequency: rows reordered hottest first by the dataset's training lookups "
                        "(the inputs are remapped when LoadGen loads samples)")
    p.add_argument("--hot-fraction", type=float,
                   help="with --placement frequency: keep this fraction of rows (the most looked-up) in a hot tier "
                        "on --device and the rest in host memory (pinned with CUDA)")
    p.add_argument("--max-ind-range", type=positive_int,
                   help="indices mod N, as the reference harness's flag (for checkpoints that do not record "
                        "their range, e.g. the reference's; MLPerf's tb00_40M: 40000000)")
    p.add_argument("--max-pairs-per-call", type=positive_int,
                   help="split model calls into chunks of this many pairs (default: 2048 on CPU; on GPU none, "
                        "2^18 with torch-compile)")
    p.add_argument("--samples-per-query-offline", type=positive_int,
                   help="samples loaded to RAM for performance runs (mlperf.conf: 204800, capped at the split)")
    p.add_argument("--samples-per-query-multistream", type=positive_int, default=8)
    p.add_argument("--count-samples", type=positive_int, help="use only the first N samples")
    p.add_argument("--count-queries", type=positive_int)
    p.add_argument("--duration", type=positive_int, help="minimum run time in ms")
    p.add_argument("--target-qps", type=float, help="Server target / Offline expected QPS")
    p.add_argument("--max-latency", type=float, help="Server / MultiStream latency bound in seconds")
    p.add_argument("--fast", action="store_true", help="5 s minimum duration, 1 query minimum (not for submission)")
    p.add_argument("--mlperf-conf", "--mlperf_conf", dest="mlperf_conf",
                   help="LoadGen rules file (default: the one built into LoadGen)")
    p.add_argument("--user-conf", "--user_conf", dest="user_conf", help="LoadGen user settings file")
    p.add_argument("--reference-auc", type=float, help="FP32 AUC the accuracy target is relative to "
                   "(default: measured with this checkpoint on the same pairs)")
    g = p.add_argument_group("sample aggregation (default: MLPerf's quantile distribution, 100-700 pairs)")
    g.add_argument("--samples-to-aggregate-fix", type=positive_int)
    g.add_argument("--samples-to-aggregate-min", type=positive_int)
    g.add_argument("--samples-to-aggregate-max", type=positive_int)
    g.add_argument("--samples-to-aggregate-quantile-file")
    g.add_argument("--samples-to-aggregate-trace-file", help="default: OUTPUT/dlrm_trace_of_aggregated_samples.txt")
    g.add_argument("--numpy-rand-seed", type=int, default=123)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true")


def add_accuracy(sub) -> None:
    p = sub.add_parser("accuracy", help="AUC from LoadGen's mlperf_log_accuracy.json (as accuracy-dlrm.py)")
    p.add_argument("--mlperf-accuracy-file", required=True)
    p.add_argument("--dtype", choices=("float32", "int32", "int64"), default="float32")
    p.add_argument("--reference-auc", type=float, help="FP32 AUC; with it, report pass/fail")
    p.add_argument("--config-ver", choices=tuple(ACCURACY_TARGETS), default="default")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--data", help="for logs holding predictions only: the dataset whose labels they predict")
    p.add_argument("--split", default="test")
    p.add_argument("--aggregation-trace-file", help="with --data: the run's dlrm_trace_of_aggregated_samples.txt")


def aggregation_from_args(args, profile: dict) -> AggregationConfig:
    from dlrmkit.bench.aggregation import read_quantile_file

    seed = args.numpy_rand_seed
    if args.samples_to_aggregate_quantile_file:
        return AggregationConfig(quantile=read_quantile_file(args.samples_to_aggregate_quantile_file), seed=seed)
    if args.samples_to_aggregate_min is not None or args.samples_to_aggregate_max is not None:
        return AggregationConfig(min=args.samples_to_aggregate_min, max=args.samples_to_aggregate_max, seed=seed)
    if args.samples_to_aggregate_fix is not None:
        return AggregationConfig(fix=args.samples_to_aggregate_fix, seed=seed)
    return AggregationConfig(quantile=profile.get("quantile", MLPERF_QUERY_SIZE_QUANTILE), seed=seed)


def bench_config_from_args(args) -> BenchConfig:
    profile = PROFILES.get(args.profile, {})
    modes = [m for m, on in (("AccuracyOnly", args.accuracy), ("FindPeakPerformance", args.find_peak_performance)) if on]
    if args.test_mode is not None:
        modes.append(args.test_mode)
    if len(set(modes)) > 1:
        raise argparse.ArgumentTypeError(f"conflicting test modes {sorted(set(modes))}")

    def pick(name: str, default=None):
        value = getattr(args, name)
        return value if value is not None else profile.get(name, default)

    return BenchConfig(
        scenario=args.scenario, test_mode=modes[0] if modes else "PerformanceOnly", config_ver=args.config_ver,
        max_batchsize=pick("max_batchsize", DEFAULT_MAX_BATCHSIZE), threads=args.threads,
        samples_per_query_offline=pick("samples_per_query_offline"),
        samples_per_query_multistream=args.samples_per_query_multistream,
        count_samples=args.count_samples, count_queries=args.count_queries, duration_ms=args.duration,
        target_qps=args.target_qps, max_latency_s=args.max_latency, fast=args.fast,
        mlperf_conf=args.mlperf_conf, user_conf=args.user_conf, reference_auc=pick("reference_auc"))


def resolve_precision(args, checkpoint_precision: Precision, kind: str) -> Precision:
    """The checkpoint's own precision when it is quantized; otherwise the flags, or the config
    version's precision when no flag is given (a missing one of the two flags means FP32)."""
    if kind == "inference":
        wanted = Precision(args.embeddings or checkpoint_precision.embeddings, args.mlp or checkpoint_precision.mlp)
        if wanted != checkpoint_precision:
            raise ConfigError(f"{args.checkpoint} is already quantized ({checkpoint_precision}); "
                              f"give its FP32 checkpoint to run {wanted}")
        return checkpoint_precision
    if args.embeddings is None and args.mlp is None:
        if getattr(args, "backend", "torch") == "onnxruntime":
            return Precision()  # ONNX Runtime: FP32 unless the flags say otherwise
        return PRECISION_FOR_CONFIG_VER[args.config_ver]
    return Precision(args.embeddings or "fp32", args.mlp or "fp32")


def run_bench(args) -> int:
    import torch

    from dlrmkit.bench.run import run_benchmark
    from dlrmkit.data.dataset import Dataset
    from dlrmkit.infer import LazyPredictor, TorchPredictor
    from dlrmkit.infer.backend import check_precision_on_device, device_description, reference_device, torch_device
    from dlrmkit.infer.quantize import embedding_bytes, load_for_inference, quantize_model
    from dlrmkit.train.loop import check_tables

    try:
        cfg = bench_config_from_args(args)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(str(e)) from None
    aggregation = aggregation_from_args(args, PROFILES.get(args.profile, {}))
    torch_device(args.device)  # before loading anything
    # SUT workers share the cores: each gets its share of torch threads unless told otherwise
    torch.set_num_threads(args.intra_op_threads or max(1, (os.cpu_count() or 1) // args.threads))
    dataset = Dataset(args.data)
    model, model_cfg, checkpoint_precision, kind, fp32_source = load_for_inference(args.checkpoint)
    model_cfg = model_cfg.with_max_index_range(args.max_ind_range, str(args.checkpoint))
    check_tables(model_cfg, dataset)
    precision = resolve_precision(args, checkpoint_precision, kind)
    if args.backend != "onnxruntime":  # before quantizing: that takes minutes for large tables
        check_precision_on_device(precision, torch_device(args.device))
    if cfg.test_mode == "AccuracyOnly" and cfg.reference_auc is None and kind == "inference" \
            and (fp32_source is None or not Path(fp32_source).is_file()):
        raise ConfigError(f"{args.checkpoint} is quantized and its FP32 checkpoint ({fp32_source}) is not at hand "
                          f"to measure the reference AUC; give --reference-auc")

    def fp32_predictor() -> TorchPredictor:
        fp32_model, fp32_cfg, fp32_precision, _, _ = load_for_inference(fp32_source)
        if not fp32_precision.is_fp32:  # the source was replaced by a quantized checkpoint since
            raise ConfigError(f"{fp32_source}, the FP32 checkpoint {args.checkpoint} was quantized from, now holds "
                              f"a quantized model ({fp32_precision}); give --reference-auc")
        fp32_cfg = fp32_cfg.with_max_index_range(args.max_ind_range, str(fp32_source))
        device = reference_device(fp32_model, args.device)
        if device != args.device and not args.quiet:
            print(f"the FP32 reference model does not fit in {args.device}'s free memory beside the benchmark's: "
                  f"its AUC is measured on the CPU")
        return TorchPredictor(fp32_model, fp32_cfg.max_index_range, device,
                              args.max_pairs_per_call if device == args.device else None)

    if args.backend == "onnxruntime":
        from dlrmkit.infer.onnx_backend import OnnxPredictor
        from dlrmkit.infer.onnx_export import export_in_precision

        if args.placement == "frequency" or args.hot_fraction is not None:
            raise ConfigError("--placement frequency and --hot-fraction need a torch backend")
        if kind == "reference-onnx" and precision.is_fp32:  # the user's own ONNX file runs as it is
            onnx_path = Path(args.checkpoint)
            if not args.quiet:
                print(f"onnxruntime runs {onnx_path} as the DLRM reference exported it (an ONNX Loop per table); "
                      f"dlrmkit's export of the same weights runs 5-15x faster on CPU: convert it with "
                      f"`dlrmkit quantize --checkpoint {onnx_path} --embeddings fp32 --mlp fp32 --out MODEL.pt`")
        else:
            onnx_path = export_in_precision(model, precision, Path(args.output) / "model.onnx", model_cfg.num_dense)
        predictor = OnnxPredictor(onnx_path, model_cfg.max_index_range, args.intra_op_threads or torch.get_num_threads(),
                                  args.max_pairs_per_call, args.device, precision)
        table_bytes, placement = embedding_bytes(model), "file"
        model = None  # ONNX Runtime holds its own copy of the weights: one copy in memory, not two
    else:
        # before placement: per-table scales see whole tables; int8-static MLPs calibrate on the
        # first rows of the val split, as MLPerf calibrates on a fixed slice
        calibration = None
        if precision.mlp == "int8-static" and "val" in dataset.splits:
            from dlrmkit.infer.quantize import calibration_batches

            calibration = calibration_batches(dataset.split("val"), max_index_range=model_cfg.max_index_range)
        quantize_model(model, precision, calibration)
        if args.hot_fraction is not None:
            from dlrmkit.infer.placement import place_in_tiers

            if args.placement != "frequency" or hasattr(model.embeddings, "row_remap"):
                raise ConfigError("--hot-fraction needs --placement frequency and a checkpoint whose rows are "
                                  "not placed yet (an FP32 one, or quantized without --placement)")
            if not 0 < args.hot_fraction <= 1:
                raise ConfigError(f"--hot-fraction must be in (0, 1], got {args.hot_fraction}")
            place_in_tiers(model, dataset, args.hot_fraction)
        elif args.placement == "frequency" and not hasattr(model.embeddings, "row_remap"):
            from dlrmkit.infer.placement import place_by_frequency

            place_by_frequency(model, dataset)
        predictor = TorchPredictor(model, model_cfg.max_index_range, args.device, args.max_pairs_per_call, precision,
                                   compile=args.backend == "torch-compile")
        table_bytes = embedding_bytes(model)
        placement = "frequency" if hasattr(model.embeddings, "row_remap") else "file"
    # the accuracy target is relative to eager FP32 PyTorch, whatever runs the benchmark
    reference = None if precision.is_fp32 and args.backend == "torch" else LazyPredictor(fp32_predictor)
    describe = {"checkpoint": str(args.checkpoint), "checkpoint_format": kind, "model": model_cfg.to_dict(),
                "device": device_description(args.device),
                "data": str(args.data), "split": args.split, "profile": args.profile,
                "precision": precision.to_dict(), "embedding_bytes": table_bytes, "backend": args.backend,
                "placement": placement, "hot_fraction": args.hot_fraction}
    if not args.quiet:
        print(f"model: {kind} checkpoint {args.checkpoint}; {precision}; tables {table_bytes / 2**20:,.1f} MiB")
    log = (lambda _: None) if args.quiet else print
    result = run_benchmark(predictor, dataset.split(args.split), cfg, aggregation, args.output,
                           reference_predict=reference, trace_file=args.samples_to_aggregate_trace_file, plots=not args.no_plots,
                           describe=describe, log=log, progress=not args.quiet)
    if args.quiet:
        print(result["summary_string"])
    print(f"wrote {Path(args.output) / 'result.json'} and LoadGen's logs")
    return 0


def run_accuracy(args) -> int:
    from dlrmkit.bench.accuracy import accuracy_metrics, read_accuracy_log
    from dlrmkit.bench.results import accuracy_block

    from dlrmkit.errors import ConfigError

    if (args.data is None) != (args.aggregation_trace_file is None):
        raise ConfigError("--data and --aggregation-trace-file go together (logs holding predictions only)")
    labels = offsets = None
    if args.data is not None:
        from dlrmkit.bench.aggregation import read_trace
        from dlrmkit.data.dataset import Dataset

        labels = Dataset(args.data).split(args.split).label
        offsets = read_trace(args.aggregation_trace_file)
    metrics = accuracy_metrics(read_accuracy_log(args.mlperf_accuracy_file, args.dtype, labels, offsets))
    print(f"AUC={100 * metrics['auc']:.3f}%, accuracy={100 * metrics['accuracy']:.3f}%, "
          f"good={metrics['good']}, total={metrics['total']}, queries={metrics['samples']}")
    if args.reference_auc is not None:
        block = accuracy_block(metrics, args.reference_auc, ACCURACY_TARGETS[args.config_ver])
        metrics.update(block)
        print(block["summary_string"])
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n")
    passed = metrics.get("accuracy_pass", True)
    return 0 if passed else 1


def add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="a trained checkpoint -> an inference checkpoint (int8 tables, int8/bf16 MLPs)")
    p.add_argument("--checkpoint", required=True, help="dlrmkit or DLRM-reference FP32 checkpoint, or the reference's ONNX export (.onnx)")
    p.add_argument("--out", required=True)
    p.add_argument("--embeddings", choices=EMBEDDING_PRECISIONS,
                   help="int8-rowwise: a scale and offset per row; int8-table: one symmetric scale per table")
    p.add_argument("--mlp", choices=MLP_PRECISIONS,
                   help="int8: dynamic quantization; int8-static: scales calibrated on the first 128,000 rows of "
                        "--data's val split; bf16: autocast at run time")
    p.add_argument("--config-ver", choices=tuple(ACCURACY_TARGETS), default="default",
                   help="without --embeddings/--mlp: the precision this MLPerf config version runs")
    p.add_argument("--placement", choices=("file", "frequency"), default="file",
                   help="frequency: store the rows hottest first (needs --data: counts from its training rows)")
    p.add_argument("--data", help="the dataset whose training lookups order the rows (--placement frequency)")


def run_quantize(args) -> int:
    from dlrmkit.infer.quantize import embedding_bytes, load_for_inference, quantize_embeddings, save_inference_checkpoint

    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise ConfigError(f"--out {args.out} would replace the FP32 checkpoint it quantizes (accuracy runs "
                          f"measure the reference AUC with it); choose another file")
    model, cfg, checkpoint_precision, kind, _ = load_for_inference(args.checkpoint)
    if kind == "inference":
        raise ConfigError(f"{args.checkpoint} is already quantized ({checkpoint_precision}); give an FP32 checkpoint")
    precision = resolve_precision(args, checkpoint_precision, kind)
    before = embedding_bytes(model)
    needs_data = args.placement == "frequency" or precision.mlp == "int8-static"
    if needs_data and args.data is None:
        raise ConfigError("--placement frequency and --mlp int8-static need --data (training lookups order the "
                          "rows; the first rows of the val split calibrate int8-static MLPs)")
    if precision.embeddings != "fp32":
        quantize_embeddings(model, precision.embeddings.removeprefix("int8-"))
    if precision.mlp == "int8-static":
        from dlrmkit.data.dataset import Dataset
        from dlrmkit.infer.quantize import calibration_batches, quantize_mlps_static

        quantize_mlps_static(model, calibration_batches(Dataset(args.data).split("val"),
                                                        max_index_range=cfg.max_index_range))
    if args.placement == "frequency":
        from dlrmkit.data.dataset import Dataset
        from dlrmkit.infer.placement import place_by_frequency

        place_by_frequency(model, Dataset(args.data))
    after = embedding_bytes(model)
    path = save_inference_checkpoint(args.out, model, cfg, precision, source=str(Path(args.checkpoint).resolve()))
    print(f"wrote {path} ({path.stat().st_size / 2**20:,.1f} MiB): {precision}, rows in {args.placement} order; tables "
          f"{before / 2**20:,.1f} MiB -> {after / 2**20:,.1f} MiB ({before / after:.2f}x smaller)")
    return 0
