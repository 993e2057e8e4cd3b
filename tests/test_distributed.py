"""Training on many processes (torchrun, gloo on CPU): the same numbers as one process, checkpoints
that move between numbers of ranks, exact resume, and a loud failure when a rank dies or hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dlrmkit.checkpoint import load_checkpoint
from dlrmkit.cli import main

COMMON = ["--preset", "tiny", "--batch-size", "2048", "--log-every", "1", "--eval-every", "6",
          "--eval-max-rows", "1500", "--quiet"]


def _train(data: Path, out: Path, *flags: str, nproc: int = 1, timeout: float = 120) -> subprocess.CompletedProcess | int:
    args = ["train", "--data", str(data), "--out", str(out), *COMMON, *flags]
    if nproc == 1:
        assert main(args + ["--threads", "1"]) == 0
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "dlrmkit", *args, "--nproc", str(nproc)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["type"] == "train"]


def _evals(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]


def _assert_same_weights(a: Path, b: Path, rtol: float = 1e-4, atol: float = 5e-5) -> None:
    """Float32 agreement. The absolute tolerance allows for Adagrad: a weight whose gradients are
    all near zero moves by ~lr * g / sqrt(sum g^2), so summation-order noise in g becomes a step
    of up to 1e-5 here (seen on one of 23,488 weights); every other weight agrees to ~1e-7."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["train_state"] == pytest.approx(cb["train_state"], rel=1e-3, abs=60)  # train_seconds differ
    assert ca["train_state"]["step"] == cb["train_state"]["step"]
    for key, value in ca["model_state"].items():
        torch.testing.assert_close(cb["model_state"][key], value, rtol=rtol, atol=atol, msg=key)
    acc_a = ca["optimizer_state"]["sparse"].get("accumulator")
    if acc_a is not None:
        torch.testing.assert_close(cb["optimizer_state"]["sparse"]["accumulator"], acc_a, rtol=rtol, atol=1e-9)


@pytest.fixture(scope="module")
def one_process(small_data, tmp_path_factory):
    """Reference single-process runs, 12 steps (over an epoch boundary: 9 steps an epoch)."""
    runs = {}
    for optimizer in ("sgd", "adagrad"):
        run = tmp_path_factory.mktemp(f"one_{optimizer}")
        _train(small_data, run, "--optimizer", optimizer, "--max-steps", "12")
        runs[optimizer] = run
    return runs


@pytest.mark.parametrize("optimizer,sharding", [
    ("sgd", ["--sharding", "table-wise"]),
    ("adagrad", ["--sharding", "row-wise"]),
    ("adagrad", ["--sharding", "auto", "--row-wise-min-rows", "500"]),  # big tables row-wise, others whole
])
def test_two_processes_train_as_one(small_data, one_process, tmp_path, optimizer, sharding):
    _train(small_data, tmp_path, "--optimizer", optimizer, "--max-steps", "12", *sharding, nproc=2)
    reference = one_process[optimizer]
    assert _losses(tmp_path) == pytest.approx(_losses(reference), rel=1e-5)
    for mine, ref in zip(_evals(tmp_path), _evals(reference), strict=True):
        assert (mine["split"], mine["step"], mine["rows"]) == (ref["split"], ref["step"], ref["rows"])
        assert mine["auc"] == pytest.approx(ref["auc"], abs=1e-6)
        assert mine["log_loss"] == pytest.approx(ref["log_loss"], rel=1e-5)
    _assert_same_weights(reference / "checkpoint.pt", tmp_path / "checkpoint.pt")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["parallel"].startswith("2 processes (gloo, cpu)")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["samples"] == json.loads((reference / "summary.json").read_text())["samples"]


def test_checkpoints_move_between_numbers_of_ranks(small_data, one_process, tmp_path):
    reference = one_process["adagrad"]
    # 2 ranks for 6 steps, then 1 process to step 12
    _train(small_data, tmp_path / "two_then_one", "--optimizer", "adagrad", "--max-steps", "6",
           "--sharding", "row-wise", nproc=2)
    assert (tmp_path / "two_then_one" / "checkpoint.pt.step6.shard1-of-2").is_file()
    _train(small_data, tmp_path / "two_then_one", "--optimizer", "adagrad", "--max-steps", "12", "--resume")
    # 1 process for 6 steps, then 2 ranks to step 12
    _train(small_data, tmp_path / "one_then_two", "--optimizer", "adagrad", "--max-steps", "6")
    _train(small_data, tmp_path / "one_then_two", "--optimizer", "adagrad", "--max-steps", "12", "--resume",
           "--sharding", "table-wise", nproc=2)
    for run in ("two_then_one", "one_then_two"):
        _assert_same_weights(reference / "checkpoint.pt", tmp_path / run / "checkpoint.pt")
        assert _losses(tmp_path / run)[-6:] == pytest.approx(_losses(reference)[-6:], rel=1e-5)
    # the 1-process run removed the 2-rank shards it resumed from; the 2-rank run wrote its own
    assert not list((tmp_path / "two_then_one").glob("checkpoint.pt.step*"))
    assert sorted(p.name for p in (tmp_path / "one_then_two").glob("checkpoint.pt.step*")) == \
        ["checkpoint.pt.step12.shard0-of-2", "checkpoint.pt.step12.shard1-of-2"]


def test_sharded_checkpoint_predicts_as_the_ranks_did(small_data, tmp_path):
    """`dlrmkit evaluate` (one process) on a 2-rank checkpoint scores the test split as the 2 ranks did."""
    _train(small_data, tmp_path, "--optimizer", "adagrad", "--max-steps", "5", "--sharding", "row-wise", nproc=2)
    ranks_test = json.loads((tmp_path / "summary.json").read_text())["test"]
    assert main(["evaluate", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--data", str(small_data),
                 "--out", str(tmp_path / "eval.json")]) == 0
    one = json.loads((tmp_path / "eval.json").read_text())
    assert one["rows"] == ranks_test["rows"]
    assert one["auc"] == pytest.approx(ranks_test["auc"], abs=1e-7)
    assert one["log_loss"] == pytest.approx(ranks_test["log_loss"], rel=1e-6)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["train_state"]["step"] == 5


def test_distributed_resume_is_exact(small_data, tmp_path):
    flags = ["--optimizer", "adagrad", "--sharding", "row-wise"]
    _train(small_data, tmp_path / "straight", *flags, "--max-steps", "12", nproc=2)
    _train(small_data, tmp_path / "resumed", *flags, "--max-steps", "7", nproc=2)
    _train(small_data, tmp_path / "resumed", *flags, "--max-steps", "12", "--resume", nproc=2)
    _assert_same_weights(tmp_path / "straight" / "checkpoint.pt", tmp_path / "resumed" / "checkpoint.pt",
                         rtol=0, atol=0)
    assert _losses(tmp_path / "resumed")[-5:] == _losses(tmp_path / "straight")[-5:]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _workers(pid: int) -> list[int]:
    """PIDs of the torchrun workers under the `dlrmkit train --nproc` process ``pid``."""
    agents = _children(pid)
    return sorted(w for a in agents for w in _children(a))


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_lost_rank_fails_the_job(small_data, tmp_path, how):
    """A rank killed (SIGKILL) or frozen (SIGSTOP) mid-training: the job exits non-zero, in
    seconds or after the collective timeout, never hanging."""
    args = [sys.executable, "-m", "dlrmkit", "train", "--data", str(small_data), "--out", str(tmp_path),
            *COMMON, "--max-steps", "100000", "--nproc", "2", "--dist-timeout", "8"]
    proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "metrics.jsonl").exists():  # training has started
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        workers = _workers(proc.pid)
        assert len(workers) == 2, workers
        start = time.monotonic()
        os.kill(workers[1], signal.SIGKILL if how == "dies" else signal.SIGSTOP)
        _, stderr = proc.communicate(timeout=90)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in _workers(proc.pid):
            os.kill(w, signal.SIGKILL)
    assert proc.returncode != 0
    assert "ChildFailedError" in stderr or "failed" in stderr.lower()
    if how == "hangs":
        assert "rank 0 of 2" in stderr and "collective timeout 8 s" in stderr, stderr[-3000:]
        assert took < 60
    else:
        assert took < 30
