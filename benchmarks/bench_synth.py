"""Synthetic Criteo generation speed: rows/s to the binary dataset and to raw text, by workers.

    python benchmarks/bench_synth.py [--rows 4000000] [--out /tmp/dlrmkit-bench-synth]

Kaggle table sizes (full), seed 0. Each figure is the best of ``--repeats`` runs (generation
time as `synth` measures it: from the first chunk to the last byte written, the process pool's
start-up included; the oracle AUC afterwards excluded).
"""

from __future__ import annotations

import argparse
import shutil
import time

from dlrmkit.config import SynthConfig
from dlrmkit.data import synth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="/tmp/dlrmkit-bench-synth")
    args = p.parse_args(argv)
    print(f"synthetic Criteo, {args.rows:,} rows, Kaggle table sizes, {time.strftime('%Y-%m-%d')}")
    print("| format | workers | rows/s | MB written/s |")
    print("|---|---|---|---|")
    for fmt, write in (("binary", synth.write_binary), ("raw", synth.write_raw)):
        for workers in (1, 2):
            best = None
            for _ in range(args.repeats):
                shutil.rmtree(args.out, ignore_errors=True)
                meta = write(SynthConfig(rows=args.rows, workers=workers), args.out, progress=False)
                rate = meta["generation"]["rows_per_s"]
                best = rate if best is None or rate > best else best
            size = sum(f.stat().st_size for f in __import__("pathlib").Path(args.out).rglob("*") if f.is_file())
            print(f"| {fmt} | {workers} | {best / 1e3:.0f}k | {size / args.rows * best / 1e6:.0f} |")
    shutil.rmtree(args.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
