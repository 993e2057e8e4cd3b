"""Inference backends: numpy pairs in, click probabilities out.

The benchmark (LoadGen's SUT) calls a backend from several threads; each call is independent.
Shapes: P pairs, Nd dense features, F sparse features.
"""

from __future__ import annotations

import threading

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

# A compiled model runs on a few fixed shapes, each compiled once on first use: a call is padded
# to the next power of two of its pairs, at least 1/8 of the chunk size but between 256 and 4096
# (CPU, chunks of 2048: 256, 512, 1024 or 2048 pairs), and at most the chunk. Calls that are not
# split (accelerators) start at 4096, so the sizes LoadGen sends, from one sample (~270 pairs) to
# a batch of 128 (~35k-90k pairs), take at most 6 shapes, within torch._dynamo's recompile limit
# of 8. Padding at most doubles a call's work; on CPU a one-sample query padded to 512 pairs
# instead of 2048 runs 3.4x faster (kaggle shape).
COMPILED_FLOOR = (256, 4096)


def compiled_pairs(pairs: int, max_pairs_per_call: int | None) -> int:
    """Rows a compiled call of ``pairs`` pairs runs on (the extra rows are zero inputs, dropped)."""
    chunk = max_pairs_per_call or 1 << 62
    low, high = COMPILED_FLOOR
    floor = max(low, min(high, 1 << max((chunk >> 3) - 1, 0).bit_length()))
    return min(chunk, max(floor, 1 << max(pairs - 1, 0).bit_length()))


def compiled_sizes(max_pairs: int, max_pairs_per_call: int | None) -> list[int]:
    """Every size a compiled model runs on for calls of up to ``max_pairs`` pairs, smallest first."""
    top = compiled_pairs(max_pairs, max_pairs_per_call)
    sizes = [compiled_pairs(1, max_pairs_per_call)]
    while sizes[-1] < top:
        sizes.append(compiled_pairs(sizes[-1] + 1, max_pairs_per_call))
    return sizes


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


def device_description(name: str) -> str:
    """``name`` with what it is: "cpu (16 threads)", "cuda:0 (NVIDIA H100 80GB HBM3)"."""
    device = torch_device(name)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


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
        # a shape's first call compiles it: one thread at a time (warm_up compiles them up front)
        self.compiled_shapes: set[int] = set()
        self._compile_lock = threading.Lock()
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
            if self._pad and d.shape[0] not in self.compiled_shapes:
                with self._compile_lock:
                    logits = self._logits(d, s)
                    self.compiled_shapes.add(d.shape[0])
            else:
                logits = self._logits(d, s)
            out[lo : lo + n] = torch.sigmoid(logits[:n].float()).cpu()
        return out.numpy()

    def _logits(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16):
            return self._forward(dense.to(self.device), sparse.to(self.device))

    def warm_up(self, dense: np.ndarray, sparse: np.ndarray, max_pairs: int) -> None:
        """Compile, before any timed run, every shape that calls of up to ``max_pairs`` pairs take,
        on the pairs given (repeated as needed); an eager model needs nothing."""
        if not self._pad:
            return
        for size in compiled_sizes(max_pairs, self.max_pairs_per_call):
            if size not in self.compiled_shapes:
                rows = np.arange(size) % dense.shape[0]
                self(dense[rows], sparse[rows])


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
