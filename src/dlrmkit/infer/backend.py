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
# (CPU, chunks of 2048: 256, 512, 1024 or 2048 pairs), and at most the chunk. On accelerators a
# compiled model's calls are split at 2^18 pairs (eager ones are not split), so its sizes run from
# 4096 to 2^18: at most 7 shapes, within torch._dynamo's recompile limit of 8, whatever batch
# LoadGen sends (2048 terabyte samples are ~1.4M pairs: unsplit, that would be 10 shapes, the
# largest two run eagerly once the limit is hit). Padding at most doubles a call's work; on CPU a
# one-sample query padded to 512 pairs instead of 2048 runs 3.4x faster (kaggle shape).
COMPILED_FLOOR = (256, 4096)
COMPILED_MAX_PAIRS_PER_CALL = 1 << 18  # accelerators, compiled models

# torch.ao's int8 Linear layers (dynamic and static) have kernels for the CPU only (fbgemm, x86)
CPU_ONLY_MLPS = ("int8", "int8-static")


def pairs_per_call(device: torch.device, compile: bool, given: int | None) -> int | None:
    """Pairs per forward pass: ``given``, else the CPU's cache-sized chunks, else (accelerators)
    whole calls, split only for a compiled model (its shapes stay within the recompile limit)."""
    if given is not None:
        return given
    if device.type == "cpu":
        return DEFAULT_MAX_PAIRS_PER_CALL
    return COMPILED_MAX_PAIRS_PER_CALL if compile else None


def check_precision_on_device(precision: Precision, device: torch.device) -> None:
    """Refuse, before any work, a precision PyTorch cannot run on ``device``."""
    if precision.mlp in CPU_ONLY_MLPS and device.type != "cpu":
        raise ConfigError(f"--mlp {precision.mlp}: PyTorch's int8 Linear layers run on the CPU only, not on "
                          f"{device}; use --mlp bf16 there, or --backend onnxruntime for int8 MLPs")


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


REFERENCE_HEADROOM = 1 << 30  # GPU bytes the FP32 reference needs beyond its weights (calls of 16k pairs)


def reference_device(model: torch.nn.Module, name: str) -> str:
    """Where an accuracy run's FP32 reference model runs: on device ``name``, unless that is a GPU
    without room for the whole model beside the benchmark's (its tables may be int8 or partly in
    host memory), then on the CPU."""
    device = torch_device(name)
    if device.type != "cuda":
        return name
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    free, _ = torch.cuda.mem_get_info(device)
    return name if weights + REFERENCE_HEADROOM <= free else "cpu"


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
        self.precision = precision or Precision()
        check_precision_on_device(self.precision, self.device)
        if row_remap is None and hasattr(model.embeddings, "row_remap"):
            row_remap = model.embeddings.row_remap.cpu().numpy()
        self.model = model.eval().to(self.device)
        self.max_index_range = max_index_range
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
        self.max_pairs_per_call = pairs_per_call(self.device, compile, max_pairs_per_call)  # None: not split

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
        sizes = compiled_sizes(max_pairs, self.max_pairs_per_call)
        limit = recompile_limit()
        if len(sizes) > limit:
            raise ConfigError(f"torch-compile: calls of up to {max_pairs} pairs in pieces of "
                              f"{self.max_pairs_per_call or 'any number of'} pairs take {len(sizes)} shapes "
                              f"({sizes[0]} to {sizes[-1]}), more than torch._dynamo compiles ({limit}); "
                              f"give a smaller --max-pairs-per-call")
        for size in sizes:
            if size not in self.compiled_shapes:
                rows = np.arange(size) % dense.shape[0]
                self(dense[rows], sparse[rows])


def recompile_limit() -> int:
    """How many shapes torch._dynamo compiles a function for before it runs it eagerly."""
    import torch._dynamo

    config = torch._dynamo.config
    return int(getattr(config, "recompile_limit", getattr(config, "cache_size_limit", 8)))


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
