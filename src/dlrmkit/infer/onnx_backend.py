"""An ONNX Runtime predictor (the MLPerf reference also ships ONNX): numpy in, probabilities out.

It runs dlrmkit's export (``dlrmkit.infer.onnx_export``: inputs ``dense`` and ``indices``, logits
out) and the DLRM reference's own export (``dlrm_s_pytorch.py --save-onnx``, MLPerf's ONNX
weights) as it is: inputs ``dense_x``, ``offsets`` and ``indices`` (per table or stacked),
probabilities out (see dlrmkit.reference_onnx).
"""

from __future__ import annotations

import os

import numpy as np

from dlrmkit.config import Precision
from dlrmkit.data.loader import cap_indices
from dlrmkit.errors import ConfigError
from dlrmkit.infer.backend import DEFAULT_MAX_PAIRS_PER_CALL


def _feeds(session, path):
    """A function (dense, sparse) -> the session's input dict, for the graph's own signature: the
    one ``export_onnx`` writes, or the DLRM reference's (``dlrm_s_pytorch.py --save-onnx``)."""
    names = [i.name for i in session.get_inputs()]
    if names == ["dense", "indices"]:
        return lambda dense, sparse: {"dense": dense, "indices": sparse}, False
    tables = sum(name.startswith("indices_") for name in names)
    if names[:1] == ["dense_x"] and ("indices" in names or tables):
        lists = tables > 0
        per_table_offsets = "offsets" not in names

        def feed(dense, sparse):  # one-hot bags: bag b of every table starts at b
            p, f = sparse.shape
            inputs = {"dense_x": dense}
            if per_table_offsets:
                inputs.update({f"offsets_{k}": np.arange(p, dtype=np.int64) for k in range(f)})
            else:
                inputs["offsets"] = np.broadcast_to(np.arange(p, dtype=np.int64), (f, p)).copy()
            if lists:
                inputs.update({f"indices_{k}": np.ascontiguousarray(sparse[:, k]) for k in range(f)})
            else:
                inputs["indices"] = np.ascontiguousarray(sparse.T)
            return inputs

        return feed, True
    raise ConfigError(f"{path}: ONNX inputs {names} are neither dlrmkit's (dense, indices) nor the DLRM "
                      f"reference's (dense_x, offsets, indices)")


def _providers(device: str) -> list:
    """ONNX Runtime's execution providers for a torch-style device name (cpu, cuda, cuda:N)."""
    import onnxruntime as ort

    kind, _, index = device.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind != "cuda":
        raise ConfigError(f"the onnxruntime backend runs on cpu or cuda[:N], not {device!r}")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ConfigError(f"device {device!r}: this ONNX Runtime ({ort.__version__}) has no CUDAExecutionProvider "
                          f"(it has {', '.join(available)}); pip install onnxruntime-gpu, or use --device cpu")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)})]


class OnnxPredictor:
    """An ONNX DLRM run by ONNX Runtime (on CPU, or on CUDA with onnxruntime-gpu); numpy in,
    probabilities out. The graph is dlrmkit's export or the DLRM reference's, run as it is."""

    def __init__(self, path: str | os.PathLike, max_index_range: int | None = None, threads: int | None = None,
                 max_pairs_per_call: int | None = None, device: str = "cpu", precision: Precision | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("the onnxruntime backend needs the onnxruntime package "
                              "(pip install 'dlrmkit[onnx]')") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the reference's export draws graph-rewrite warnings
        if threads:
            options.intra_op_num_threads = threads
        providers = _providers(device)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if self.session.get_providers()[0] != wanted:  # ONNX Runtime falls back to the CPU with a warning
            raise ConfigError(f"device {device!r}: ONNX Runtime could not start its {wanted} "
                              f"(the session has {self.session.get_providers()})")
        self._feed, self._probabilities = _feeds(self.session, path)
        self.device = device
        precision = precision or Precision()  # what the graph holds (the caller exported it)
        self.name = (f"onnxruntime{' reference-export' if self._probabilities else ''} "
                     f"emb-{precision.embeddings} mlp-{precision.mlp}")
        self.max_index_range = max_index_range
        if max_pairs_per_call is None and device.partition(":")[0] == "cpu":  # accelerators want whole batches
            max_pairs_per_call = DEFAULT_MAX_PAIRS_PER_CALL
        self.max_pairs_per_call = max_pairs_per_call  # None: calls are not split

    def __call__(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        sparse = cap_indices(sparse, self.max_index_range).astype(np.int64, copy=False)
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        out = np.empty(dense.shape[0], dtype=np.float32)  # (P,)
        step = self.max_pairs_per_call or max(1, dense.shape[0])
        for lo in range(0, dense.shape[0], step):
            y = self.session.run(None, self._feed(dense[lo : lo + step], sparse[lo : lo + step]))[0].reshape(-1)
            out[lo : lo + step] = y if self._probabilities else 1.0 / (1.0 + np.exp(-y))
        return out
