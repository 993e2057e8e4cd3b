"""`dlrmkit quantize` and the precision handling of `dlrmkit bench`: inference checkpoints on the
command line, their reference AUC, and which precision a run gets."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrmkit.bench.accuracy import read_accuracy_log
from dlrmkit.bench.aggregation import read_trace
from dlrmkit.cli import main
from dlrmkit.cli_bench import resolve_precision
from dlrmkit.config import PRECISION_FOR_CONFIG_VER, Precision, TrainConfig, preset
from dlrmkit.data.dataset import Dataset
from dlrmkit.errors import ConfigError
from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.quantize import INFERENCE_FORMAT, load_for_inference
from dlrmkit.metrics import roc_auc

FAST = ["--fast", "--duration", "300"]


@pytest.fixture(scope="module")
def fp32_checkpoint(small_data, tmp_path_factory) -> Path:
    """A tiny DLRM trained for 60 steps (~1 s) on the session's 20k-row dataset (its test split:
    1429 pairs, 6 samples under MLPerf's aggregation)."""
    from dlrmkit.train.loop import train

    run = tmp_path_factory.mktemp("cli_quantize") / "run"
    train(small_data, run, preset("tiny", Dataset(small_data).table_sizes),
          TrainConfig(optimizer="adagrad", learning_rate=0.05, batch_size=1024, max_steps=60, threads=1,
                      eval_max_rows=500), progress=False)
    return run / "checkpoint.pt"


def _one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dlrmkit {command}: error:"), lines[0]
    return lines[0]


def _quantize(checkpoint: Path, out: Path, *flags: str) -> int:
    return main(["quantize", "--checkpoint", str(checkpoint), "--out", str(out), *flags])


def _bench(checkpoint: Path, data: Path, out: Path, *flags: str) -> int:
    return main(["bench", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(out), "--quiet",
                 "--no-plots", *FAST, *flags])


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


# --- quantize ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, precision", [
    (["--embeddings", "int8-rowwise", "--mlp", "int8"], Precision("int8-rowwise", "int8")),
    (["--embeddings", "int8-table"], Precision("int8-table", "fp32")),
    ([], PRECISION_FOR_CONFIG_VER["default"]),
    (["--config-ver", "high_accuracy"], PRECISION_FOR_CONFIG_VER["high_accuracy"]),
], ids=["rowwise-int8", "table-only", "default", "high_accuracy"])
def test_quantize_writes_an_inference_checkpoint(fp32_checkpoint, tmp_path, capsys, flags, precision):
    out = tmp_path / "q.pt"
    assert _quantize(fp32_checkpoint, out, *flags) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    fp32_model, cfg, _, _, _ = load_for_inference(fp32_checkpoint)
    rows, dim = sum(cfg.effective_table_sizes), cfg.embedding_dim
    before, after = rows * dim * 4, rows * (dim + 8)
    # the table sizes before and after, and the ratio 4D / (D + 8)
    assert f"tables {_mib(before)} -> {_mib(after)} ({4 * dim / (dim + 8):.2f}x smaller)" in captured.out, captured.out
    assert str(out) in captured.out and str(precision) in captured.out

    payload = torch.load(out, weights_only=True)
    assert payload["format"] == INFERENCE_FORMAT and payload["precision"] == precision.to_dict()
    assert payload["source_checkpoint"] == str(fp32_checkpoint.resolve())
    state = payload["state_dict"]
    packed = state["embeddings.packed"]
    assert "embeddings.weight" not in state  # no FP32 copy of the tables
    assert packed.dtype == torch.uint8 and packed.shape == (rows, dim + 8)
    assert packed.numel() * packed.element_size() / (rows * dim * 4) == (dim + 8) / (4 * dim)
    assert all(v.dtype == torch.float32 for k, v in state.items() if k.startswith(("bottom.", "top.")))

    model, got_cfg, got_precision, kind, source = load_for_inference(out)
    assert kind == "inference" and got_precision == precision and got_cfg == cfg
    assert source == str(fp32_checkpoint.resolve())


def test_quantize_an_inference_checkpoint_again(fp32_checkpoint, tmp_path, capsys):
    first = tmp_path / "q.pt"
    assert _quantize(fp32_checkpoint, first, "--embeddings", "int8-rowwise") == 0
    capsys.readouterr()
    assert _quantize(first, tmp_path / "qq.pt", "--embeddings", "int8-table") == 1
    line = _one_error_line(capsys.readouterr().err, "quantize")
    assert "already quantized" in line and str(first) in line
    assert not (tmp_path / "qq.pt").exists()


def test_quantize_missing_checkpoint(tmp_path, capsys):
    assert _quantize(tmp_path / "none.pt", tmp_path / "q.pt") == 1
    assert str(tmp_path / "none.pt") in _one_error_line(capsys.readouterr().err, "quantize")


def test_quantize_does_not_overwrite_its_fp32_checkpoint(fp32_checkpoint, tmp_path, capsys):
    """--out naming the checkpoint itself would replace the only FP32 copy with int8 tables, and
    the file would name itself as its FP32 source (accuracy runs would then measure the
    "FP32" reference AUC with the int8 model)."""
    checkpoint = tmp_path / "fp32.pt"
    shutil.copyfile(fp32_checkpoint, checkpoint)
    assert _quantize(checkpoint, checkpoint, "--embeddings", "int8-rowwise") == 1
    assert "--out" in _one_error_line(capsys.readouterr().err, "quantize")
    assert load_for_inference(checkpoint)[3] == "dlrmkit"


# --- bench on an inference checkpoint ---------------------------------------------------------

def _test_pairs(data: Path, pairs: int):
    split = Dataset(data).split("test")
    return (np.array(split.dense[:pairs], dtype=np.float32), np.array(split.sparse[:pairs]),
            np.asarray(split.label[:pairs], dtype=np.float64))


def test_bench_inference_checkpoint_measures_reference_with_fp32_source(small_data, fp32_checkpoint, tmp_path,
                                                                         capsys):
    quantized = tmp_path / "q.pt"
    assert _quantize(fp32_checkpoint, quantized, "--embeddings", "int8-table", "--mlp", "fp32") == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert _bench(quantized, small_data, out, "--accuracy") == 0, capsys.readouterr().err
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["checkpoint_format"] == "inference"
    assert result["precision"] == {"embeddings": "int8-table", "mlp": "fp32"}
    assert result["sut"]["backend"] == "pytorch emb-int8-table mlp-fp32"
    assert result["reference_auc_source"] == "measured (FP32 model, same pairs)"

    pairs = result["qsl"]["pairs"]
    dense, sparse, labels = _test_pairs(small_data, pairs)
    fp32_model, cfg, _, _, _ = load_for_inference(fp32_checkpoint)
    fp32_auc = roc_auc(labels, TorchPredictor(fp32_model, cfg.max_index_range)(dense, sparse).astype(np.float64))
    int8_model, _, precision, _, _ = load_for_inference(quantized)
    int8_probs = TorchPredictor(int8_model, cfg.max_index_range, precision=precision)(dense, sparse)
    int8_auc = roc_auc(labels, int8_probs.astype(np.float64))
    # the reference is the FP32 model's AUC on these pairs (computed the same way: exactly equal) ...
    assert result["reference_auc"] == fp32_auc
    # ... which the int8 model does not reproduce: a reference measured with it would show
    assert int8_auc != fp32_auc
    # the benchmark's own AUC is the int8 model's: LoadGen batches pairs differently, so compare the
    # logged predictions with ours and allow the AUC change that difference can make
    log = read_accuracy_log(out / "mlperf_log_accuracy.json")
    assert log.predictions.size == pairs
    offsets = read_trace(out / "dlrm_trace_of_aggregated_samples.txt")
    rows = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in log.samples.tolist()])
    err = float(np.abs(log.predictions - int8_probs[rows]).max())
    assert err < 1e-5  # float32 rounding of differently sized matrix products, not another model
    near = sum(int(np.sum(np.abs(int8_probs[labels == 0] - p) <= 2 * err)) for p in int8_probs[labels == 1])
    assert abs(result["roc_auc"] - int8_auc) <= near / ((labels == 1).sum() * (labels == 0).sum()) + 1e-12


def test_bench_inference_checkpoint_without_its_fp32_source(small_data, fp32_checkpoint, tmp_path, capsys):
    source = tmp_path / "fp32.pt"
    shutil.copyfile(fp32_checkpoint, source)
    quantized = tmp_path / "q.pt"
    assert _quantize(source, quantized, "--embeddings", "int8-rowwise") == 0
    source.unlink()
    capsys.readouterr()
    out = tmp_path / "out"
    assert _bench(quantized, small_data, out, "--accuracy", "--count-samples", "2") == 1
    line = _one_error_line(capsys.readouterr().err, "bench")
    assert "--reference-auc" in line and str(source) in line
    assert not (out / "result.json").exists()

    assert _bench(quantized, small_data, out, "--accuracy", "--count-samples", "2", "--reference-auc", "0.7") == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["reference_auc"] == 0.7 and result["reference_auc_source"] == "option"
    # performance runs need no reference
    assert _bench(quantized, small_data, tmp_path / "perf", "--count-samples", "2") == 0
    capsys.readouterr()


def test_bench_reference_is_never_a_quantized_model(small_data, fp32_checkpoint, tmp_path, capsys):
    """The FP32 source named in an inference checkpoint has since been replaced by an int8 one:
    the reference AUC must not be measured with it (one line asking for --reference-auc)."""
    source = tmp_path / "fp32.pt"
    shutil.copyfile(fp32_checkpoint, source)
    quantized = tmp_path / "q.pt"
    assert _quantize(source, quantized, "--embeddings", "int8-rowwise", "--mlp", "fp32") == 0
    other = tmp_path / "other.pt"
    assert _quantize(source, other, "--embeddings", "int8-table", "--mlp", "fp32") == 0
    shutil.copyfile(other, source)
    capsys.readouterr()
    rc = _bench(quantized, small_data, tmp_path / "out", "--accuracy", "--count-samples", "2")
    captured = capsys.readouterr()
    assert rc == 1, f"reference measured with a quantized model: {captured.out}"
    assert "--reference-auc" in _one_error_line(captured.err, "bench")


@pytest.mark.parametrize("flags", [["--embeddings", "fp32"], ["--mlp", "int8"],
                                   ["--embeddings", "int8-table", "--mlp", "bf16"]])
def test_bench_inference_checkpoint_in_another_precision(small_data, fp32_checkpoint, tmp_path, capsys, flags):
    quantized = tmp_path / "q.pt"
    assert _quantize(fp32_checkpoint, quantized, "--embeddings", "int8-rowwise", "--mlp", "bf16") == 0
    capsys.readouterr()
    assert _bench(quantized, small_data, tmp_path / "out", *flags) == 1
    line = _one_error_line(capsys.readouterr().err, "bench")
    assert "already quantized" in line and "FP32 checkpoint" in line
    assert not (tmp_path / "out" / "result.json").exists()


def test_bench_inference_checkpoint_runs_its_own_precision(small_data, fp32_checkpoint, tmp_path, capsys):
    quantized = tmp_path / "q.pt"
    assert _quantize(fp32_checkpoint, quantized, "--embeddings", "int8-table", "--mlp", "int8") == 0
    capsys.readouterr()
    out = tmp_path / "out"
    # flags repeating the checkpoint's precision are accepted; --config-ver does not override it
    assert _bench(quantized, small_data, out, "--embeddings", "int8-table", "--config-ver", "high_accuracy",
                  "--count-samples", "2") == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["precision"] == {"embeddings": "int8-table", "mlp": "int8"}
    cfg = load_for_inference(quantized)[1]
    assert result["embedding_bytes"] == sum(cfg.effective_table_sizes) * (cfg.embedding_dim + 8)


# --- bench on an FP32 checkpoint: which precision runs -----------------------------------------

@pytest.mark.parametrize("flags, precision", [
    (["--embeddings", "int8-table"], Precision("int8-table", "fp32")),
    (["--config-ver", "high_accuracy"], PRECISION_FOR_CONFIG_VER["high_accuracy"]),
], ids=["table-only", "high_accuracy"])
def test_bench_fp32_checkpoint_precision(small_data, fp32_checkpoint, tmp_path, capsys, flags, precision):
    out = tmp_path / "out"
    assert _bench(fp32_checkpoint, small_data, out, "--count-samples", "2", *flags) == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["checkpoint_format"] == "dlrmkit"
    assert result["precision"] == precision.to_dict()
    assert result["sut"]["backend"] == f"pytorch emb-{precision.embeddings} mlp-{precision.mlp}"
    cfg = load_for_inference(fp32_checkpoint)[1]
    rows, dim = sum(cfg.effective_table_sizes), cfg.embedding_dim
    assert result["embedding_bytes"] == rows * (dim + 8 if precision.embeddings != "fp32" else 4 * dim)


def _args(embeddings=None, mlp=None, config_ver="default", backend="torch"):
    return argparse.Namespace(embeddings=embeddings, mlp=mlp, config_ver=config_ver, backend=backend,
                              checkpoint="ckpt.pt")


@pytest.mark.parametrize("args, want", [
    (_args(), PRECISION_FOR_CONFIG_VER["default"]),
    (_args(config_ver="high_accuracy"), PRECISION_FOR_CONFIG_VER["high_accuracy"]),
    (_args(embeddings="int8-table"), Precision("int8-table", "fp32")),
    (_args(mlp="bf16"), Precision("fp32", "bf16")),
    (_args(embeddings="int8-rowwise", mlp="int8", config_ver="high_accuracy"), Precision("int8-rowwise", "int8")),
    (_args(backend="onnxruntime"), Precision()),
], ids=["default", "high_accuracy", "embeddings-only", "mlp-only", "both", "onnxruntime"])
def test_resolve_precision_fp32_checkpoint(args, want):
    for kind in ("dlrmkit", "reference"):
        assert resolve_precision(args, Precision(), kind) == want


def test_config_versions_name_different_precisions():
    """Otherwise the high_accuracy cases above could not tell the config versions apart."""
    assert PRECISION_FOR_CONFIG_VER["default"] != PRECISION_FOR_CONFIG_VER["high_accuracy"]


def test_resolve_precision_inference_checkpoint():
    own = Precision("int8-table", "bf16")
    for args in (_args(), _args(config_ver="high_accuracy"), _args(embeddings="int8-table"), _args(mlp="bf16"),
                 _args(embeddings="int8-table", mlp="bf16")):
        assert resolve_precision(args, own, "inference") == own
    for args in (_args(embeddings="fp32"), _args(embeddings="int8-rowwise"), _args(mlp="fp32"),
                 _args(embeddings="int8-table", mlp="int8")):
        with pytest.raises(ConfigError, match="already quantized"):
            resolve_precision(args, own, "inference")
