"""Training and inference throughput of dlrmkit's DLRM, and where a training step's time goes.

    python benchmarks/bench_model.py [--shape kaggle|terabyte] [--batch-size 2048] [--threads 2]

Shape ``kaggle``: 26 tables of 100k rows, dim 16, bottom 13-512-256-64-16, top 512-256-1 (the
shape the DLRM reference script was measured at on this machine: 33.3k samples/s training, 99k
samples/s forward). Random inputs (uniform indices), FP32 unless noted. Each figure is the
median of ``--repeats`` timed runs of ``--steps`` steps after ``--warmup`` untimed steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from dlrmkit.config import preset
from dlrmkit.model import build_model
from dlrmkit.train.optim import DLRMOptimizer
from timing import seconds_per_call

REFERENCE = {"kaggle": {"train": 33_300, "infer": 99_000}, "terabyte": {"infer": 26_000}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("kaggle", "terabyte"), default="kaggle")
    p.add_argument("--rows-per-table", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = preset(args.shape, (args.rows_per_table,) * 26)
    model = build_model(cfg, seed=0)
    b = args.batch_size
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(b, 13, generator=g)
    indices = torch.randint(0, args.rows_per_table, (b, 26), generator=g)
    label = (torch.rand(b, generator=g) < 0.25).float()
    results: dict = {"shape": args.shape, "batch_size": b, "threads": args.threads, "rows_per_table": args.rows_per_table,
                     "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                     "date": time.strftime("%Y-%m-%d")}
    t = lambda fn: seconds_per_call(fn, args.steps, args.warmup, args.repeats)  # noqa: E731

    def train_step(opt: DLRMOptimizer, bf16: bool = False):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(dense, indices)
            loss = F.binary_cross_entropy_with_logits(logits.float(), label)
            opt.zero_grad()
            loss.backward()
            opt.step(0.01)
        return step

    for name in ("sgd", "adagrad"):
        results[f"train_{name}"] = b / t(train_step(DLRMOptimizer(model, name)))
    results["train_sgd_bf16"] = b / t(train_step(DLRMOptimizer(model, "sgd"), bf16=True))

    def infer(bf16: bool = False):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(dense, indices)
        return run

    results["infer"] = b / t(infer())
    results["infer_bf16"] = b / t(infer(bf16=True))

    # Where a training step's time goes (SGD, FP32): each part run alone, forward + backward (+ update).
    opt = DLRMOptimizer(model, "sgd")
    pooled_grad = torch.randn(b, 26, cfg.embedding_dim, generator=g)

    def embedding_part():
        opt.zero_grad()
        model.embeddings(indices).backward(pooled_grad)
        opt.sparse.step(0.01)

    x = torch.randn(b, cfg.embedding_dim, generator=g)
    pooled = torch.randn(b, 26, cfg.embedding_dim, generator=g)
    inter_grad = torch.randn(b, model.top[0].in_features, generator=g)

    def interaction_part():
        xs, ps = x.clone().requires_grad_(), pooled.clone().requires_grad_()
        model.interaction(xs, ps).backward(inter_grad)

    top_in = torch.randn(b, model.top[0].in_features, generator=g)

    def mlp_part():
        opt.zero_grad()
        bottom = model.bottom(dense)
        logits = model.top(top_in).squeeze(1)
        (F.binary_cross_entropy_with_logits(logits, label) + bottom.sum() * 1e-9).backward()
        opt.dense.step()

    parts = {"embedding": t(embedding_part), "interaction": t(interaction_part), "mlp": t(mlp_part)}
    step_s = b / results["train_sgd"]
    results["step_ms"] = step_s * 1e3
    results["parts_ms"] = {k: v * 1e3 for k, v in parts.items()}
    results["parts_share"] = {k: v / step_s for k, v in parts.items()}

    ref = REFERENCE.get(args.shape, {})
    print(f"DLRM {args.shape} shape, batch {b}, {args.threads} threads, torch {torch.__version__}")
    print("| measure | samples/s | vs DLRM reference |")
    print("|---|---|---|")
    for key, label_ in (("train_sgd", "train, SGD, FP32"), ("train_adagrad", "train, row-wise Adagrad, FP32"),
                        ("train_sgd_bf16", "train, SGD, bf16 autocast"), ("infer", "inference, FP32"),
                        ("infer_bf16", "inference, bf16 autocast")):
        kind = "train" if key.startswith("train") else "infer"
        ratio = f"{results[key] / ref[kind]:.2f}x" if kind in ref else "-"
        print(f"| {label_} | {results[key] / 1e3:.1f}k | {ratio} |")
    print(f"training step (SGD, FP32) {results['step_ms']:.1f} ms; parts alone: " +
          ", ".join(f"{k} {v:.1f} ms ({results['parts_share'][k]:.0%})" for k, v in results["parts_ms"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
