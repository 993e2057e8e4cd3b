"""On a CUDA device: inference gives the CPU's predictions (eager and compiled, int8 tables, bf16
MLPs, the hot tier), NCCL training follows one CPU process and resumes exactly, and `dlrmkit
bench --device cuda` runs through LoadGen. Runs where a GPU is present (the project's GPU
machines, `bash benchmarks/gpu_check.sh`); skipped elsewhere. Ordered so that a run cut short
by its time limit has done the cheap checks first."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dlrmkit.checkpoint import save_checkpoint
from dlrmkit.cli import main
from dlrmkit.config import Precision, SynthConfig, preset
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.placement import place_in_tiers
from dlrmkit.infer.quantize import quantize_model
from dlrmkit.model import build_model
from dlrmkit.model.quantized import SCHEMES, quantize, unpack

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "data"
    synth.write_binary(SynthConfig(rows=30_000, cardinality_scale=0.001, workers=1), out, progress=False)
    return Dataset(out)


def _inputs(data: Dataset, pairs: int = 3000):
    test = data.split("test")
    return np.array(test.dense[:pairs]), np.array(test.sparse[:pairs])


def test_int8_mlps_are_refused_on_cuda_and_the_reference_fits(data, monkeypatch):
    """torch.ao's int8 Linear layers have no CUDA kernels: refused by name; a small FP32 reference
    model goes to the GPU, one that would not fit in its free memory to the CPU."""
    import dlrmkit.infer.backend as backend
    from dlrmkit.errors import ConfigError
    from dlrmkit.infer.backend import reference_device

    model = build_model(preset("tiny", data.table_sizes), seed=0, sparse_grad=False)
    with pytest.raises(ConfigError, match="CPU only"):
        TorchPredictor(quantize_model(copy.deepcopy(model), Precision("fp32", "int8")), device="cuda",
                       precision=Precision("fp32", "int8"))
    assert reference_device(model, "cuda") == "cuda"
    monkeypatch.setattr(backend, "REFERENCE_HEADROOM", torch.cuda.mem_get_info()[0])
    assert reference_device(model, "cuda") == "cpu"


@pytest.mark.parametrize("precision", [Precision(), Precision("int8-rowwise", "fp32"), Precision("int8-table", "fp32"),
                                       Precision("int8-rowwise", "bf16")])
def test_cuda_predictions_match_cpu(data, precision):
    model = build_model(preset("tiny", data.table_sizes), seed=0, sparse_grad=False)
    dense, sparse = _inputs(data)
    cpu = TorchPredictor(quantize_model(copy.deepcopy(model), precision), precision=precision)(dense, sparse)
    gpu = TorchPredictor(quantize_model(copy.deepcopy(model), precision), device="cuda", precision=precision)
    # int8 rows are dequantized by a gather on CUDA and by FBGEMM's kernel on CPU: float32 rounding
    # apart; bf16 matmuls round differently on the two devices (one bf16 step of a logit)
    tolerance = 1e-5 if precision.mlp == "fp32" else 2e-2
    np.testing.assert_allclose(gpu(dense, sparse), cpu, rtol=0, atol=tolerance)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantizing_on_cuda_gives_the_cpu_codes(data, scheme):
    """Tables quantized on the GPU (as bench_inference.py does) hold the CPU's int8 rows: the same
    scales and biases, codes at most one step apart (float rounding on the two devices)."""
    weight = build_model(preset("tiny", data.table_sizes), seed=0, sparse_grad=False).embeddings.weight.detach()
    cpu = unpack(quantize(weight, data.table_sizes, scheme))
    gpu = [t.cpu() for t in unpack(quantize(weight.cuda(), data.table_sizes, scheme))]
    assert (gpu[0].int() - cpu[0].int()).abs().max() <= 1
    for g, c in zip(gpu[1:], cpu[1:]):
        torch.testing.assert_close(g, c, rtol=1e-6, atol=0)


@pytest.mark.parametrize("precision", [Precision(), Precision("int8-rowwise", "fp32")])
def test_cuda_hot_tier_with_cold_rows_in_host_memory(data, precision):
    model = build_model(preset("tiny", data.table_sizes), seed=0, sparse_grad=False)
    dense, sparse = _inputs(data)
    want = TorchPredictor(quantize_model(copy.deepcopy(model), precision), precision=precision)(dense, sparse)
    tiered = quantize_model(copy.deepcopy(model), precision)
    place_in_tiers(tiered, data, 0.05)
    predict = TorchPredictor(tiered, device="cuda", precision=precision)
    assert tiered.embeddings.hot.device.type == "cuda" and tiered.embeddings.cold.device.type == "cpu"
    assert tiered.embeddings.cold.is_pinned()
    np.testing.assert_allclose(predict(dense, predict.prepare(sparse)), want, rtol=0, atol=1e-5)


def _train_cli(data: Dataset, out, *flags: str, nproc: int | None = None) -> list[float]:
    args = [sys.executable, "-m", "dlrmkit", "train", "--data", str(data.path), "--out", str(out), "--preset", "tiny",
            "--batch-size", "2048", "--max-steps", "8", "--log-every", "1", "--optimizer", "adagrad", "--quiet", *flags]
    if nproc:
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                *args[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if not nproc:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the one-process trainer on CPU
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["type"] == "train"]


@pytest.mark.parametrize("nproc", [1, 2])
def test_nccl_training_matches_cpu(data, tmp_path, nproc):
    """torchrun on GPUs (NCCL, tables on the device, sharded row-wise) trains as one CPU process."""
    if nproc > torch.cuda.device_count():
        pytest.skip(f"needs {nproc} GPUs, {torch.cuda.device_count()} visible")
    cpu = _train_cli(data, tmp_path / "cpu")
    gpu = _train_cli(data, tmp_path / "gpu", "--sharding", "row-wise", "--dist-backend", "nccl", nproc=nproc)
    assert gpu == pytest.approx(cpu, rel=1e-4)
    config = (tmp_path / "gpu" / "config.json").read_text()
    assert f"{nproc} processes (nccl, cuda)" in config


def test_nccl_training_resumes_and_its_checkpoint_evaluates_on_cpu(data, tmp_path):
    """A GPU run stopped at step 4 and resumed to 8 trains as one run of 8 steps; `evaluate` on a
    CPU-only process reads its checkpoint (saved from CUDA tensors) and scores the test split as
    the GPU run did."""
    nccl = ("--sharding", "row-wise", "--dist-backend", "nccl")
    straight = _train_cli(data, tmp_path / "straight", *nccl, nproc=1)
    _train_cli(data, tmp_path / "resumed", *nccl, "--max-steps", "4", nproc=1)
    resumed = _train_cli(data, tmp_path / "resumed", *nccl, "--resume", nproc=1)
    # CUDA's sparse gradients sum rows with atomics: float32 rounding apart, not bit for bit
    assert resumed[-4:] == pytest.approx(straight[-4:], rel=1e-5)
    run = tmp_path / "straight"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "dlrmkit", "evaluate", "--checkpoint", str(run / "checkpoint.pt"),
                           "--data", str(data.path), "--out", str(run / "eval.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    on_gpu = json.loads((run / "summary.json").read_text())["test"]
    on_cpu = json.loads((run / "eval.json").read_text())
    assert on_cpu["rows"] == on_gpu["rows"]
    assert on_cpu["auc"] == pytest.approx(on_gpu["auc"], abs=1e-5)


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    cfg = preset("tiny", data.table_sizes)
    return save_checkpoint(tmp_path_factory.mktemp("gpu_ckpt") / "tiny.pt", build_model(cfg, seed=0), cfg)


def _bench(data, checkpoint, out, *flags: str) -> dict:
    pytest.importorskip("mlperf_loadgen", reason="MLPerf LoadGen is not installed (carry its wheel)")
    rc = main(["bench", "--checkpoint", str(checkpoint), "--data", str(data.path), "--output", str(out), "--quiet",
               "--no-plots", *flags])
    assert rc == 0
    return json.loads((out / "result.json").read_text())


def test_bench_on_cuda_gives_the_cpu_auc(data, checkpoint, tmp_path):
    """`dlrmkit bench --device cuda` through LoadGen: the same AUC as on CPU, eager and compiled."""
    # batches of up to 4 samples (< 4096 pairs): the compiled model warms up on one size
    accuracy = ("--accuracy", "--count-samples", "60", "--max-batchsize", "4", "--embeddings", "fp32", "--mlp", "fp32")
    cpu = _bench(data, checkpoint, tmp_path / "cpu", *accuracy)
    for backend in ("torch", "torch-compile"):
        gpu = _bench(data, checkpoint, tmp_path / backend, *accuracy, "--device", "cuda", "--backend", backend)
        assert gpu["roc_auc"] == pytest.approx(cpu["roc_auc"], abs=1e-6)
        assert gpu["device"] == f"cuda:0 ({torch.cuda.get_device_name(0)})" and cpu["device"].startswith("cpu (")


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_bench_default_precision_with_a_cuda_hot_tier(data, checkpoint, tmp_path, scenario):
    """The `default` precision with hot rows on the GPU and cold rows in pinned host memory: the
    accuracy run passes the 99% target, and a short performance run completes (SUT threads share
    the device)."""
    flags = ("--config-ver", "default", "--placement", "frequency", "--hot-fraction", "0.05", "--device", "cuda",
             "--scenario", scenario)
    accuracy = _bench(data, checkpoint, tmp_path / "accuracy", *flags, "--accuracy", "--count-samples", "60")
    assert accuracy["accuracy_pass"] and accuracy["hot_fraction"] == 0.05
    performance = _bench(data, checkpoint, tmp_path / "performance", *flags, "--fast", "--duration", "2000")
    key = "result_samples_per_second" if scenario == "Offline" else "result_completed_samples_per_sec"
    assert performance[key] > 0


@pytest.mark.parametrize("precision", [Precision(), Precision("int8-rowwise", "bf16")])
def test_cuda_torch_compile_matches_cpu(data, precision):
    """Compiled on CUDA, calls (split at 2^18 pairs, padded to a few bucket sizes) give the CPU's."""
    model = build_model(preset("tiny", data.table_sizes), seed=0, sparse_grad=False)
    cpu = TorchPredictor(quantize_model(copy.deepcopy(model), precision), precision=precision)
    gpu = TorchPredictor(quantize_model(copy.deepcopy(model), precision), device="cuda", precision=precision,
                         compile=True)
    assert gpu.max_pairs_per_call == 1 << 18
    tolerance = 1e-5 if precision.mlp == "fp32" else 2e-2
    for pairs in (270, 5000):  # two compiled sizes, 4096 and 8192
        dense, sparse = _inputs(data, pairs)
        np.testing.assert_allclose(gpu(dense, sparse), cpu(dense, sparse), rtol=0, atol=tolerance)


def test_onnxruntime_on_cuda_matches_cpu(data, tmp_path):
    """ONNX Runtime's CUDA provider (onnxruntime-gpu) runs the export in whole calls and gives the
    CPU's predictions; without that provider the predictor refuses the device by name."""
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")
    from dlrmkit.errors import ConfigError
    from dlrmkit.infer.onnx_backend import OnnxPredictor
    from dlrmkit.infer.onnx_export import export_onnx

    cfg = preset("tiny", data.table_sizes)
    path = export_onnx(build_model(cfg, seed=0, sparse_grad=False), tmp_path / "m.onnx", cfg.num_dense)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match="no CUDAExecutionProvider"):
            OnnxPredictor(path, device="cuda")
        pytest.skip(f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    dense, sparse = _inputs(data)
    gpu = OnnxPredictor(path, device="cuda")
    assert gpu.max_pairs_per_call is None and gpu.session.get_providers()[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu(dense, sparse), OnnxPredictor(path)(dense, sparse), rtol=0, atol=1e-5)
