"""Loading a large checkpoint for inference, and quantizing its tables: time and peak memory.

    python benchmarks/bench_load.py [--rows-per-table 300000] [--dim 128] [--dir /tmp/dlrmkit-bench-load]

Writes (once, kept in --dir) a DLRM reference checkpoint (``--save-model``'s format, as MLPerf's
``tb00_40M.pt``) and a dlrmkit checkpoint of the terabyte shape with 26 tables of
--rows-per-table rows, then loads each with ``load_for_inference`` (what ``dlrmkit bench``,
``evaluate`` and ``quantize`` do) in a fresh process, then (rows 2 and 3 of each) quantizes the
tables to int8 as ``bench`` and ``quantize`` do: wall times and the peak of its anonymous
memory (RssAnon, sampled every 20 ms; pages mapped from the checkpoint file are page cache, which
the kernel can drop, and are left out). The figure that matters is the ratio of that peak to the
size of the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

CHILD = r"""
import json, sys, threading, time
peak = [0]
def sample():
    while True:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
from dlrmkit.config import Precision
from dlrmkit.infer.quantize import embedding_bytes, load_for_inference, quantize_model
t = time.perf_counter()
model, _, _, kind, _ = load_for_inference(sys.argv[1])
seconds = time.perf_counter() - t
table_bytes = embedding_bytes(model)
if sys.argv[2] != "fp32":  # then the tables in int8, as `dlrmkit bench` and `quantize` do
    quantize_model(model, Precision(sys.argv[2], "fp32"))
seconds_quantize = time.perf_counter() - t - seconds
time.sleep(0.1)
print(json.dumps({"kind": kind, "seconds": seconds, "seconds_quantize": seconds_quantize,
                  "peak_anon_bytes": peak[0], "table_bytes": table_bytes}))
"""


def write_checkpoints(folder: Path, rows: int, dim: int) -> dict[str, Path]:
    from dlrmkit.checkpoint import save_checkpoint
    from dlrmkit.config import preset
    from dlrmkit.model import build_model

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"reference": folder / f"reference_{rows}x{dim}.pt", "dlrmkit": folder / f"dlrmkit_{rows}x{dim}.pt"}
    if all(p.is_file() for p in paths.values()):
        return paths
    cfg = preset("terabyte", (rows,) * 26)
    cfg = type(cfg)(**{**cfg.to_dict(), "embedding_dim": dim, "bottom_mlp": cfg.bottom_mlp[:-1] + (dim,),
                       "max_index_range": None})
    model = build_model(cfg, seed=0, sparse_grad=False)
    save_checkpoint(paths["dlrmkit"], model, cfg)
    state = {f"emb_l.{i}.weight": model.embeddings.table(i).clone() for i in range(26)}  # a tensor each, as saved
    for prefix, mlp in (("bot_l", model.bottom), ("top_l", model.top)):
        state.update({f"{prefix}.{k}": v for k, v in mlp.state_dict().items()})
    del model
    torch.save({"state_dict": state}, paths["reference"])
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows-per-table", type=int, default=300_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dir", type=Path, default=Path("/tmp/dlrmkit-bench-load"))
    p.add_argument("--json")
    args = p.parse_args(argv)
    paths = write_checkpoints(args.dir, args.rows_per_table, args.dim)
    print(f"26 tables of {args.rows_per_table:,} rows, dim {args.dim}; torch {torch.__version__}; "
          f"{time.strftime('%Y-%m-%d')}")
    print("| checkpoint | file | then tables in | load | quantize | peak anonymous memory | vs the FP32 tables |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name, path in paths.items():
        for tables in ("fp32", "int8-rowwise", "int8-table"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), tables], check=True, capture_output=True,
                                 text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(checkpoint=name, tables=tables, file_bytes=path.stat().st_size)
            rows.append(r)
            print(f"| {name} | {r['file_bytes'] / 2**30:.2f} GiB | {tables} | {r['seconds']:.1f} s | "
                  f"{r['seconds_quantize']:.1f} s | {r['peak_anon_bytes'] / 2**30:.2f} GiB | "
                  f"{r['peak_anon_bytes'] / r['table_bytes']:.2f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
