"""The inference checkpoint (int8 tables, int8/bf16/static-int8 MLPs, written by `dlrmkit quantize`)
and the predictors that run quantized models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quantize_cases import SMALL_KAGGLE, random_inputs as _inputs
from dlrmkit.checkpoint import save_checkpoint
from dlrmkit.config import ModelConfig, Precision, preset
from dlrmkit.errors import CheckpointError, ConfigError
from dlrmkit.infer import LazyPredictor, TorchPredictor
from dlrmkit.infer.quantize import (INFERENCE_VERSION, embedding_bytes, load_for_inference, quantize_embeddings,
                                    quantize_model, save_inference_checkpoint)
from dlrmkit.model import build_model
from dlrmkit.model.quantized import QuantizedEmbeddingTables


# --- the inference checkpoint -----------------------------------------------------------------

CKPT_CFG = preset("tiny", SMALL_KAGGLE)


def _predictions(model, precision: Precision, seed: int = 9) -> np.ndarray:
    dense, indices = _inputs(CKPT_CFG, 300, seed)
    return TorchPredictor(model, CKPT_CFG.max_index_range, precision=precision)(dense.numpy(), indices.numpy())


@pytest.mark.parametrize("mlp", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("embeddings", ["int8-rowwise", "int8-table", "fp32"])
def test_inference_checkpoint_round_trip(tmp_path, embeddings, mlp):
    precision = Precision(embeddings, mlp)
    model = build_model(CKPT_CFG, seed=4)
    fp32_state = {k: v.clone() for k, v in model.state_dict().items()}
    if embeddings != "fp32":
        quantize_embeddings(model, embeddings.removeprefix("int8-"))
    path = save_inference_checkpoint(tmp_path / "q.pt", model, CKPT_CFG, precision, source="/somewhere/fp32.pt")
    quantize_model(model, precision)  # in memory: int8 MLPs now (the file keeps FP32 weights)

    payload = torch.load(path, weights_only=True)
    state = payload["state_dict"]
    for key, value in fp32_state.items():
        if key.startswith(("bottom.", "top.")):
            assert torch.equal(state[key], value), key  # FP32 MLP weights in the file
    assert ("embeddings.packed" in state) == (embeddings != "fp32")
    assert ("embeddings.weight" in state) == (embeddings == "fp32")

    loaded, cfg, got_precision, kind, source = load_for_inference(path)
    assert kind == "inference" and got_precision == precision and cfg == CKPT_CFG and source == "/somewhere/fp32.pt"
    assert not loaded.training
    if embeddings != "fp32":
        assert isinstance(loaded.embeddings, QuantizedEmbeddingTables)
        packed = loaded.embeddings.packed
        assert packed.dtype == torch.uint8 and torch.equal(packed, model.embeddings.packed)
        assert embedding_bytes(loaded) == sum(CKPT_CFG.table_sizes) * (CKPT_CFG.embedding_dim + 8)
    else:
        assert torch.equal(loaded.embeddings.weight, fp32_state["embeddings.weight"])
    if mlp == "int8":  # re-quantized at load, deterministically: the same int8 weights and scales
        ours = [m for m in model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
        theirs = [m for m in loaded.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
        assert len(ours) == len(theirs) == len(CKPT_CFG.bottom_mlp) - 1 + len(CKPT_CFG.top_mlp)
        for a, b in zip(ours, theirs):
            assert torch.equal(a.weight().int_repr(), b.weight().int_repr())
            assert a.weight().q_scale() == b.weight().q_scale() and torch.equal(a.bias(), b.bias())
    np.testing.assert_array_equal(_predictions(loaded, got_precision), _predictions(model, precision))


@pytest.fixture
def inference_file(tmp_path):
    model = build_model(CKPT_CFG, seed=4)
    quantize_embeddings(model, "rowwise")
    return save_inference_checkpoint(tmp_path / "q.pt", model, CKPT_CFG, Precision("int8-rowwise", "fp32"))


def _rewrite(path: Path, edit) -> Path:
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("version", [INFERENCE_VERSION + 1, 0, None])
def test_inference_checkpoint_version_mismatch(inference_file, version):
    _rewrite(inference_file, lambda p: p.update(version=version))
    with pytest.raises(CheckpointError, match=f"version {version}"):
        load_for_inference(inference_file)


def test_inference_checkpoint_without_packed_tables(inference_file):
    _rewrite(inference_file, lambda p: p["state_dict"].pop("embeddings.packed"))
    with pytest.raises(CheckpointError, match="embeddings.packed"):
        load_for_inference(inference_file)


def test_inference_checkpoint_with_wrong_packed_shape(inference_file):
    _rewrite(inference_file, lambda p: p["state_dict"].update({"embeddings.packed": p["state_dict"]["embeddings.packed"][:-1]}))
    with pytest.raises(CheckpointError, match=str(inference_file)):
        load_for_inference(inference_file)


def test_inference_checkpoint_without_precision(inference_file):
    _rewrite(inference_file, lambda p: p.pop("precision"))
    with pytest.raises(CheckpointError, match="incomplete"):
        load_for_inference(inference_file)


def test_load_for_inference_on_a_training_checkpoint(tmp_path):
    model = build_model(CKPT_CFG, seed=6)
    path = save_checkpoint(tmp_path / "fp32.pt", model, CKPT_CFG)
    loaded, cfg, precision, kind, source = load_for_inference(path)
    assert kind == "dlrmkit" and precision == Precision() and precision.is_fp32 and cfg == CKPT_CFG
    assert source == str(path) and not loaded.training
    np.testing.assert_array_equal(_predictions(loaded, precision), _predictions(model.eval(), Precision()))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_for_inference(tmp_path / "missing.pt")



def test_loading_int8_tables_does_not_build_fp32_tables(tmp_path):
    """Int8 checkpoints exist for tables too large in FP32 (Terabyte capped at 40M rows: ~100 GB
    FP32, ~28 GB int8), so loading one must not allocate the FP32 tables first. In a fresh
    process, loading raises the peak resident memory by less than the FP32 tables' bytes (the
    int8 tables are (D + 8) / 4D = 31% of them here: room for a second copy of them)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status (Linux) to read the peak resident memory")
    rows, dim = 1 << 21, 32  # FP32 tables 256 MiB, int8 80 MiB
    cfg = ModelConfig((rows,), dim, (13, dim), (1,))
    model = build_model(cfg, seed=0, sparse_grad=False)
    quantize_embeddings(model, "rowwise")
    path = save_inference_checkpoint(tmp_path / "q.pt", model, cfg, Precision("int8-rowwise", "fp32"))
    del model
    # VmHWM: this process's peak resident memory (ru_maxrss would carry the parent's over exec)
    script = ("import re, sys\n"
              "from dlrmkit.infer.quantize import load_for_inference\n"
              "status = lambda: open('/proc/self/status').read()\n"
              "peak = lambda: int(re.search(r'VmHWM:\\s*(\\d+) kB', status()).group(1)) * 1024\n"
              "before = peak()\n"
              "model = load_for_inference(sys.argv[1])[0]\n"
              "assert model.embeddings.packed.shape == (%d, %d)\n"
              "print(peak() - before)\n" % (rows, dim + 8))
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grown = int(done.stdout)
    assert grown < rows * dim * 4, f"loading raised peak memory by {grown / 2**20:.0f} MiB"

# --- the predictor ----------------------------------------------------------------------------

def test_torch_predictor_runs_the_mlps_in_its_precision():
    """bf16 MLPs are autocast at run time; the int8 parts live in the model itself."""
    cfg = CKPT_CFG
    model = quantize_model(build_model(cfg, seed=2), Precision("int8-rowwise", "bf16"))
    dense, indices = _inputs(cfg, 500, seed=3)
    bf16 = TorchPredictor(model, precision=Precision("int8-rowwise", "bf16"), max_pairs_per_call=128)
    fp32 = TorchPredictor(model, precision=Precision("int8-rowwise", "fp32"), max_pairs_per_call=128)
    assert bf16.name == "pytorch emb-int8-rowwise mlp-bf16" and fp32.name == "pytorch emb-int8-rowwise mlp-fp32"
    want = {}
    with torch.no_grad():
        for name, enabled in (("fp32", False), ("bf16", True)):
            chunks = []
            for lo in range(0, 500, 128):  # the predictor's calls: 128 pairs each
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                    logits = model(dense[lo:lo + 128], indices[lo:lo + 128])
                chunks.append(torch.sigmoid(logits.float()).numpy())
            want[name] = np.concatenate(chunks)
    got_fp32, got_bf16 = fp32(dense.numpy(), indices.numpy()), bf16(dense.numpy(), indices.numpy())
    assert got_fp32.shape == got_bf16.shape == (500,) and got_bf16.dtype == np.float32
    np.testing.assert_array_equal(got_fp32, want["fp32"])
    np.testing.assert_array_equal(got_bf16, want["bf16"])
    assert not np.array_equal(got_bf16, got_fp32)  # bf16 did run


def test_lazy_predictor_builds_once_on_first_call():
    cfg = CKPT_CFG
    model = build_model(cfg, seed=2)
    built = []

    def build():
        built.append(1)
        return TorchPredictor(model)

    lazy = LazyPredictor(build)
    assert built == [] and lazy.name == "lazy"
    dense, indices = _inputs(cfg, 20, seed=1)
    first = lazy(dense.numpy(), indices.numpy())
    second = lazy(dense.numpy(), indices.numpy())
    assert built == [1] and lazy.name == "pytorch emb-fp32 mlp-fp32"
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, TorchPredictor(model)(dense.numpy(), indices.numpy()))


# --- int8 MLPs with calibrated (static) activation scales -------------------------------------


def test_static_int8_mlps_need_calibration():
    model = build_model(CKPT_CFG, seed=4)
    with pytest.raises(ConfigError, match="calibration"):
        quantize_model(model, Precision("fp32", "int8-static"))
    with pytest.raises(ConfigError, match="calibration rows"):
        quantize_model(build_model(CKPT_CFG, seed=4), Precision("fp32", "int8-static"), calibration=iter(()))


def test_static_int8_inference_checkpoint_round_trips(tmp_path):
    precision = Precision("int8-rowwise", "int8-static")
    dense, indices = _inputs(CKPT_CFG, 600, seed=3)
    model = build_model(CKPT_CFG, seed=4)
    quantize_embeddings(model, "rowwise")
    quantize_model(model, precision, calibration=[(dense, indices)])
    path = save_inference_checkpoint(tmp_path / "q.pt", model, CKPT_CFG, precision)
    loaded, _, got, kind, _ = load_for_inference(path)
    assert kind == "inference" and got == precision
    np.testing.assert_array_equal(_predictions(loaded, got), _predictions(model, precision))
