"""The DLRM reference's own ONNX export (what MLPerf ships as ONNX weights) against dlrmkit's,
both run by ONNX Runtime, with eager PyTorch on the same weights beside them.

    python benchmarks/bench_reference_onnx.py --reference-dir PATH/TO/facebookresearch-dlrm
        [--shapes kaggle,terabyte] [--rows-per-table 100000] [--batch-size 2048] [--threads 2]

PATH is a checkout of github.com/facebookresearch/dlrm (not part of dlrmkit; its script needs
``tqdm``, ``tensorboard`` and ``onnx``). Per shape, ``dlrm_s_pytorch.py --save-onnx`` trains one
step on random one-hot data and writes its export (inputs dense_x, offsets, indices_<k>); dlrmkit
reads that file's weights (``dlrmkit.reference_onnx``) and exports them its own way. All three
predictors take the same random inputs in calls of --batch-size pairs, as `dlrmkit bench` calls
them; outputs are checked equal (1e-5) before timing. Medians of 5 timed runs after warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.onnx_backend import OnnxPredictor
from dlrmkit.infer.onnx_export import export_onnx
from dlrmkit.reference_checkpoint import load_any_model
from timing import seconds_per_call

SHAPES = {"kaggle": ["--arch-sparse-feature-size=16", "--arch-mlp-bot=13-512-256-64-16", "--arch-mlp-top=512-256-1"],
          "terabyte": ["--arch-sparse-feature-size=128", "--arch-mlp-bot=13-512-256-128",
                       "--arch-mlp-top=1024-1024-512-256-1"]}


def reference_export(reference_dir: Path, shape: str, rows: int, batch: int, folder: Path) -> Path:
    """The reference's --save-onnx of a model of ``shape`` (one training step on random data)."""
    script = reference_dir.resolve() / "dlrm_s_pytorch.py"
    subprocess.run([sys.executable, str(script), *SHAPES[shape], "--arch-embedding-size=" + "-".join([str(rows)] * 26),
                    "--data-generation=random", f"--mini-batch-size={batch}", "--num-batches=1", "--nepochs=1",
                    "--num-indices-per-lookup=1", "--num-indices-per-lookup-fixed=True", "--save-onnx"],
                   cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return folder / "dlrm_s_pytorch.onnx"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference-dir", required=True, type=Path)
    p.add_argument("--shapes", default="kaggle,terabyte")
    p.add_argument("--rows-per-table", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    b, rows = args.batch_size, args.rows_per_table
    rng = np.random.default_rng(0)
    dense = rng.random((b, 13), dtype=np.float32)
    sparse = rng.integers(0, rows, (b, 26))
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, batch {b}, 26 tables of {rows:,} rows, {time.strftime('%Y-%m-%d')}")
    print("| shape | predictor | samples/s | vs the reference's ONNX graph |")
    print("|---|---|---|---|")
    figures = []
    for shape in args.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            t = time.perf_counter()
            theirs = reference_export(args.reference_dir, shape, rows, b, tmp)
            export_s = time.perf_counter() - t
            model, cfg, _ = load_any_model(theirs)
            ours = export_onnx(model, tmp / "dlrmkit.onnx", cfg.num_dense)
            predictors = {"onnxruntime, the reference's export (Loop per EmbeddingBag)": OnnxPredictor(theirs, threads=args.threads, max_pairs_per_call=b),
                          "onnxruntime, dlrmkit's export (one Gather)": OnnxPredictor(ours, threads=args.threads, max_pairs_per_call=b),
                          "eager PyTorch (dlrmkit), same weights": TorchPredictor(model, max_pairs_per_call=b)}
            outputs = {name: predict(dense, sparse) for name, predict in predictors.items()}
            first = next(iter(outputs.values()))
            for name, out in outputs.items():
                np.testing.assert_allclose(out, first, rtol=0, atol=1e-5, err_msg=name)
            base = None
            for name, predict in predictors.items():
                rate = b / seconds_per_call(lambda: predict(dense, sparse), steps=args.steps)
                base = base or rate
                figures.append({"shape": shape, "predictor": name, "samples_per_s": rate, "ratio": rate / base,
                                "reference_export_s": export_s})
                print(f"| {shape} | {name} | {rate / 1e3:.1f}k | {rate / base:.2f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
