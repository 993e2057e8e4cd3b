"""Checkpoints saved by the DLRM reference (``dlrm_s_pytorch.py --save-model``), read directly.

That format (also MLPerf's ``tb00_40M.pt`` and ``tb0875_10M.pt``) is a pickled dict whose
``state_dict`` holds ``emb_l.<i>.weight`` (one table each), ``bot_l.<j>.weight/bias`` and
``top_l.<j>.weight/bias`` (Linear layers at even j, activations between), plus numpy scalars for
its bookkeeping. The architecture is read from the tensor shapes:

- tables and embedding dim from ``emb_l``; bottom widths from ``bot_l``; top widths from ``top_l``;
- the interaction from the top MLP's input width: dim + F(F+1)/2 is dot, dim + F(F+1)/2 + F + 1 is
  dot with self-interaction, bottom output + F * dim is concatenation (F tables, F + 1 vectors).

It is loaded with ``weights_only=True`` plus the numpy scalar types it needs, never with
arbitrary unpickling. The reference's ONNX export (``--save-onnx``) holds the same tensors under
the same names and is read the same way (``dlrmkit.reference_onnx``).
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from dlrmkit.checkpoint import FORMAT_NAME, load_model_state, model_from_checkpoint, validate_checkpoint
from dlrmkit.config import ModelConfig
from dlrmkit.errors import CheckpointError, ConfigError
from dlrmkit.model import DLRM, build_model

_SAFE_NUMPY = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
try:  # numpy >= 2 names the scalar reconstructor under _core
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore
# Checkpoints pickled under numpy 1.x name the reconstructor numpy.core.multiarray.scalar.
_SAFE_NUMPY += [_np_scalar, (_np_scalar, "numpy.core.multiarray.scalar")]


def is_reference_state(state: dict) -> bool:
    return any(k.startswith("emb_l.") for k in state) and any(k.startswith("top_l.") for k in state)


def _layer_widths(state: dict, prefix: str) -> list[tuple[int, int]]:
    """(in, out) of each Linear in ``prefix``, by layer number."""
    numbers = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(rf"{prefix}\.(\d+)\.weight", k)))
    return [tuple(state[f"{prefix}.{j}.weight"].shape[::-1]) for j in numbers]


def infer_config(state: dict, source: str = "checkpoint") -> ModelConfig:
    """The ModelConfig the reference tensors describe."""
    tables = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"emb_l\.(\d+)\.weight", k)))
    if tables != list(range(len(tables))) or not tables:
        raise CheckpointError(f"{source}: embedding tables emb_l.<i> are not numbered 0..{len(tables) - 1}")
    shapes = [tuple(state[f"emb_l.{i}.weight"].shape) for i in tables]
    dims = {d for _, d in shapes}
    if len(dims) != 1:
        raise CheckpointError(f"{source}: tables of different widths {sorted(dims)} are not supported")
    dim = dims.pop()
    bottom, top = _layer_widths(state, "bot_l"), _layer_widths(state, "top_l")
    if not bottom or not top:
        raise CheckpointError(f"{source}: no bot_l / top_l layers")
    bottom_widths = (bottom[0][0],) + tuple(o for _, o in bottom)
    top_in = top[0][0]
    f = len(tables)
    pairs = f * (f + 1) // 2  # pairs among F + 1 vectors, without self
    if top_in == bottom_widths[-1] + pairs:
        interaction, itself = "dot", False
    elif top_in == bottom_widths[-1] + pairs + f + 1:
        interaction, itself = "dot", True
    elif top_in == bottom_widths[-1] + f * dim:
        interaction, itself = "cat", False
    else:
        raise CheckpointError(f"{source}: top MLP input width {top_in} fits no interaction of {f} tables of dim {dim}")
    try:
        return ModelConfig(tuple(n for n, _ in shapes), dim, bottom_widths, tuple(o for _, o in top),
                           interaction, itself)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def fill_tables(state: dict, model: DLRM) -> None:
    """Copy the reference's tables into the model's fused weight, one table at a time (never a
    second copy of all tables in memory)."""
    with torch.no_grad():
        for i in range(len(model.embeddings.table_sizes)):
            model.embeddings.table(i).copy_(state[f"emb_l.{i}.weight"])


def convert_state(state: dict, model: DLRM) -> dict:
    """Reference tensor names -> dlrmkit's: the MLP keys renamed, and the model's own fused table
    weight (which ``fill_tables`` filled)."""
    out = {"embeddings.weight": model.embeddings.weight}
    for key, value in state.items():
        if key.startswith("bot_l."):
            out["bottom." + key[len("bot_l."):]] = value.float()
        elif key.startswith("top_l."):
            out["top." + key[len("top_l."):]] = value.float()
    return out


def load_reference_payload(path: str | Path) -> dict:
    """What a checkpoint file holds; an ONNX model (``.onnx``) gives its reference weights."""
    from dlrmkit.reference_onnx import is_onnx_path, onnx_reference_state

    if is_onnx_path(path):
        return {"state_dict": onnx_reference_state(path), "source_format": "onnx"}
    try:
        with torch.serialization.safe_globals(_SAFE_NUMPY), warnings.catch_warnings():
            # torch's own unpickling of quantized (int8-static) weights goes through TypedStorage
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            # memory-mapped: the tensors are read as they are copied into the model, so a model
            # takes its own size in memory to load, not twice (files in torch's zip format;
            # older files are read whole)
            mmap = zipfile.is_zipfile(path)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def model_from_reference(payload: dict, source: str = "checkpoint") -> tuple[DLRM, ModelConfig]:
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not is_reference_state(state):
        raise CheckpointError(f"{source}: no emb_l/bot_l/top_l tensors: not a DLRM reference checkpoint")
    cfg = infer_config(state, source)
    model = build_model(cfg, init_tables=False)  # the shapes come from these tensors: every row is filled
    fill_tables(state, model)
    load_model_state(model, convert_state(state, model), source)
    return model, cfg


def load_any_model(path: str | Path) -> tuple[DLRM, ModelConfig, str]:
    """A model from a dlrmkit checkpoint or a DLRM reference one, saved (``--save-model``) or
    exported (``--save-onnx``): (model, config, "dlrmkit" | "reference" | "reference-onnx")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return model_from_payload(load_reference_payload(path), path)


def model_from_payload(payload, path: str | Path) -> tuple[DLRM, ModelConfig, str]:
    """What load_any_model builds, from a payload already read from ``path``."""
    if isinstance(payload, dict) and payload.get("format") == FORMAT_NAME:
        model, cfg = model_from_checkpoint(validate_checkpoint(payload, path), str(path))
        return model, cfg, "dlrmkit"
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: holds a {type(payload).__name__}, not a checkpoint dict")
    model, cfg = model_from_reference(payload, str(path))
    return model, cfg, "reference-onnx" if payload.get("source_format") == "onnx" else "reference"
