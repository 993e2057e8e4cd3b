"""The Spark engine (`--engine spark`, local[2]) against the local engine on the same input:
rows/s of the whole run and of each pass ("build": everything after parsing; for Spark the
vocabulary and write jobs are also shown alone), and the peak memory of the whole process tree
(driver, JVM, Python workers), plain and gzipped.

    python benchmarks/bench_spark.py [--rows 2000000] [--vocab frequency] [--partitions 8]
        [--master local[2]|spark://HOST:PORT] [--cut-gzip]

Each variant runs in a fresh process; memory is sampled every 0.1 s as the sum of the resident
sets of the process and all its descendants.
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
import json, sys
from dlrmkit.config import PreprocessConfig
from dlrmkit.data.preprocess import preprocess
from dlrmkit.data.spark_engine import SparkOptions, preprocess_spark
engine, inp, vocab, out, parts, master = sys.argv[1:7]
cfg = PreprocessConfig(dataset="kaggle", inputs=(inp,), vocab=vocab, workers=2, on_bad_line="skip",
                       max_index_range=10_000_000 if vocab == "hash" else None)
if engine == "spark":
    options = SparkOptions(master, int(parts) or None, (("spark.ui.enabled", "false"),))
    meta = preprocess_spark(cfg, out, options, progress=False)
else:
    meta = preprocess(cfg, out, progress=False)
print("RESULT " + json.dumps({**meta["preprocess"], "rows": meta["source"]["rows"]}))
"""


def _tree_rss_mb(pid: int) -> float:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        p = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(p)
        rss[p] = int(fields[21]) * 4096
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 2**20


def run(engine: str, path: Path, vocab: str, out: Path, partitions: int, master: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUN, engine, str(path), vocab, str(out), str(partitions), master],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{engine} failed:\n{stderr[-3000:]}")
    r = json.loads(lines[0][7:])
    r["wall_s"] = time.perf_counter() - t
    r["peak_tree_mb"] = peak
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--vocab", choices=("hash", "frequency", "reference"), default="frequency")
    p.add_argument("--partitions", type=int, default=8, help="Spark partitions per plain file")
    p.add_argument("--work", default="/tmp/dlrmkit-bench-spark")
    p.add_argument("--master", default="local[2]", help="e.g. spark://HOST:PORT for a running standalone cluster "
                   "(peak memory then counts the driver side only)")
    p.add_argument("--cut-gzip", action="store_true",
                   help="also the gzip input cut short at 90%% (--on-bad-line skip: Spark parses twice)")
    args = p.parse_args(argv)
    work = Path(args.work)
    plain, gz = kaggle_text(args.rows, work)
    inputs = [plain, gz]
    if args.cut_gzip:
        cut = work / f"cut-{gz.name}"
        data = gz.read_bytes()
        cut.write_bytes(data[:len(data) * 9 // 10])
        inputs.append(cut)
    print(f"preprocess --vocab {args.vocab}, {args.rows:,} synthetic Kaggle rows ({plain.stat().st_size / 1e6:.0f} MB "
          f"text, {gz.stat().st_size / 1e6:.0f} MB gzipped), {time.strftime('%Y-%m-%d')}")
    print("| input | engine | rows/s (all) | parse rows/s | vocab on Spark s | write on Spark s | build rows/s | "
          "wall s (with start-up) | peak MB (process tree) | executor check s | parse jobs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in inputs:
        for engine in ("local", "spark"):
            r = run(engine, path, args.vocab, work / f"out-{engine}", args.partitions, args.master)
            eng = r["engine"]
            vocab_s, write_s = eng.get("vocab_seconds"), eng.get("write_seconds")
            build_s = r["seconds"] - r["parse_seconds"]
            name = "local, 2 workers" if engine == "local" else f"spark {eng['master']}, {eng['partitions']} splits"
            checks = (f"{eng['executor_check_seconds']:.2f} | {eng['parse_jobs']}" if engine == "spark"
                      else "- | -")
            print(f"| {path.name} | {name} | {r['rows'] / r['seconds'] / 1e3:.0f}k | "
                  f"{r['rows'] / r['parse_seconds'] / 1e3:.0f}k | {'-' if vocab_s is None else f'{vocab_s:.1f}'} | "
                  f"{'-' if write_s is None else f'{write_s:.1f}'} | "
                  f"{r['rows'] / build_s / 1e3:.0f}k | "
                  f"{r['wall_s']:.1f} | {r['peak_tree_mb']:.0f} | {checks} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
