"""The inference paths on a CUDA device give the CPU's predictions. Runs where a GPU is present
(the project's GPU machines); skipped elsewhere."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dlrmkit.config import Precision, SynthConfig, preset
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.placement import place_in_tiers
from dlrmkit.infer.quantize import quantize_model
from dlrmkit.model import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "data"
    synth.write_binary(SynthConfig(rows=30_000, cardinality_scale=0.001, workers=1), out, progress=False)
    return Dataset(out)


def _inputs(data: Dataset, pairs: int = 3000):
    test = data.split("test")
    return np.array(test.dense[:pairs]), np.array(test.sparse[:pairs])


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
