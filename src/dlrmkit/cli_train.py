"""`dlrmkit train`: its flags, one process or many.

On one machine ``dlrmkit train --nproc N`` re-runs the same command under torchrun; under
torchrun (``torchrun ... -m dlrmkit train``) each worker joins the process group and trains its
part (`dlrmkit.train.parallel.Distributed`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import NoReturn

from dlrmkit.config import (DIST_BACKENDS, INTERACTIONS, OPTIMIZERS, PRESETS, SHARDINGS, ModelConfig, ScheduleConfig,
                            TrainConfig, preset)


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer widths like 512-256-1, got {text!r}") from None
    return widths


def _add_model_flags(p) -> None:
    g = p.add_argument_group("architecture (a preset, optionally overridden)")
    g.add_argument("--preset", choices=PRESETS, default="kaggle")
    g.add_argument("--arch-sparse-feature-size", type=int, help="embedding dim")
    g.add_argument("--arch-mlp-bot", type=_widths, help="bottom MLP widths with input, e.g. 13-512-256-64-16")
    g.add_argument("--arch-mlp-top", type=_widths, help="top MLP widths without input, e.g. 512-256-1")
    g.add_argument("--arch-interaction-op", choices=INTERACTIONS)
    g.add_argument("--arch-interaction-itself", action="store_true", help="dot: include <v_i, v_i>")
    g.add_argument("--max-ind-range", type=int, help="cap each table at this many rows (index mod range)")


def add_train(sub, positive_int) -> None:
    p = sub.add_parser("train", help="train a DLRM")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, summary)")
    _add_model_flags(p)
    d = TrainConfig()
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="sgd, or adagrad (row-wise for tables)")
    g.add_argument("--learning-rate", type=float, default=d.learning_rate)
    g.add_argument("--mini-batch-size", "--batch-size", dest="batch_size", type=positive_int, default=d.batch_size)
    g.add_argument("--epochs", type=float, default=d.epochs)
    g.add_argument("--max-steps", type=positive_int)
    g.add_argument("--lr-num-warmup-steps", type=int, default=0)
    g.add_argument("--lr-decay-start-step", type=int, default=0)
    g.add_argument("--lr-num-decay-steps", type=int, default=0)
    g.add_argument("--eval-every", "--test-freq", dest="eval_every", type=positive_int,
                   help="evaluate on the validation split every N steps (default: each epoch's end)")
    g.add_argument("--eval-batch-size", "--test-mini-batch-size", dest="eval_batch_size", type=positive_int,
                   default=d.eval_batch_size)
    g.add_argument("--eval-max-rows", type=int, help="evaluate on the first N validation rows only")
    g.add_argument("--target-auc", "--mlperf-auc-threshold", dest="target_auc", type=float,
                   help="stop once the validation AUC reaches this")
    g.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--threads", type=positive_int, help="torch intra-op threads")
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--no-shuffle", action="store_true")
    g.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt exactly")
    g.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("many processes (torchrun: `torchrun --nproc-per-node N -m dlrmkit train ...`)")
    g.add_argument("--nproc", type=positive_int,
                   help="run on N processes on this machine (launches torchrun --standalone for you)")
    g.add_argument("--sharding", choices=SHARDINGS, default="auto",
                   help="tables across ranks: table-wise, row-wise, or auto (row-wise for a table "
                        "larger than an even share of all rows)")
    g.add_argument("--row-wise-min-rows", type=positive_int,
                   help="auto: tables with more rows than this are sharded row-wise")
    g.add_argument("--dist-backend", choices=DIST_BACKENDS, default="auto",
                   help="auto: nccl with one GPU per process when CUDA is present, else gloo")
    g.add_argument("--dist-timeout", type=float, default=600.0,
                   help="seconds a collective waits for the other ranks before failing the job")


def _torchrun(args, nproc: int) -> int:
    """Re-run this very command under torchrun on ``nproc`` local processes."""
    argv = list(args.argv)
    for i, a in enumerate(argv):
        if a == "--nproc":
            del argv[i:i + 2]
            break
        if a.startswith("--nproc="):
            del argv[i]
            break
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "dlrmkit"] + argv
    return subprocess.run(cmd, env=env).returncode


def model_config_from_args(args, table_sizes: tuple[int, ...], num_dense: int) -> ModelConfig:
    base = preset(args.preset, table_sizes, num_dense)
    overrides = {
        "embedding_dim": args.arch_sparse_feature_size,
        "bottom_mlp": args.arch_mlp_bot,
        "top_mlp": args.arch_mlp_top,
        "interaction": args.arch_interaction_op,
        "max_index_range": args.max_ind_range,
    }
    fields = {**base.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    if args.arch_interaction_itself:
        fields["interaction_self"] = True
    return ModelConfig(**fields)


def run_train(args) -> int:
    from dlrmkit.data.dataset import Dataset
    from dlrmkit.train.comm import launched_by_torchrun
    from dlrmkit.train.loop import train

    if args.nproc and args.nproc > 1 and not launched_by_torchrun():
        return _torchrun(args, args.nproc)
    dataset = Dataset(args.data)
    model_cfg = model_config_from_args(args, dataset.table_sizes, dataset.num_dense)
    train_cfg = TrainConfig(
        optimizer=args.optimizer, learning_rate=args.learning_rate, batch_size=args.batch_size,
        epochs=args.epochs, max_steps=args.max_steps,
        schedule=ScheduleConfig(args.lr_num_warmup_steps, args.lr_decay_start_step, args.lr_num_decay_steps),
        eval_every=args.eval_every, eval_batch_size=args.eval_batch_size, eval_max_rows=args.eval_max_rows,
        target_auc=args.target_auc, checkpoint_every=args.checkpoint_every, bf16=args.bf16, seed=args.seed,
        threads=args.threads, log_every=args.log_every, shuffle=not args.no_shuffle)
    if launched_by_torchrun():
        _train_distributed(args, model_cfg, train_cfg)  # does not return
    summary = train(args.data, args.out, model_cfg, train_cfg, resume=args.resume, progress=not args.quiet)
    _print_summary(args, summary)
    return 0


def _train_distributed(args, model_cfg: ModelConfig, train_cfg: TrainConfig) -> NoReturn:
    """One torchrun worker: join the group, train its part, leave.

    A worker that finished leaves with ``os._exit`` once the process group is gone: the
    interpreter's own shutdown can meet gloo's threads and abort (std::terminate; seen in about
    1 of 200 runs of 2 CPU ranks on torch 2.13, far more often with the group left alive). A
    worker that failed raises as usual, and the CLI reports the error.
    """
    from dlrmkit.train.comm import join
    from dlrmkit.train.loop import train
    from dlrmkit.train.parallel import Distributed
    from dlrmkit.train.plan import plan_shards

    comm = join(args.dist_backend, args.dist_timeout)
    finished = False
    try:
        plan = plan_shards(model_cfg.effective_table_sizes, comm.world_size, args.sharding, args.row_wise_min_rows)
        summary = train(args.data, args.out, model_cfg, train_cfg, resume=args.resume, progress=not args.quiet,
                        parallel=Distributed(comm, plan))
        finished = True
    finally:
        comm.close(finished)
    if comm.is_main:
        _print_summary(args, summary)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _print_summary(args, summary: dict) -> None:
    parts = [f"trained {summary['steps']} steps ({summary['epochs']:.2f} epochs) at "
             f"{summary['train_samples_per_s'] / 1e3:.1f}k samples/s"]
    for split in ("val", "test"):
        if summary[split]:
            parts.append(f"{split} AUC {summary[split]['auc']:.4f} log loss {summary[split]['log_loss']:.4f}")
    oracle = summary.get("oracle_auc") or {}
    if "test" in oracle:
        parts.append(f"oracle test AUC {oracle['test']:.4f}")
    print("; ".join(parts))
    print(f"run directory: {args.out} (checkpoint.pt, best.pt, metrics.jsonl, summary.json)")
