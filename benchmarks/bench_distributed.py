"""Training throughput on 1 and 2 processes (torch.distributed, gloo on CPU), the share of each
step spent in communication, and the bytes each collective moves per step.

    python benchmarks/bench_distributed.py [--shape kaggle|terabyte] [--batch-size 2048]

The driver runs each variant in its own processes: one process (the single-process trainer,
``OneProcess``) with 1 and 2 threads, and 2 processes x 1 thread under ``torchrun`` with
table-wise and row-wise sharding (``Distributed``). Every variant runs the training loop's step
(forward, BCE, backward, gradient all-reduce, SGD or row-wise Adagrad update) on the same
pre-built global batch of random indices; each rank takes its share. Figures are the median of
``--repeats`` runs of ``--steps`` steps after ``--warmup``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from dlrmkit.config import preset
from dlrmkit.data.loader import part_bounds
from dlrmkit.train.optim import DLRMOptimizer
from dlrmkit.train.parallel import Distributed, OneProcess

VARIANTS = {  # name: (processes, threads per process, sharding)
    "1 process x 1 thread": (1, 1, None),
    "1 process x 2 threads": (1, 2, None),
    "2 processes x 1 thread, table-wise": (2, 1, "table-wise"),
    "2 processes x 1 thread, row-wise": (2, 1, "row-wise"),
}


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    cfg = preset(args.shape, (args.rows_per_table,) * 26)
    if args.sharding:
        from dlrmkit.train.comm import join
        from dlrmkit.train.plan import plan_shards

        comm = join("gloo", timeout_s=300)
        par = Distributed(comm, plan_shards(cfg.effective_table_sizes, comm.world_size, args.sharding))
    else:
        comm, par = None, OneProcess()
    model = par.build_model(cfg, seed=0)
    opt = DLRMOptimizer(model, args.optimizer)
    b = args.batch_size
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(b, 13, generator=g)
    indices = torch.randint(0, args.rows_per_table, (b, 26), generator=g)
    label = (torch.rand(b, generator=g) < 0.25).float()
    lo, hi = part_bounds(b, par.rank, par.world_size)
    dense, indices, label = dense[lo:hi], indices[lo:hi], label[lo:hi]

    def step():
        loss = par.loss(model(dense, indices), label, b)
        opt.zero_grad()
        loss.backward()
        par.sync(model, loss)
        opt.step(0.01)

    for _ in range(args.warmup):
        step()
    runs = []
    if comm:
        comm.barrier("timing")
        comm.stats.reset()
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        if comm:
            comm.barrier("timing")
        runs.append((time.perf_counter() - t) / args.steps)
    steps = args.steps * args.repeats
    out = {"samples_per_s": b / statistics.median(runs), "step_ms": statistics.median(runs) * 1e3}
    if comm:
        stats = comm.stats
        total = sum(runs) * args.steps  # seconds timed
        out["comm_share"] = {k: v / total for k, v in stats.seconds.items() if k != "barrier"}
        out["comm_share_total"] = sum(out["comm_share"].values())
        out["bytes_per_step"] = {k: v / steps for k, v in stats.bytes.items() if v}
        out["plan"] = par.plan.describe()
        comm.close()
    return out


def run_variant(args, name: str) -> dict:
    nproc, threads, sharding = VARIANTS[name]
    flags = ["--worker", "--shape", args.shape, "--rows-per-table", str(args.rows_per_table), "--batch-size",
             str(args.batch_size), "--threads", str(threads), "--optimizer", args.optimizer, "--steps",
             str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    script = os.path.abspath(__file__)
    if sharding:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", script,
               *flags, "--sharding", sharding]
    else:
        cmd = [sys.executable, script, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("kaggle", "terabyte"), default="kaggle")
    p.add_argument("--rows-per-table", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--optimizer", choices=("sgd", "adagrad"), default="sgd")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--sharding", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        out = worker(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(out), flush=True)
        return 0

    results = {"shape": args.shape, "batch_size": args.batch_size, "optimizer": args.optimizer,
               "rows_per_table": args.rows_per_table, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d"), "variants": {}}
    for name in args.variants:
        results["variants"][name] = run_variant(args, name)
        print(f"ran {name}", file=sys.stderr)
    base = results["variants"].get("1 process x 2 threads")
    print(f"DLRM {args.shape} shape, global batch {args.batch_size}, {args.optimizer}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    print("| variant | samples/s | vs 1 process x 2 threads | step ms | communication share |")
    print("|---|---|---|---|---|")
    for name, r in results["variants"].items():
        ratio = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "-"
        share = r.get("comm_share_total")
        print(f"| {name} | {r['samples_per_s'] / 1e3:.1f}k | {ratio} | {r['step_ms']:.1f} | "
              f"{'-' if share is None else f'{share:.0%}'} |")
    for name, r in results["variants"].items():
        if "bytes_per_step" in r:
            parts = ", ".join(f"{k} {v / 2**20:.2f} MiB ({r['comm_share'][k]:.1%} of time)"
                              for k, v in sorted(r["bytes_per_step"].items()))
            print(f"{name}: per step and rank: {parts}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
