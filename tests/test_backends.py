"""Inference backends: the ONNX export run by ONNX Runtime and torch.compile give the eager
PyTorch model's predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlrmkit.bench.run import run_benchmark
from dlrmkit.checkpoint import save_checkpoint
from dlrmkit.cli import main
from dlrmkit.config import AggregationConfig, BenchConfig, Precision, SynthConfig, preset
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.errors import ConfigError
from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.backend import (CPU_ONLY_MLPS, DEFAULT_MAX_PAIRS_PER_CALL, REFERENCE_HEADROOM,
                                   check_precision_on_device, compiled_pairs, compiled_sizes, pairs_per_call,
                                   recompile_limit, reference_device)
from dlrmkit.infer.quantize import load_for_inference, quantize_model
from dlrmkit.model import build_model

pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")
from dlrmkit.infer.onnx_backend import OnnxPredictor  # noqa: E402
from dlrmkit.infer.onnx_export import export_in_precision, export_onnx  # noqa: E402


def _inputs(cfg, pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.gamma(1.0, 2.0, (pairs, cfg.num_dense)).astype(np.float32)
    sparse = np.stack([rng.integers(0, n, pairs) for n in cfg.table_sizes], axis=1).astype(np.int32)
    return dense, sparse


@pytest.mark.parametrize("name,interaction,self_interaction", [("tiny", "dot", False), ("kaggle", "dot", True),
                                                               ("tiny", "cat", False)])
def test_onnx_runtime_equals_pytorch_fp32(tmp_path, name, interaction, self_interaction):
    base = preset(name, (50, 7, 300, 2) * 6 + (11, 3))
    cfg = type(base)(**{**base.to_dict(), "interaction": interaction, "interaction_self": self_interaction})
    model = build_model(cfg, seed=1, sparse_grad=False)
    dense, sparse = _inputs(cfg, 5000)  # more than one call of 2048 pairs, and a short last one
    path = export_onnx(model, tmp_path / "m.onnx", cfg.num_dense)
    got = OnnxPredictor(path, threads=1)(dense, sparse)
    want = TorchPredictor(model)(dense, sparse)
    assert got.shape == want.shape == (5000,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_onnx_applies_max_index_range(tmp_path):
    cfg = preset("tiny", (40,) * 26)
    model = build_model(cfg, seed=2, sparse_grad=False)
    dense, sparse = _inputs(cfg, 64)
    path = export_onnx(model, tmp_path / "m.onnx", cfg.num_dense)
    got = OnnxPredictor(path, max_index_range=40, threads=1)(dense, sparse + 40 * 3)  # indices past the tables
    np.testing.assert_allclose(got, TorchPredictor(model)(dense, sparse), atol=1e-5)


@pytest.mark.parametrize("tables", ["int8-rowwise", "int8-table"])
def test_onnx_int8_tables_equal_pytorch(tmp_path, tables):
    """Int8 tables exported as gathers of codes, scales and biases dequantize as PyTorch's lookup
    does, in a quarter of the FP32 bytes (dim 16: codes + 8 bytes a row)."""
    cfg = preset("tiny", (50, 7, 300, 2) * 6 + (11, 3))
    precision = Precision(tables, "fp32")
    model = quantize_model(build_model(cfg, seed=4, sparse_grad=False), precision)
    dense, sparse = _inputs(cfg, 3000)
    path = export_onnx(model, tmp_path / "m.onnx", cfg.num_dense)
    got = OnnxPredictor(path, threads=1, precision=precision)
    assert got.name == f"onnxruntime emb-{tables} mlp-fp32"
    np.testing.assert_allclose(got(dense, sparse), TorchPredictor(model, precision=precision)(dense, sparse),
                               rtol=0, atol=1e-5)
    fp32 = export_onnx(build_model(cfg, seed=4, sparse_grad=False), tmp_path / "fp32.onnx", cfg.num_dense)
    rows = sum(cfg.table_sizes)
    assert fp32.stat().st_size - path.stat().st_size == pytest.approx(rows * (4 * 16 - (16 + 8)), rel=0.01)


def test_onnx_int8_mlps(tmp_path):
    """ONNX Runtime's dynamic int8 MLPs: weights stored as int8, outputs near FP32 (activations
    quantized per call, as PyTorch's int8 MLPs)."""
    cfg = preset("kaggle", (50, 7, 300, 2) * 6 + (11, 3))
    model = build_model(cfg, seed=5, sparse_grad=False)
    dense, sparse = _inputs(cfg, 3000)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", cfg.num_dense)
    int8 = export_onnx(model, tmp_path / "int8.onnx", cfg.num_dense, mlp="int8")
    assert not (tmp_path / "int8.fp32.onnx").exists()
    mlp_weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and "embeddings" not in n)
    assert fp32.stat().st_size - int8.stat().st_size > 0.7 * 3 * mlp_weights  # 4 bytes -> 1 a weight
    want = TorchPredictor(model)(dense, sparse)
    got = OnnxPredictor(int8, threads=1)(dense, sparse)
    assert 0 < np.abs(got - want).max() < 2e-2


@pytest.mark.parametrize("mlp", ["fp32", "int8"])
def test_onnx_export_of_a_model_over_the_protobuf_limit(tmp_path, monkeypatch, mlp):
    """Models over 2 GiB keep their weights in one external data file (here the limit is lowered
    to a few KiB): the same predictions, and no scratch files left beside the model."""
    from dlrmkit.infer import onnx_export

    cfg = preset("tiny", (50, 7, 300, 2) * 6 + (11, 3))
    model = build_model(cfg, seed=6, sparse_grad=False)
    dense, sparse = _inputs(cfg, 500)
    small = export_onnx(model, tmp_path / "small" / "m.onnx", cfg.num_dense, mlp=mlp)
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 4096)
    large = export_onnx(model, tmp_path / "large" / "m.onnx", cfg.num_dense, mlp=mlp)
    assert sorted(p.name for p in large.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert sorted(p.name for p in small.parent.iterdir()) == ["m.onnx"]
    assert large.stat().st_size < 0.2 * small.stat().st_size
    np.testing.assert_array_equal(OnnxPredictor(large, threads=1)(dense, sparse),
                                  OnnxPredictor(small, threads=1)(dense, sparse))


def test_onnx_export_refusals(tmp_path):
    cfg = preset("tiny", (30,) * 26)
    with pytest.raises(ConfigError, match=r"ONNX Runtime runs MLPs in fp32 or int8 here \(its dynamic quantization\), not bf16"):
        export_onnx(build_model(cfg, seed=0, sparse_grad=False), tmp_path / "m.onnx", cfg.num_dense, mlp="bf16")
    quantized = quantize_model(build_model(cfg, seed=0, sparse_grad=False), Precision("fp32", "int8"))
    with pytest.raises(ConfigError, match="FP32 MLP weights .* bottom MLP holds a .*Linear: give the FP32 checkpoint"):
        export_onnx(quantized, tmp_path / "m.onnx", cfg.num_dense)


@pytest.mark.parametrize("precision", [Precision(), Precision("int8-rowwise", "bf16")])
def test_torch_compile_equals_eager(precision):
    cfg = preset("tiny", (50, 7, 300, 2) * 6 + (11, 3))
    model = quantize_model(build_model(cfg, seed=3, sparse_grad=False), precision)
    dense, sparse = _inputs(cfg, 3000)
    eager = TorchPredictor(model, precision=precision, max_pairs_per_call=1024)
    compiled = TorchPredictor(model, precision=precision, max_pairs_per_call=1024, compile=True)
    # bf16 kernels may fuse differently when compiled: one bf16 rounding step of the logit
    tolerance = 1e-6 if precision.mlp == "fp32" else 1e-2
    np.testing.assert_allclose(compiled(dense, sparse), eager(dense, sparse), rtol=0, atol=tolerance)


def test_compiled_calls_run_on_few_shapes():
    """Calls run on powers of two (from 1/8 of the chunk, 256 to 4096) or the chunk size: at most
    4 shapes for chunks up to 32k pairs (CPU), 6 for the query sizes LoadGen sends unsplit."""
    assert [compiled_pairs(n, 2048) for n in (1, 256, 270, 700, 1025, 2048)] == [256, 256, 512, 1024, 2048, 2048]
    assert [compiled_pairs(n, 3000) for n in (1, 2049, 3000)] == [512, 3000, 3000]
    assert [compiled_pairs(n, 65536) for n in (1, 9000)] == [4096, 16384]
    assert compiled_pairs(5000, 1 << 62) == compiled_pairs(5000, None) == 8192
    assert [compiled_pairs(n, None) for n in (1, 270, 4096, 4097, 35_000, 90_000)] == \
        [4096, 4096, 4096, 8192, 65536, 131072]
    # the sizes LoadGen sends (1 to 128 samples of up to 700 pairs) fit dynamo's 8 recompiles
    assert len({compiled_pairs(n, None) for n in range(1, 128 * 700 + 1, 97)}) <= 6
    for chunk in (1000, 2048, 3000, 32768):
        assert len({compiled_pairs(n, chunk) for n in range(1, chunk + 1)}) <= 4


def test_calls_per_device_and_their_compiled_shapes():
    """CPU calls are cache-sized; on a GPU eager calls are whole and compiled ones split at 2^18
    pairs, so that any batch LoadGen sends (2048 terabyte samples: ~1.4M pairs) compiles within
    dynamo's recompile limit; a split that would pass it is refused before compiling."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert pairs_per_call(cpu, False, None) == pairs_per_call(cpu, True, None) == DEFAULT_MAX_PAIRS_PER_CALL
    assert pairs_per_call(gpu, False, None) is None and pairs_per_call(gpu, True, None) == 1 << 18
    assert pairs_per_call(gpu, True, 5000) == pairs_per_call(cpu, False, 5000) == 5000
    sizes = compiled_sizes(2048 * 700, pairs_per_call(gpu, True, None))
    assert sizes == [4096 << k for k in range(7)] and len(sizes) <= recompile_limit()
    assert len(compiled_sizes(2048 * 700, None)) > recompile_limit()  # why compiled calls are split
    cfg = preset("tiny", (50,) * 26)
    predictor = TorchPredictor(build_model(cfg, seed=0, sparse_grad=False), max_pairs_per_call=1 << 22, compile=True)
    dense, sparse = _inputs(cfg, 16)
    with pytest.raises(ConfigError, match=r"11 shapes \(4096 to 4194304\).*--max-pairs-per-call"):
        predictor.warm_up(dense, sparse, 1 << 22)
    assert not predictor.compiled_shapes


def test_int8_mlps_run_on_the_cpu_only():
    for mlp in CPU_ONLY_MLPS:
        check_precision_on_device(Precision("int8-rowwise", mlp), torch.device("cpu"))
        with pytest.raises(ConfigError, match=f"--mlp {mlp}: .*CPU only, not on cuda"):
            check_precision_on_device(Precision("fp32", mlp), torch.device("cuda"))
    check_precision_on_device(Precision("int8-rowwise", "bf16"), torch.device("cuda"))


def test_the_fp32_reference_goes_to_the_cpu_when_the_gpu_is_full(monkeypatch):
    """An accuracy run's FP32 model (all of it: MLPerf's is ~100 GB) joins the benchmark's on the
    GPU only where it fits in the free memory, with a GiB to spare; else its AUC is measured on CPU."""
    import dlrmkit.infer.backend as backend

    model = build_model(preset("tiny", (1000,) * 26), seed=0, sparse_grad=False)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert reference_device(model, "cpu") == "cpu"
    monkeypatch.setattr(backend, "torch_device", torch.device)
    for free, where in ((weights + REFERENCE_HEADROOM, "cuda:1"), (weights + REFERENCE_HEADROOM - 1, "cpu")):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 80 << 30))
        assert reference_device(model, "cuda:1") == where


def test_torch_compile_unsplit_calls_equal_eager():
    """Calls not split into chunks (the accelerator default) are padded to a bucket, not beyond."""
    cfg = preset("tiny", (50, 7, 300, 2) * 6 + (11, 3))
    model = build_model(cfg, seed=3, sparse_grad=False)
    eager = TorchPredictor(model, max_pairs_per_call=1 << 62)
    compiled = TorchPredictor(model, max_pairs_per_call=1 << 62, compile=True)
    for pairs in (300, 5000):
        dense, sparse = _inputs(cfg, pairs, seed=pairs)
        np.testing.assert_allclose(compiled(dense, sparse), eager(dense, sparse), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def bench_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    synth.write_binary(SynthConfig(rows=30_000, cardinality_scale=0.001, workers=1), root / "data", progress=False)
    cfg = preset("tiny", Dataset(root / "data").table_sizes)
    checkpoint = save_checkpoint(root / "tiny.pt", build_model(cfg, seed=0), cfg)
    return root / "data", checkpoint


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_loadgen_runs_compile_nothing_after_the_warm_up(bench_setup, tmp_path, scenario):
    """Every call size the SUT sends was compiled before LoadGen started: no compiling inside a
    timed run, nor in several SUT threads at once."""
    data, checkpoint = bench_setup
    model = load_for_inference(checkpoint)[0]
    predict = TorchPredictor(model, compile=True)
    warmed: list[set[int]] = []
    warm_up = predict.warm_up
    predict.warm_up = lambda *args: (warm_up(*args), warmed.append(set(predict.compiled_shapes)))
    cfg = BenchConfig(scenario=scenario, duration_ms=1000, fast=True, threads=2, max_batchsize=16)
    result = run_benchmark(predict, Dataset(data).split("test"), cfg, AggregationConfig(fix=40), tmp_path,
                           plots=False, log=lambda _: None)
    assert result["result_validity"] in ("VALID", "INVALID")
    assert warmed == [{256, 512, 1024}]  # 16 samples of 40 pairs: up to 640 pairs a call
    assert predict.compiled_shapes == warmed[0]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch-compile", "torch"])
def test_bench_backends_give_the_same_auc(bench_setup, tmp_path, backend, capsys):
    data, checkpoint = bench_setup
    out = tmp_path / backend
    rc = main(["bench", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(out), "--quiet",
               "--backend", backend, "--embeddings", "fp32", "--mlp", "fp32", "--accuracy", "--count-samples", "12"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["backend"] == backend
    # the reference AUC is the eager FP32 model's on the same pairs
    assert result["roc_auc"] == pytest.approx(result["reference_auc"], abs=2e-6)
    if backend == "onnxruntime":
        assert (out / "model.onnx").is_file() and result["sut"]["backend"].startswith("onnxruntime")


@pytest.mark.parametrize("flags,message", [
    (["--mlp", "bf16"], "ONNX Runtime runs MLPs in fp32 or int8 here (its dynamic quantization), not bf16"),
    (["--mlp", "int8-static"], "not int8-static"),
    (["--placement", "frequency"], "need a torch backend"),
])
def test_bench_onnxruntime_refusals(bench_setup, tmp_path, capsys, flags, message):
    data, checkpoint = bench_setup
    rc = main(["bench", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(tmp_path),
               "--backend", "onnxruntime", *flags])
    assert rc == 1 and message in capsys.readouterr().err


def test_bench_onnxruntime_int8(bench_setup, tmp_path, capsys):
    """int8 tables and int8 MLPs on ONNX Runtime: a quarter of the table bytes, and the accuracy
    run scores it against eager FP32 PyTorch on the same pairs."""
    data, checkpoint = bench_setup
    out = tmp_path / "int8"
    rc = main(["bench", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(out), "--quiet",
               "--backend", "onnxruntime", "--embeddings", "int8-rowwise", "--mlp", "int8", "--accuracy",
               "--count-samples", "12"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["sut"]["backend"] == "onnxruntime emb-int8-rowwise mlp-int8"
    assert result["precision"] == {"embeddings": "int8-rowwise", "mlp": "int8"}
    assert result["accuracy_pass"] and result["roc_auc"] != result["reference_auc"]
    assert result["roc_auc"] == pytest.approx(result["reference_auc"], abs=5e-3)
    fp32 = load_for_inference(checkpoint)[0].embeddings.weight
    assert result["embedding_bytes"] < fp32.numel() * 4 / 2.5  # dim 16: 24 bytes a row against 64


def test_cli_export(bench_setup, tmp_path, capsys):
    """`dlrmkit export`: the checkpoint as an ONNX file that ONNX Runtime runs as bench does."""
    data, checkpoint = bench_setup
    model = load_for_inference(checkpoint)[0]
    dense, sparse = np.array(Dataset(data).split("test").dense[:3000]), np.array(Dataset(data).split("test").sparse[:3000])
    for tables, mlp in (("fp32", "fp32"), ("int8-rowwise", "int8")):
        out = tmp_path / f"{tables}-{mlp}.onnx"
        assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--embeddings", tables,
                     "--mlp", mlp]) == 0
        assert f"wrote {out}" in capsys.readouterr().out
        got = OnnxPredictor(out, threads=1)(dense, sparse)
        if mlp == "fp32":
            np.testing.assert_allclose(got, TorchPredictor(model)(dense, sparse), rtol=0, atol=1e-5)
        else:  # what bench --backend onnxruntime runs in that precision
            direct = export_in_precision(load_for_inference(checkpoint)[0], Precision(tables, mlp),
                                         tmp_path / "direct.onnx", model.bottom[0].in_features)
            np.testing.assert_array_equal(got, OnnxPredictor(direct, threads=1)(dense, sparse))
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.pt")]) == 1
    assert "name the ONNX file *.onnx" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--mlp", "bf16"]) == 2
