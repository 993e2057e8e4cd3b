"""ONNX export of a DLRM and an ONNX Runtime predictor (the MLPerf reference also ships ONNX).

The exported graph takes ``dense`` (P, Nd) float32 and ``indices`` (P, F) int64 and returns
``logits`` (P,); the batch dimension is dynamic. FP32 models only: int8 tables use a PyTorch
kernel that has no ONNX counterpart here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from dlrmkit.data.loader import cap_indices
from dlrmkit.errors import ConfigError
from dlrmkit.infer.backend import DEFAULT_MAX_PAIRS_PER_CALL
from dlrmkit.model import DLRM
from dlrmkit.model.quantized import QuantizedEmbeddingTables


def export_onnx(model: DLRM, path: str | os.PathLike, num_dense: int) -> Path:
    """Write ``model`` (FP32) as ONNX; returns the path."""
    if isinstance(model.embeddings, QuantizedEmbeddingTables):
        raise ConfigError("ONNX export takes FP32 models; int8 tables have no ONNX kernel here")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dense = torch.zeros(2, num_dense)
    indices = torch.zeros(2, len(model.embeddings.table_sizes), dtype=torch.int64)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its successor
        torch.onnx.export(model, (dense, indices), str(path), input_names=["dense", "indices"],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={"dense": {0: "pairs"}, "indices": {0: "pairs"}, "logits": {0: "pairs"}})
    return path


class OnnxPredictor:
    """An exported DLRM run by ONNX Runtime on CPU; numpy in, probabilities out."""

    name = "onnxruntime emb-fp32 mlp-fp32"

    def __init__(self, path: str | os.PathLike, max_index_range: int | None = None, threads: int | None = None,
                 max_pairs_per_call: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("the onnxruntime backend needs the onnxruntime package "
                              "(pip install 'dlrmkit[onnx]')") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.max_index_range = max_index_range
        self.max_pairs_per_call = max_pairs_per_call or DEFAULT_MAX_PAIRS_PER_CALL

    def __call__(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        sparse = cap_indices(sparse, self.max_index_range)
        out = np.empty(dense.shape[0], dtype=np.float32)  # (P,)
        step = self.max_pairs_per_call
        for lo in range(0, dense.shape[0], step):
            logits = self.session.run(None, {"dense": np.ascontiguousarray(dense[lo : lo + step], dtype=np.float32),
                                             "indices": sparse[lo : lo + step].astype(np.int64)})[0]
            out[lo : lo + step] = 1.0 / (1.0 + np.exp(-logits))
        return out
