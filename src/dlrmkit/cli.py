"""The command line: the one place that parses flags, builds configs, calls plain functions and
turns errors into one clear line and a non-zero exit code.

    dlrmkit synth     make synthetic Criteo-like data (binary dataset or raw text)
    dlrmkit train     train a DLRM on a dataset
    dlrmkit evaluate  AUC, log loss and accuracy of a checkpoint on a split
    dlrmkit preprocess  raw Criteo logs -> a dlrmkit dataset
    dlrmkit import    data processed by the DLRM reference tools -> a dlrmkit dataset
    dlrmkit bench     MLPerf LoadGen run of a checkpoint (all scenarios, performance and accuracy)
    dlrmkit accuracy  AUC from LoadGen's accuracy log
    dlrmkit quantize  a trained checkpoint -> an inference checkpoint (int8 tables, int8/bf16 MLPs)
    dlrmkit demo      the whole road on built-in defaults (synth -> train -> evaluate -> bench)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dlrmkit import cli_bench, cli_export, cli_train
from dlrmkit.config import PRESETS, SynthConfig
from dlrmkit.errors import ConfigError, DlrmkitError

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A flag is missing or malformed; raised instead of argparse's print-usage-and-exit."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="make synthetic Criteo-like data with a known oracle AUC")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--rows", type=_positive_int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("binary", "raw"), default="binary",
                   help="binary: a dlrmkit dataset; raw: Criteo text (tab separated)")
    p.add_argument("--layout", choices=("kaggle", "terabyte"), default="kaggle",
                   help="kaggle: 7 days in one train.txt; terabyte: day_0..day_{N-1} files")
    p.add_argument("--days", type=_positive_int, default=24, help="days of the terabyte layout")
    p.add_argument("--cardinality-scale", type=float, default=1.0,
                   help="scale the Criteo Kaggle table sizes down by this factor (0, 1]")
    p.add_argument("--click-rate", type=float, default=0.25)
    p.add_argument("--workers", type=_positive_int, default=2)
    p.add_argument("--quiet", action="store_true")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="AUC, log loss and accuracy of a checkpoint on a split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=_positive_int, default=16384)
    p.add_argument("--max-rows", type=_positive_int)
    p.add_argument("--max-ind-range", type=_positive_int,
                   help="indices mod N, for checkpoints that do not record their range (the DLRM reference's)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=_positive_int)
    p.add_argument("--out", help="JSON file for the metrics (default: beside the checkpoint)")


def _add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="raw Criteo logs (plain or .gz) -> a dlrmkit dataset")
    p.add_argument("--dataset", choices=("kaggle", "terabyte"), required=True)
    p.add_argument("--input", nargs="+", required=True,
                   help="kaggle: train.txt; terabyte: day_0 .. day_23 in order (the last is cut into test/val)")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab", choices=("hash", "frequency", "reference"), default="frequency",
                   help="hash: value mod N; frequency: NVIDIA's (train rows, by count); "
                        "reference: the DLRM reference's (first appearance over all rows)")
    p.add_argument("--max-ind-range", type=_positive_int, help="values mod N (the table size for hash)")
    p.add_argument("--frequency-threshold", type=_positive_int, default=1,
                   help="frequency: values seen fewer times share one row")
    p.add_argument("--on-bad-line", choices=("error", "skip"), default="error",
                   help="error: stop at the first bad line, naming file and line; skip: count each kind in "
                        "metadata.json and go on (a gzip file cut short keeps its complete lines)")
    p.add_argument("--sub-sample-rate", type=float, default=0.0, help="drop this fraction of negative train rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=_positive_int, default=2)
    p.add_argument("--keep-stage", action="store_true", help="keep OUT/.stage (parsed raw arrays)")
    p.add_argument("--parquet", action="store_true",
                   help="also write each split as Parquet, OUT/parquet/<split>.parquet (needs pyarrow)")
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=("local", "spark"), default="local",
                   help="local: this machine's processes (--workers); spark: parse, count and write on "
                        "Apache Spark's executors (docs/spark.md; inputs may be any Hadoop file system URI; "
                        "OUT must be a directory every executor sees)")
    g.add_argument("--spark-master", default="local[*]",
                   help="local[N], spark://HOST:PORT, yarn, k8s://... (default local[*])")
    g.add_argument("--spark-partitions", type=_positive_int,
                   help="cut each plain input file into about N partitions (gzip files are read whole)")
    g.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting, e.g. spark.executor.memory=8g, or spark.pyspark.python=PATH for the "
                        "executors' Python (default: this one's); repeatable")


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="data processed by the DLRM reference tools -> a dlrmkit dataset")
    p.add_argument("--format", choices=("kaggle-npz", "terabyte-npz", "mlperf-bin"), required=True,
                   help="kaggle-npz: kaggleAdDisplayChallenge_processed.npz; terabyte-npz: day_<n>_reordered.npz "
                        "files in order; mlperf-bin: terabyte_processed_{train,val,test}.bin")
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--counts", help="day_fea_count.npz (table sizes) for terabyte-npz and mlperf-bin")
    p.add_argument("--max-ind-range", type=_positive_int, help="indices mod N, tables capped at N")
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthetic data -> kaggle DLRM -> test AUC beside the oracle AUC")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--rows", type=_positive_int, default=4_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=PRESETS, default="kaggle")
    p.add_argument("--cardinality-scale", type=float, default=0.01,
                   help="Kaggle table sizes x this (default 0.01: tables of up to 100k rows)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dlrmkit", description="DLRM from Criteo logs to MLPerf-style results")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_synth(sub)
    cli_train.add_train(sub, _positive_int)
    _add_evaluate(sub)
    _add_preprocess(sub)
    _add_import(sub)
    cli_bench.add_bench(sub, _positive_int)
    cli_bench.add_accuracy(sub)
    cli_bench.add_quantize(sub)
    cli_export.add_export(sub)
    _add_demo(sub)
    return parser


def _run_synth(args) -> int:
    from dlrmkit.data import synth

    cfg = SynthConfig(rows=args.rows, seed=args.seed, layout=args.layout, days=args.days,
                      cardinality_scale=args.cardinality_scale, click_rate=args.click_rate, workers=args.workers)
    if args.format == "binary":
        meta = synth.write_binary(cfg, args.out, progress=not args.quiet)
    else:
        meta = synth.write_raw(cfg, args.out, progress=not args.quiet)
    oracle = meta["oracle_auc"]
    print(f"wrote {cfg.rows} rows ({args.format}, {args.layout} layout) to {args.out} at "
          f"{meta['generation']['rows_per_s'] / 1e3:.0f}k rows/s; positive rate {meta['positive_rate']:.4f}; "
          f"oracle AUC test {oracle.get('test', float('nan')):.4f}")
    return 0


def _run_evaluate(args) -> int:
    import torch

    from dlrmkit.data.dataset import Dataset
    from dlrmkit.reference_checkpoint import load_any_model
    from dlrmkit.train.evaluate import evaluate
    from dlrmkit.train.loop import check_tables

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = Dataset(args.data)
    model, cfg, kind = load_any_model(args.checkpoint)
    cfg = cfg.with_max_index_range(args.max_ind_range, str(args.checkpoint))
    check_tables(cfg, dataset)
    metrics = evaluate(model, dataset.split(args.split), args.batch_size, cfg.max_index_range, args.max_rows, args.bf16)
    metrics.update(split=args.split, checkpoint=str(args.checkpoint), checkpoint_format=kind, data=str(args.data))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(f"eval_{args.split}.json")
    try:
        out.write_text(json.dumps(metrics, indent=2) + "\n")
    except OSError as e:
        raise DlrmkitError(f"cannot write the metrics to {out} ({e.strerror}); choose a file with --out") from None
    print(f"{args.split}: AUC {metrics['auc']:.6f} log loss {metrics['log_loss']:.6f} "
          f"accuracy {metrics['accuracy']:.4f} on {metrics['rows']} rows; wrote {out}")
    return 0


def _run_preprocess(args) -> int:
    from dlrmkit.config import PreprocessConfig
    from dlrmkit.data.preprocess import preprocess

    cfg = PreprocessConfig(dataset=args.dataset, inputs=tuple(args.input), vocab=args.vocab,
                           max_index_range=args.max_ind_range, frequency_threshold=args.frequency_threshold,
                           on_bad_line=args.on_bad_line, sub_sample_rate=args.sub_sample_rate, seed=args.seed,
                           workers=args.workers, keep_stage=args.keep_stage, parquet=args.parquet)
    if args.engine == "spark":
        from dlrmkit.data.spark_engine import SparkOptions, preprocess_spark

        conf = []
        for item in args.spark_conf:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--spark-conf takes KEY=VALUE, got {item!r}")
            conf.append((key.strip(), value.strip()))
        options = SparkOptions(args.spark_master, args.spark_partitions, tuple(conf))
        meta = preprocess_spark(cfg, args.out, options, progress=not args.quiet)
    else:
        meta = preprocess(cfg, args.out, progress=not args.quiet)
    src, perf = meta["source"], meta["preprocess"]
    skipped = {k: v for k, v in src["bad_lines"].items() if v}
    print(f"wrote {src['rows']:,} rows ({', '.join(f'{k} {v:,}' for k, v in meta['splits'].items() for v in [v['rows']])}) "
          f"to {args.out} at {perf['rows_per_s'] / 1e3:.0f}k rows/s; vocab {cfg.vocab}, "
          f"{sum(meta['table_sizes']):,} table rows; bad lines skipped: {skipped or 'none'}")
    return 0


def _run_import(args) -> int:
    from dlrmkit.data.reference_data import import_reference

    meta = import_reference(args.format, args.input, args.out, args.counts, args.max_ind_range, not args.quiet)
    splits = ", ".join(f"{k} {v['rows']:,}" for k, v in meta["splits"].items())
    print(f"imported {args.format} to {args.out}: {splits}; {sum(meta['table_sizes']):,} table rows")
    return 0


def _run_demo(args) -> int:
    import dataclasses

    from dlrmkit.demo import DEMO_TRAIN, run_demo

    run_demo(args.out, rows=args.rows, seed=args.seed, preset_name=args.preset,
             cardinality_scale=args.cardinality_scale, train_cfg=dataclasses.replace(DEMO_TRAIN, epochs=args.epochs),
             progress=not args.quiet)
    return 0


COMMANDS = {"synth": _run_synth, "train": cli_train.run_train, "evaluate": _run_evaluate,
            "preprocess": _run_preprocess, "import": _run_import, "demo": _run_demo,
            "bench": cli_bench.run_bench, "accuracy": cli_bench.run_accuracy, "quantize": cli_bench.run_quantize,
            "export": cli_export.run_export}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
    except UsageError as e:
        print(f"{e} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    from dlrmkit.infer.allocator import retain_freed_memory

    retain_freed_memory()  # large batches reuse heap memory instead of page-faulting fresh mmaps
    try:
        return COMMANDS[args.command](args)
    except DlrmkitError as e:
        print(f"dlrmkit {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"dlrmkit {args.command}: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())
