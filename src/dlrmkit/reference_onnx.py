"""ONNX models exported by the DLRM reference (``dlrm_s_pytorch.py --save-onnx``; MLPerf's
``tb00_40M.onnx`` weights), read as checkpoints.

The exporter keeps the module's parameter names as the graph's initializers, ``emb_l.<i>.weight``,
``bot_l.<j>.weight/bias`` and ``top_l.<j>.weight/bias``, so the weights are those of a
``--save-model`` checkpoint and the architecture is read from their shapes the same way
(``dlrmkit.reference_checkpoint``). Weights stored outside the file (ONNX external data, as models
over 2 GB must be) are memory-mapped from their files rather than read into the protobuf.

The graph's inputs are ``dense_x`` (B, Nd) float32, ``offsets`` (F, B) or one ``offsets_<k>`` (B,)
per table, and ``indices`` (F, B) or one ``indices_<k>`` per table, int64; its output ``pred``
(B, 1) holds probabilities (the sigmoid is inside). ``dlrmkit.infer.onnx_backend`` runs such a
file as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dlrmkit.errors import CheckpointError, ConfigError

REFERENCE_PREFIXES = ("emb_l.", "bot_l.", "top_l.")


def is_onnx_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError("reading an ONNX model needs the onnx package (pip install 'dlrmkit[onnx]')") from None
    return onnx


def _external(tensor, folder: Path, source: Path) -> np.ndarray:
    """An initializer stored in an external data file, memory-mapped."""
    from onnx.helper import tensor_dtype_to_np_dtype

    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = np.dtype(tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(tensor.dims)
    count = int(np.prod(shape, dtype=np.int64))
    location = folder / info.get("location", "")
    offset, length = int(info.get("offset", 0)), info.get("length")
    if length is not None and int(length) != count * dtype.itemsize:
        raise CheckpointError(f"{source}: {tensor.name} is {shape} {dtype} but its external data is {length} bytes")
    if not location.is_file() or location.stat().st_size < offset + count * dtype.itemsize:
        raise CheckpointError(f"{source}: {tensor.name}'s external data {location} is missing or cut short")
    return np.memmap(location, dtype=dtype, mode="c", offset=offset, shape=shape)  # copy-on-write: torch wants it writable


def onnx_reference_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The reference's parameters (``emb_l.*``, ``bot_l.*``, ``top_l.*``) held by an ONNX file."""
    onnx = _onnx()
    from onnx import numpy_helper

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as an ONNX model (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    state = {}
    for tensor in model.graph.initializer:
        if not tensor.name.startswith(REFERENCE_PREFIXES):
            continue
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            array = _external(tensor, path.parent, path)
        else:  # a view of the protobuf's bytes (a model under 2 GB)
            array = numpy_helper.to_array(tensor).copy()
        state[tensor.name] = torch.from_numpy(array)  # a memory map stays one: rows are read as they are copied
    if not state:
        inputs = [i.name for i in model.graph.input]
        raise CheckpointError(f"{path}: an ONNX model without the DLRM reference's emb_l/bot_l/top_l weights "
                              f"(inputs {inputs}); dlrmkit reads the exports of dlrm_s_pytorch.py --save-onnx")
    return state
