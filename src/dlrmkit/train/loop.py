"""The training loop: batches -> forward -> BCE loss -> backward -> optimizer, with evaluation,
checkpoints, exact resume, a metrics log and a summary.

A run directory holds::

    config.json        the resolved model and training configs, the dataset
    metrics.jsonl      one JSON object a line: {"type": "train" | "eval", "step", ...}
    checkpoint.pt      the latest checkpoint (atomic), from which ``resume`` continues
    best.pt            the checkpoint with the best validation AUC so far
    summary.json       final metrics, throughput, timings, configs

In a distributed run (``parallel``: `parallel.Distributed`) every rank runs this same loop on its
share of each batch; rank 0 alone writes the logs and the summary, each rank writes its shard of
every checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dlrmkit.checkpoint_shards import remove_stale_shards
from dlrmkit.config import ModelConfig, TrainConfig
from dlrmkit.data.dataset import Dataset, write_json_atomic
from dlrmkit.data.loader import batches
from dlrmkit.errors import ConfigError, TrainingDivergedError
from dlrmkit.progress import Progress, human
from dlrmkit.train.evaluate import metrics_of
from dlrmkit.train.optim import DLRMOptimizer
from dlrmkit.train.parallel import OneProcess
from dlrmkit.train.schedule import learning_rate


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    samples: int = 0
    train_seconds: float = 0.0  # time in training steps only (no evaluation, no checkpoints)
    best_auc: float | None = None


def check_tables(model_cfg: ModelConfig, dataset: Dataset) -> None:
    """Every dataset index must have a row: table sizes at least the dataset's, unless capped."""
    if len(model_cfg.table_sizes) != dataset.num_sparse or model_cfg.num_dense != dataset.num_dense:
        raise ConfigError(f"model has {len(model_cfg.table_sizes)} tables and {model_cfg.num_dense} dense inputs; "
                          f"dataset {dataset.path} has {dataset.num_sparse} and {dataset.num_dense}")
    cap = model_cfg.max_index_range or max(dataset.table_sizes, default=0)  # indices mod cap reach the model
    small = [(f, m, min(d, cap)) for f, (m, d) in enumerate(zip(model_cfg.effective_table_sizes, dataset.table_sizes))
             if m < min(d, cap)]
    if small:
        f, m, d = small[0]
        raise ConfigError(f"table {f} has {m} rows but dataset {dataset.path} needs {d}; "
                          f"set a max index range (--max-ind-range: indices mod N) or match the dataset")


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def train(data_dir: str | os.PathLike, run_dir: str | os.PathLike, model_cfg: ModelConfig,
          train_cfg: TrainConfig, resume: bool = False, progress: bool = True,
          parallel: OneProcess | None = None) -> dict:
    """Train a DLRM on ``data_dir``'s train split; returns the summary (also in run_dir/summary.json)."""
    par = parallel or OneProcess()
    run_dir = Path(run_dir)
    dataset = Dataset(data_dir)
    check_tables(model_cfg, dataset)
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    train_split = dataset.split("train")
    if par.world_size == 1:  # one process reads it all: hold it in memory
        train_split = train_split.load()
    # many ranks read it memory-mapped: each touches only its rows, and ranks on one machine share
    # the page cache instead of holding a copy each
    val_split = dataset.split("val") if "val" in dataset.splits else None
    if len(train_split) == 0:
        raise ConfigError(f"dataset {dataset.path} has an empty train split")

    model = par.build_model(model_cfg, train_cfg.seed)
    optimizer = DLRMOptimizer(model, train_cfg.optimizer)
    state = TrainState()
    ckpt_path = run_dir / "checkpoint.pt"
    config_record = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "data": str(Path(data_dir).resolve()),
                     "parallel": par.describe()}
    if resume and ckpt_path.exists():
        ckpt = par.restore(ckpt_path, model, optimizer, model_cfg)
        state = TrainState(**ckpt["train_state"])
        torch.set_rng_state(ckpt["rng"]["torch"])
    elif not resume and par.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "summary.json", "checkpoint.pt", "best.pt"):
            (run_dir / name).unlink(missing_ok=True)
            remove_stale_shards(run_dir / name, set())
    if par.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", config_record)
    par.barrier("starting")
    log = RunLog(run_dir, enabled=par.is_main)

    bs = train_cfg.batch_size
    steps_per_epoch = math.ceil(len(train_split) / bs)
    total_steps = train_cfg.max_steps or math.ceil(train_cfg.epochs * steps_per_epoch)
    cap = model_cfg.max_index_range
    bar = Progress(total_steps * bs, "samples", "train", enabled=progress and par.is_main)
    bar.done = state.samples

    def save(path: Path, metrics: dict | None = None) -> None:
        par.save(path, model, model_cfg, optimizer, train_state=state.__dict__.copy(), train_config=train_cfg.to_dict(),
                 extra={"data": config_record["data"], "metrics": metrics or {}})

    def evaluate(split, max_rows: int | None) -> dict:
        return metrics_of(*par.predict(model, split, train_cfg.eval_batch_size, cap, max_rows, train_cfg.bf16))

    def run_eval() -> dict | None:
        if val_split is None or len(val_split) == 0:
            return None
        t = time.perf_counter()
        m = evaluate(val_split, train_cfg.eval_max_rows)
        m.update(type="eval", split="val", step=state.step, epoch=state.step / steps_per_epoch,
                 seconds=time.perf_counter() - t)
        m["best"] = state.best_auc is None or m["auc"] > state.best_auc
        if m["best"]:
            state.best_auc = m["auc"]
        log.write(m)
        return m

    def save_latest(metrics: dict | None) -> None:
        save(ckpt_path, metrics)
        if metrics is not None and metrics["best"]:  # best.pt: a second name for this checkpoint
            par.link(ckpt_path, run_dir / "best.pt")

    model.train()
    last_eval: dict | None = None
    stopped_early = False
    window_loss, window_n, window_t = 0.0, 0, 0.0
    while state.step < total_steps and not stopped_early:
        epoch, start_batch = divmod(state.step, steps_per_epoch)
        for batch in batches(train_split, bs, shuffle=train_cfg.shuffle, seed=train_cfg.seed, epoch=epoch,
                             start_batch=start_batch, max_index_range=cap, part=(par.rank, par.world_size)):
            t0 = time.perf_counter()
            global_rows = min(bs, len(train_split) - (state.step % steps_per_epoch) * bs)
            lr = learning_rate(state.step + 1, train_cfg.schedule, train_cfg.learning_rate)
            with torch.autocast(par.device.type, dtype=torch.bfloat16, enabled=train_cfg.bf16):
                logits = model(batch.dense.to(par.device), batch.sparse.to(par.device))
            loss = par.loss(logits, batch.label.to(par.device), global_rows)
            optimizer.zero_grad()
            loss.backward()
            loss_value = par.sync(model, loss)
            if not math.isfinite(loss_value):
                raise TrainingDivergedError(f"training loss is {loss_value} at step {state.step + 1} "
                                            f"(learning rate {lr:g}); lower the learning rate or check the data")
            optimizer.step(lr)
            dt = time.perf_counter() - t0
            state.step += 1
            state.samples += global_rows
            state.train_seconds += dt
            window_loss += loss_value * global_rows
            window_n += global_rows
            window_t += dt
            bar.update(global_rows, extra=f"loss {window_loss / window_n:.4f} | step {state.step}/{total_steps}")
            if state.step % train_cfg.log_every == 0 or state.step == total_steps:
                log.write({"type": "train", "step": state.step, "epoch": state.step / steps_per_epoch,
                           "loss": window_loss / window_n, "lr": lr, "samples_per_s": window_n / window_t})
                window_loss, window_n, window_t = 0.0, 0, 0.0
            at_end = state.step == total_steps
            end_of_epoch = state.step % steps_per_epoch == 0
            evaluated = False
            if (train_cfg.eval_every and state.step % train_cfg.eval_every == 0) or \
                    (train_cfg.eval_every is None and end_of_epoch) or at_end:
                last_eval = run_eval()
                evaluated = True
                if last_eval is not None and train_cfg.target_auc is not None and last_eval["auc"] >= train_cfg.target_auc:
                    stopped_early = True
            if evaluated or at_end or stopped_early or \
                    (train_cfg.checkpoint_every and state.step % train_cfg.checkpoint_every == 0):
                save_latest(last_eval if evaluated else None)
            if at_end or stopped_early:
                break
    bar.close(extra=f"{human(state.samples / max(state.train_seconds, 1e-9))} samples/s in training steps")

    test = None
    if "test" in dataset.splits and dataset.splits["test"] > 0:
        test = evaluate(dataset.split("test"), None)
        test.update(type="eval", split="test", step=state.step)
        log.write(test)
    summary = {
        "steps": state.step,
        "epochs": state.step / steps_per_epoch,
        "samples": state.samples,
        "stopped_early": stopped_early,
        "train_samples_per_s": state.samples / max(state.train_seconds, 1e-9),
        "train_seconds": state.train_seconds,
        "val": last_eval,
        "test": test,
        "best_val_auc": state.best_auc,
        "oracle_auc": dataset.metadata.get("oracle_auc"),
        "checkpoint": str(ckpt_path),
        "config": config_record,
    }
    if par.is_main:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary
