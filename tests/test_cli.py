"""The command line end to end: every verb, the module entry point, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dlrmkit.checkpoint import load_checkpoint
from dlrmkit.cli import main
from dlrmkit.config import SynthConfig
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.data.splits import day_sizes

SYNTH = ["--rows", "3000", "--cardinality-scale", "0.001", "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A dataset made by `dlrmkit synth` and a run trained by `dlrmkit train` on it."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["synth", "--out", str(root / "data"), "--seed", "4", *SYNTH]) == 0
    assert main(["train", "--data", str(root / "data"), "--out", str(root / "run"), "--preset", "tiny",
                 "--max-steps", "5", "--batch-size", "256", "--threads", "1", "--quiet"]) == 0
    return root / "data", root / "run"


def _one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dlrmkit {command}: error:"), lines[0]
    return lines[0]


def test_synth_binary(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out), "--seed", "9", *SYNTH]) == 0
    captured = capsys.readouterr()
    assert "wrote 3000 rows" in captured.out and "oracle AUC" in captured.out
    assert captured.err == ""
    ds = Dataset(out)
    assert sum(ds.splits.values()) == 3000
    assert ds.table_sizes == SynthConfig(cardinality_scale=0.001).table_sizes
    # the same rows as the library call with the same settings
    synth.write_binary(SynthConfig(rows=3000, seed=9, cardinality_scale=0.001, workers=2), tmp_path / "api",
                       progress=False)
    api = Dataset(tmp_path / "api")
    for split in ("train", "val", "test"):
        assert np.array_equal(ds.split(split).sparse, api.split(split).sparse)
        assert np.array_equal(ds.split(split).label, api.split(split).label)


def test_synth_raw_terabyte(tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["synth", "--out", str(out), "--format", "raw", "--layout", "terabyte", "--days", "3",
                 *SYNTH]) == 0
    capsys.readouterr()
    names = ["day_0", "day_1", "day_2"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["synth.json"])
    assert [(out / n).read_bytes().count(b"\n") for n in names] == day_sizes(3000, 3)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["files"] == names and meta["rows"] == 3000


def test_synth_raw_kaggle(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "raw"), "--format", "raw", *SYNTH]) == 0
    assert (tmp_path / "raw" / "train.txt").read_bytes().count(b"\n") == 3000


def test_train_writes_run(cli_run):
    data, run = cli_run
    for name in ("checkpoint.pt", "best.pt", "summary.json", "metrics.jsonl", "config.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 5
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["model_config"]["embedding_dim"] == 16  # the tiny preset
    assert tuple(ckpt["model_config"]["table_sizes"]) == Dataset(data).table_sizes
    assert ckpt["train_config"]["batch_size"] == 256


def test_train_prints_summary(cli_run, tmp_path, capsys):
    data, _ = cli_run
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--max-steps", "2", "--batch-size", "512", "--optimizer", "sgd", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "trained 2 steps" in captured.out and "test AUC" in captured.out
    assert captured.err == ""


def test_train_architecture_flags(cli_run, tmp_path, capsys):
    data, _ = cli_run
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--arch-interaction-op", "cat", "--arch-sparse-feature-size", "3", "--arch-mlp-bot", "13-16-5",
                 "--arch-mlp-top", "7-1", "--max-ind-range", "50", "--max-steps", "2", "--batch-size", "512",
                 "--quiet"]) == 0
    cfg = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model_config"]
    assert cfg["interaction"] == "cat" and cfg["embedding_dim"] == 3
    assert tuple(cfg["bottom_mlp"]) == (13, 16, 5) and tuple(cfg["top_mlp"]) == (7, 1)
    assert cfg["max_index_range"] == 50
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model_state"]
    sizes = Dataset(data).table_sizes
    assert state["embeddings.weight"].shape == (sum(min(t, 50) for t in sizes), 3)
    assert state["top.0.weight"].shape == (7, 5 + 26 * 3)


def test_evaluate(cli_run, tmp_path, capsys):
    data, run = cli_run
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("test: AUC") and captured.err == ""
    result = json.loads((run / "eval_test.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert result["auc"] == pytest.approx(summary["test"]["auc"], abs=1e-12)
    assert result["rows"] == Dataset(data).splits["test"] and result["split"] == "test"

    out = tmp_path / "val.json"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(data), "--split", "val",
                 "--max-rows", "100", "--batch-size", "64", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rows"] == 100 and result["split"] == "val"


def _python_m(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlrmkit", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_module_entry_point(tmp_path):
    ok = _python_m("synth", "--out", str(tmp_path / "data"), *SYNTH, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "wrote 3000 rows" in ok.stdout
    assert sum(Dataset(tmp_path / "data").splits.values()) == 3000
    bad = _python_m("evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path / "nodata"),
                    cwd=tmp_path)
    assert bad.returncode == 1
    _one_error_line(bad.stderr, "evaluate")


# --- errors: exit code 1 and exactly one line on stderr ----------------------------------------


def _evaluate_error(capsys, checkpoint, data, *extra, code: int = 1) -> str:
    rc = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), *extra])
    captured = capsys.readouterr()
    assert rc == code
    assert captured.out == ""
    return _one_error_line(captured.err, "evaluate")


def test_evaluate_missing_dataset(cli_run, tmp_path, capsys):
    _, run = cli_run
    line = _evaluate_error(capsys, run / "checkpoint.pt", tmp_path / "missing")
    assert str(tmp_path / "missing") in line


def test_evaluate_wrong_dataset_version(cli_run, copy_dataset, capsys):
    data, run = cli_run
    bad = copy_dataset(data)
    meta = json.loads((bad / "metadata.json").read_text())
    meta["format_version"] = 2
    (bad / "metadata.json").write_text(json.dumps(meta))
    line = _evaluate_error(capsys, run / "checkpoint.pt", bad)
    assert "format_version" in line and str(bad / "metadata.json") in line


def test_evaluate_truncated_checkpoint(cli_run, tmp_path, capsys):
    data, run = cli_run
    data_bytes = (run / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data_bytes[: len(data_bytes) // 2])
    line = _evaluate_error(capsys, cut, data)
    assert str(cut) in line


def test_evaluate_checkpoint_smaller_than_dataset_tables(cli_run, tmp_path, capsys):
    _, run = cli_run
    assert main(["synth", "--out", str(tmp_path / "big"), "--rows", "500", "--cardinality-scale", "0.002",
                 "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()
    line = _evaluate_error(capsys, run / "checkpoint.pt", tmp_path / "big")
    assert "table" in line


def test_evaluate_checkpoint_not_matching_architecture(cli_run, tmp_path, capsys):
    data, run = cli_run
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["model_config"]["top_mlp"] = [16, 1]
    torch.save(ckpt, tmp_path / "other.pt")
    line = _evaluate_error(capsys, tmp_path / "other.pt", data)
    assert "top.0.weight" in line


def test_evaluate_unknown_split(cli_run, capsys):
    data, run = cli_run
    line = _evaluate_error(capsys, run / "checkpoint.pt", data, "--split", "holdout")
    assert "holdout" in line


def test_train_nan_learning_rate(cli_run, tmp_path, capsys):
    data, _ = cli_run
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
               "--optimizer", "sgd", "--learning-rate", "1e6", "--max-steps", "30", "--batch-size", "256",
               "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1
    line = _one_error_line(captured.err, "train")
    assert "nan" in line.lower() or "inf" in line.lower()


def test_train_invalid_option_and_missing_data(cli_run, tmp_path, capsys):
    data, _ = cli_run
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
               "--learning-rate", "-1", "--quiet"])
    assert rc == 1
    assert "learning_rate" in _one_error_line(capsys.readouterr().err, "train")
    rc = main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "train")


def test_synth_invalid_rows(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path / "d"), "--rows", "5", "--quiet"])
    assert rc == 1
    assert "rows" in _one_error_line(capsys.readouterr().err, "synth")


@pytest.mark.parametrize("extra, code", [(["--max-rows", "1"], 1), (["--batch-size", "0"], 2)])
def test_evaluate_bad_options_give_one_error_line(cli_run, capsys, extra, code):
    """README: errors in input end with one line and a non-zero exit code (not a traceback);
    malformed flags are usage errors (exit 2)."""
    data, run = cli_run
    _evaluate_error(capsys, run / "checkpoint.pt", data, *extra, code=code)
