"""Inference backends: numpy pairs in, click probabilities out.

The benchmark (LoadGen's SUT) calls a backend from several threads; each call is independent.
Shapes: P pairs, Nd dense features, F sparse features.
"""

from __future__ import annotations

import numpy as np
import torch

from dlrmkit.config import Precision
from dlrmkit.data.loader import cap_indices
from dlrmkit.errors import ConfigError
from dlrmkit.model import DLRM


# Pairs per forward pass: larger calls are split. On CPU, throughput falls as a call's
# activations outgrow the caches (kaggle shape, 2 cores: 226k pairs/s at 1-2k pairs per call,
# 183k at 34k pairs), so one LoadGen batch of 128 samples (~35k pairs) runs as ~17 calls.
DEFAULT_MAX_PAIRS_PER_CALL = 2048

# A compiled model runs on a few fixed shapes: each call is padded to the next power of two of at
# least this many pairs, or to the chunk size if that is smaller. On CPU every call is then one
# shape (2048); on accelerators (calls not split) the query sizes LoadGen sends, one sample (~270
# pairs) up to a batch of 128 samples (~35k-90k pairs), compile into at most ~6 shapes, under
# torch._dynamo's recompile limit of 8, and are padded at most 2x.
MIN_COMPILED_PAIRS = 4096


def compiled_pairs(pairs: int, max_pairs_per_call: int | None) -> int:
    """Rows a compiled call of ``pairs`` pairs runs on (the extra rows are zero inputs, dropped)."""
    bucket = max(MIN_COMPILED_PAIRS, 1 << (pairs - 1).bit_length())
    return bucket if max_pairs_per_call is None else min(bucket, max_pairs_per_call)


def torch_device(name: str) -> torch.device:
    """The torch device called ``name`` (cpu, cuda, cuda:N, ...), checked to be there."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device (cpu, cuda, cuda:N, ...)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        build = f"PyTorch {torch.__version__}" + ("" if device.type != "cuda" or torch.version.cuda else
                                                  ", a build without CUDA")
        raise ConfigError(f"device {name!r}: no {device.type} device is available here ({build}); "
                          f"use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {name!r}: only {count} {device.type} device(s) are visible "
                          f"({device.type}:0 to {device.type}:{count - 1})")
    return device


class TorchPredictor:
    """A DLRM in eager PyTorch; bf16 MLPs run under autocast (int8 parts are in the model itself)."""

    def __init__(self, model: DLRM, max_index_range: int | None = None, device: str = "cpu",
                 max_pairs_per_call: int | None = None, precision: Precision | None = None,
                 compile: bool = False, row_remap: np.ndarray | None = None):
        self.device = torch_device(device)
        if row_remap is None and hasattr(model.embeddings, "row_remap"):
            row_remap = model.embeddings.row_remap.cpu().numpy()
        self.model = model.eval().to(self.device)
        self.max_index_range = max_index_range
        self.precision = precision or Precision()
        self.name = f"{'torch-compile' if compile else 'pytorch'} emb-{self.precision.embeddings} mlp-{self.precision.mlp}"
        self._bf16 = self.precision.mlp == "bf16"
        # torch.compile specializes on shapes: each call is padded to one of a few sizes
        # (compiled_pairs), so the model compiles once per size, on first use.
        self._forward = torch.compile(self.model, dynamic=False) if compile else self.model
        self._pad = compile
        # With rows placed by frequency the inputs must be remapped; the QSL does it when it loads
        # samples (see dlrmkit.infer.placement), and calls then take remapped rows.
        self.prepare = None
        if row_remap is not None:
            from dlrmkit.infer.placement import remap_indices

            sizes = tuple(model.embeddings.table_sizes)
            self.prepare = lambda sparse: remap_indices(sparse, row_remap, sizes, max_index_range)
        if max_pairs_per_call is None and self.device.type == "cpu":  # accelerators want whole batches
            max_pairs_per_call = DEFAULT_MAX_PAIRS_PER_CALL
        self.max_pairs_per_call = max_pairs_per_call  # None: calls are not split

    @torch.inference_mode()
    def __call__(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """dense (P, Nd) float32 (log1p already applied), sparse (P, F) int -> probabilities (P,).
        ``sparse`` holds table indices, or fused rows from ``prepare`` when rows are placed."""
        if self.prepare is None:
            sparse = cap_indices(sparse, self.max_index_range)
        dense, sparse = (a if a.flags.writeable else a.copy() for a in (dense, sparse))  # torch needs writable
        dense_t, sparse_t = torch.from_numpy(dense), torch.from_numpy(sparse)
        out = torch.empty(dense.shape[0], dtype=torch.float32)  # (P,)
        step = self.max_pairs_per_call or max(1, dense.shape[0])
        for lo in range(0, dense.shape[0], step):
            d, s = dense_t[lo : lo + step], sparse_t[lo : lo + step]
            n = d.shape[0]
            if self._pad and n < (size := compiled_pairs(n, self.max_pairs_per_call)):
                d = torch.cat([d, d.new_zeros(size - n, d.shape[1])])  # zero rows: valid inputs,
                s = torch.cat([s, s.new_zeros(size - n, s.shape[1])])  # their outputs are dropped
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16):
                logits = self._forward(d.to(self.device), s.to(self.device))
            out[lo : lo + n] = torch.sigmoid(logits[:n].float()).cpu()
        return out.numpy()


class LazyPredictor:
    """A predictor built on first use (e.g. the FP32 reference model, needed in accuracy runs only)."""

    def __init__(self, build):
        self._build = build
        self._predictor = None
        self.name = "lazy"

    def __call__(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        if self._predictor is None:
            self._predictor = self._build()
            self.name = getattr(self._predictor, "name", self.name)
        return self._predictor(dense, sparse)
