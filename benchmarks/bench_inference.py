"""Inference variants side by side: FP32, bf16 and int8 MLPs, int8 tables (row-wise, per table),
and the torch.compile and ONNX Runtime backends (FP32, int8 tables, int8 MLPs).

    python benchmarks/bench_inference.py [--shapes kaggle,terabyte] [--batch-size 2048] [--threads 2]
        [--device cuda]   # on a GPU: the torch variants without int8 MLPs
        [--checkpoint CKPT --data DATA]   # also each variant's AUC on DATA's test split

Speed: the TorchPredictor as `dlrmkit bench` runs it (numpy in, probabilities out, calls of 2048
pairs), on random inputs: 26 tables of --rows-per-table rows, the kaggle shape (dim 16,
13-512-256-64-16, 512-256-1) and the MLPerf terabyte shape (dim 128, 13-512-256-128,
1024-1024-512-256-1). The DLRM reference script's forward ran 99k (kaggle) and 26k (terabyte)
samples/s on this machine. Each figure is the median of --repeats timed runs after warm-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time

import numpy as np
import torch

from dlrmkit.config import Precision, preset
from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.allocator import retain_freed_memory
from dlrmkit.infer.quantize import embedding_bytes, quantize_model
from dlrmkit.model import build_model
from timing import seconds_per_call

REFERENCE = {"kaggle": 99_000, "terabyte": 26_000}  # DLRM reference forward, samples/s, this machine
DEFAULT = Precision("int8-rowwise", "bf16")
VARIANTS = [Precision("fp32", "fp32"), Precision("fp32", "bf16"), Precision("int8-rowwise", "fp32"),
            Precision("int8-table", "fp32"), Precision("int8-rowwise", "int8"), Precision("int8-rowwise", "bf16"),
            Precision("int8-table", "bf16"), Precision("int8-rowwise", "int8-static")]
# ONNX Runtime: FP32 or int8 tables; FP32 or int8 MLPs (its dynamic quantization)
ONNX_VARIANTS = [Precision(), Precision("fp32", "int8"), Precision("int8-rowwise", "fp32"),
                 Precision("int8-rowwise", "int8")]


def mlp_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("embeddings"))


def speed(shape: str, rows: int, batch: int, steps: int, repeats: int, device: str = "cpu") -> list[dict]:
    cfg = preset(shape, (rows,) * 26)
    cfg = type(cfg)(**{**cfg.to_dict(), "max_index_range": None})
    # on a GPU the copies and the int8 quantization run there too (minutes on the host for 1M-row tables)
    base = build_model(cfg, seed=0, sparse_grad=False).eval().to(device)
    rng = np.random.default_rng(0)
    dense = rng.random((batch, 13), dtype=np.float32)
    sparse = rng.integers(0, rows, (batch, 26)).astype(np.int32)
    out = []
    runs = [("torch", p) for p in VARIANTS] + [("torch-compile", Precision()), ("torch-compile", DEFAULT)] + \
        [("onnxruntime", p) for p in ONNX_VARIANTS]
    if device != "cpu":  # PyTorch's int8 matmuls and this ONNX Runtime build are CPU-only
        runs = [(b, p) for b, p in runs if b != "onnxruntime" and p.mlp not in ("int8", "int8-static")]
    calibration = [(torch.from_numpy(dense), torch.from_numpy(sparse.astype(np.int64)))]
    for backend, precision in runs:
        model, predict = predictor(backend, copy.deepcopy(base), precision, calibration, device)
        rate = batch / seconds_per_call(lambda: predict(dense, sparse), steps, 5, repeats)
        row = {"shape": shape, "device": device, "backend": backend, "precision": precision.to_dict(),
               "samples_per_s": rate,
               "vs_reference": rate / REFERENCE[shape], "table_mib": embedding_bytes(model) / 2**20,
               "mlp_mib": mlp_bytes(base) / 2**20}
        out.append(row)
        print(f"| {shape} | {backend} | {precision.embeddings} | {precision.mlp} | {rate / 1e3:,.1f}k | "
              f"{row['vs_reference']:.2f}x | {row['table_mib']:,.0f} MiB |", flush=True)
        model = predict = None  # free the tables before the next variant
    return out


def predictor(backend: str, model, precision: Precision, calibration, device: str = "cpu",
              max_index_range: int | None = None):
    """(model, predictor) of ``backend`` in ``precision``, as `dlrmkit bench` builds them."""
    if backend != "onnxruntime":
        model = quantize_model(model, precision, calibration)
        return model, TorchPredictor(model, max_index_range, precision=precision, compile=backend == "torch-compile",
                                     device=device)
    import tempfile

    from dlrmkit.infer.onnx_backend import OnnxPredictor
    from dlrmkit.infer.onnx_export import export_in_precision

    with tempfile.TemporaryDirectory() as tmp:
        path = export_in_precision(model, precision, f"{tmp}/m.onnx", model.bottom[0].in_features)
        return model, OnnxPredictor(path, max_index_range, threads=torch.get_num_threads(), precision=precision)


def accuracy(checkpoint: str, data: str) -> list[dict]:
    from dlrmkit.data.dataset import Dataset
    from dlrmkit.infer.quantize import load_for_inference
    from dlrmkit.metrics import roc_auc

    from dlrmkit.infer.quantize import calibration_batches

    test = Dataset(data).split("test")
    val = Dataset(data).split("val")
    labels = np.asarray(test.label, dtype=np.float64)
    dense, sparse = np.array(test.dense), np.array(test.sparse)
    out, fp32_auc = [], None
    for backend, precision in [("torch", p) for p in VARIANTS] + [("onnxruntime", p) for p in ONNX_VARIANTS[1:]]:
        model, cfg, _, _, _ = load_for_inference(checkpoint)
        calibration = calibration_batches(val, max_index_range=cfg.max_index_range)  # MLPerf-style: val rows
        _, predict = predictor(backend, model, precision, calibration, max_index_range=cfg.max_index_range)
        auc = roc_auc(labels, predict(dense, sparse).astype(np.float64))
        fp32_auc = fp32_auc or auc
        out.append({"backend": backend, "precision": precision.to_dict(), "auc": auc, "of_fp32": auc / fp32_auc})
        print(f"| {backend} | {precision.embeddings} | {precision.mlp} | {auc:.6f} | {100 * auc / fp32_auc:.3f}% |",
              flush=True)
    return out


def placement(data: str, pairs: int = 40960, seconds: float = 4.0) -> list[dict]:
    """Row layouts of the kaggle model on DATA's tables, fed DATA's test rows: file order, a random
    order (as hashed indices scatter hot rows), sorted across tables, sorted within tables."""
    from dlrmkit.data.dataset import Dataset
    from dlrmkit.infer.placement import frequency_order, reorder_rows, row_counts

    dataset = Dataset(data)
    test = dataset.split("test")
    dense, sparse = np.array(test.dense[:pairs]), np.array(test.sparse[:pairs])
    base = build_model(preset("kaggle", dataset.table_sizes), seed=0, sparse_grad=False).eval()
    counts = row_counts(dataset, dataset.table_sizes)
    layouts = {"file": None, "random": np.random.default_rng(0).permutation(counts.size),
               "across tables": frequency_order(counts), "within tables": frequency_order(counts, dataset.table_sizes)}
    out = []
    for precision in (Precision(), Precision("int8-rowwise", "bf16")):
        for name, order in layouts.items():
            model = copy.deepcopy(base)
            if order is not None:
                reorder_rows(model, order)
            predict = TorchPredictor(quantize_model(model, precision), precision=precision)
            rows = sparse if predict.prepare is None else predict.prepare(sparse)
            rate = pairs / seconds_per_call(lambda: predict(dense, rows), 3, 2, 5)
            out.append({"precision": precision.to_dict(), "layout": name, "pairs_per_s": rate})
            print(f"| {precision.embeddings} / {precision.mlp} | {name} | {rate / 1e3:,.1f}k |", flush=True)
            model = predict = None  # free the tables before the next variant
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="kaggle,terabyte")
    p.add_argument("--rows-per-table", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the model runs (inputs come from numpy)")
    p.add_argument("--checkpoint")
    p.add_argument("--data")
    p.add_argument("--placement-data", help="also compare row layouts on this dataset's tables and test rows")
    p.add_argument("--json")
    args = p.parse_args(argv)
    retain_freed_memory()  # as the dlrmkit CLI does
    torch.set_num_threads(args.threads)
    results = {"machine": platform.processor() or platform.machine(), "device": args.device, "torch": torch.__version__,
               "threads": args.threads, "batch_size": args.batch_size, "date": time.strftime("%Y-%m-%d"),
               "speed": [], "accuracy": []}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} CPU threads"
    print(f"batch {args.batch_size}, {where}, torch {torch.__version__}, {args.rows_per_table:,} rows per table")
    print("| shape | backend | tables | MLPs | samples/s | vs DLRM reference | tables in memory |")
    print("|---|---|---|---|---|---|---|")
    for shape in filter(None, args.shapes.split(",")):  # --shapes "": accuracy only
        results["speed"] += speed(shape, args.rows_per_table, args.batch_size, args.steps, args.repeats,
                                  args.device)
        save(results, args.json)  # each shape as it is done: a run cut short keeps what it measured
    if args.checkpoint and args.data:
        print(f"\nAUC on the test split of {args.data} ({args.checkpoint})")
        print("| backend | tables | MLPs | AUC | of FP32 |")
        print("|---|---|---|---|---|")
        results["accuracy"] = accuracy(args.checkpoint, args.data)
    if args.placement_data:
        print(f"\nrow layouts, {args.placement_data}: pairs/s over its first 40,960 test pairs")
        print("| tables / MLPs | layout | pairs/s |")
        print("|---|---|---|")
        results["placement"] = placement(args.placement_data)
    save(results, args.json)
    return 0


def save(results: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
