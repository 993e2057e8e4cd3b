"""Preprocessing speed: raw synthetic Criteo text (plain and gzipped) -> dataset, per vocabulary.

    python benchmarks/bench_preprocess.py [--rows 2000000] [--workers 2] [--work /tmp/dlrmkit-bench-pre]

Makes Kaggle-layout text once (full Kaggle table sizes, seed 0), then runs each variant in a
fresh process and reports whole-pipeline rows/s (both passes), the parse and build passes
separately, and the peak resident memory of the main process and of its worker processes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from raw_input import kaggle_text

RUN = """
import json, resource, sys
from dlrmkit.config import PreprocessConfig
from dlrmkit.data.preprocess import preprocess
cfg = PreprocessConfig(dataset="kaggle", inputs=(sys.argv[1],), vocab=sys.argv[2],
                       max_index_range=int(sys.argv[3]) or None, workers=int(sys.argv[4]))
meta = preprocess(cfg, sys.argv[5], progress=False)
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({**meta["preprocess"], "rows": meta["source"]["rows"], "peak_main_mb": self_kb / 1024,
                  "peak_worker_mb": child_kb / 1024}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-ind-range", type=int, default=10_000_000, help="for hash (and as a cap nowhere else)")
    p.add_argument("--work", default="/tmp/dlrmkit-bench-pre")
    args = p.parse_args(argv)
    work = Path(args.work)
    plain, gz = kaggle_text(args.rows, work)
    print(f"preprocess, {args.rows:,} synthetic Kaggle rows ({plain.stat().st_size / 1e6:.0f} MB text, "
          f"{gz.stat().st_size / 1e6:.0f} MB gzipped), {args.workers} workers, {time.strftime('%Y-%m-%d')}")
    print("| input | vocab | rows/s (all) | parse rows/s | build rows/s | peak MB main / worker |")
    print("|---|---|---|---|---|---|")
    for path in (plain, gz):
        for vocab in ("hash", "frequency", "reference"):
            cap = args.max_ind_range if vocab == "hash" else 0
            out = work / f"out-{vocab}"
            result = subprocess.run([sys.executable, "-c", RUN, str(path), vocab, str(cap), str(args.workers), str(out)],
                                    check=True, capture_output=True, text=True)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            build = r["seconds"] - r["parse_seconds"]
            print(f"| {'gz' if path == gz else 'plain'} | {vocab} | {r['rows'] / r['seconds'] / 1e3:.0f}k | "
                  f"{r['rows'] / r['parse_seconds'] / 1e3:.0f}k | {r['rows'] / build / 1e3:.0f}k | "
                  f"{r['peak_main_mb']:.0f} / {r['peak_worker_mb']:.0f} |")
            shutil.rmtree(out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
