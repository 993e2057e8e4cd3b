"""Post-training quantization of a trained DLRM for inference, and its checkpoint format.

``quantize_model`` swaps the tables for int8 ones (row-wise or per-table scales) and, for int8
MLPs, the Linear layers for dynamically quantized ones; bf16 MLPs are a run-time choice (autocast,
see TorchPredictor), so their weights stay FP32 in the file. The inference checkpoint records
its precision and the model config; MLP int8 weights are re-derived from FP32 at load (dynamic
quantization is deterministic), so the file holds only the int8 tables and FP32 MLP weights.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlrmkit.checkpoint import write_atomic
from dlrmkit.config import ModelConfig, Precision
from dlrmkit.errors import CheckpointError, ConfigError
from dlrmkit.model import DLRM, build_model
from dlrmkit.model.quantized import QuantizedEmbeddingTables, quantize

INFERENCE_FORMAT = "dlrmkit-inference"
INFERENCE_VERSION = 1


# Tables of at least this many rows show a progress line while they are quantized (MLPerf's
# terabyte model, about 100 GB of tables, takes minutes on a few cores).
PROGRESS_ROWS = 1 << 22


def quantize_embeddings(model: DLRM, scheme: str) -> None:
    """Replace the model's FP32 tables by packed int8 ones (in place; a row placement carries over)."""
    from dlrmkit.infer.placement import inverse, mark_placed
    from dlrmkit.progress import Progress

    tables = model.embeddings
    remap = getattr(tables, "row_remap", None)  # old fused row -> new, when rows are placed
    rows = tables.weight.shape[0]
    bar = Progress(rows, "rows", f"quantize tables to int8 ({scheme})", enabled=rows >= PROGRESS_ROWS)
    # placed rows interleave the tables: quantize in table order, then place the packed rows
    packed = quantize(tables.weight, tables.table_sizes, scheme, rows=None if remap is None else remap.long(),
                      on_block=bar.update)
    bar.close()
    if remap is not None:
        packed = packed[torch.from_numpy(inverse(remap.numpy()).astype(np.int64))].contiguous()
    model.embeddings = QuantizedEmbeddingTables(packed, tables.table_sizes, scheme)
    if remap is not None:
        mark_placed(model, remap)


def quantize_mlps_dynamic(model: DLRM) -> None:
    """Int8 weights, activations quantized per batch on the fly (in place)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        model.bottom = quantize_dynamic(model.bottom, {nn.Linear}, dtype=torch.qint8)
        model.top = quantize_dynamic(model.top, {nn.Linear}, dtype=torch.qint8)


CALIBRATION_ROWS = 128_000  # MLPerf's DLRM calibration set: 128,000 rows


def _static_shells(model: DLRM):
    """The MLPs with int8 observers in place (FX graph mode, x86 backend)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    mapping = get_default_qconfig_mapping("x86")
    bottom_in = model.bottom[0].in_features
    top_in = model.top[0].in_features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        model.bottom = prepare_fx(model.bottom, mapping, example_inputs=(torch.zeros(2, bottom_in),))
        model.top = prepare_fx(model.top, mapping, example_inputs=(torch.zeros(2, top_in),))


def _convert_static(model: DLRM) -> None:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.bottom = convert_fx(model.bottom)
        model.top = convert_fx(model.top)


def quantize_mlps_static(model: DLRM, calibration) -> None:
    """Int8 MLPs with activation scales fixed by the ranges seen on ``calibration`` (an iterable
    of (dense (P, Nd) float32 tensor, indices (P, F) tensor) batches run through the whole model)."""
    _static_shells(model)
    seen = 0
    with torch.inference_mode():
        for dense, indices in calibration:
            model(dense, indices)
            seen += dense.shape[0]
    if seen == 0:
        raise ConfigError("static int8 MLPs need calibration rows; none were given")
    _convert_static(model)


def is_static_int8(model: DLRM) -> bool:
    return isinstance(model.top, torch.fx.GraphModule)


def quantize_model(model: DLRM, precision: Precision, calibration=None) -> DLRM:
    """The model in ``precision`` for inference (modifies and returns ``model``, in eval mode).
    ``int8-static`` MLPs need ``calibration`` batches unless the model already has them."""
    model.eval()
    if precision.embeddings != "fp32" and not isinstance(model.embeddings, QuantizedEmbeddingTables) \
            and hasattr(model.embeddings, "weight"):
        quantize_embeddings(model, precision.embeddings.removeprefix("int8-"))
    if precision.mlp == "int8" and isinstance(model.top, nn.Sequential):
        quantize_mlps_dynamic(model)
    if precision.mlp == "int8-static" and not is_static_int8(model):
        if calibration is None:
            raise ConfigError("int8-static MLPs need calibration data (--data: rows of its val split)")
        quantize_mlps_static(model, calibration)
    return model


def calibration_batches(split, rows: int = CALIBRATION_ROWS, batch: int = 8192, max_index_range: int | None = None,
                        prepare=None):
    """The first ``rows`` pairs of ``split`` (MLPerf calibrates on a fixed slice) as model batches."""
    from dlrmkit.data.loader import cap_indices

    end = min(rows, len(split))
    for lo in range(0, end, batch):
        hi = min(lo + batch, end)
        sparse = np.array(split.sparse[lo:hi])
        sparse = cap_indices(sparse, max_index_range) if prepare is None else prepare(sparse)
        yield torch.from_numpy(np.array(split.dense[lo:hi], dtype=np.float32)), torch.from_numpy(sparse)


def embedding_bytes(model: DLRM) -> int:
    tables = model.embeddings
    if isinstance(tables, QuantizedEmbeddingTables):
        return tables.memory_bytes()
    if hasattr(tables, "hot_rows"):  # TieredEmbeddingTables: both tiers
        return sum(tables.memory_bytes().values())
    return tables.weight.numel() * tables.weight.element_size()


def save_inference_checkpoint(path: str | os.PathLike, model: DLRM, cfg: ModelConfig, precision: Precision,
                              source: str | None = None) -> Path:
    """Write the quantized tables and the MLP weights: FP32 (dynamic int8 is re-derived at load),
    or int8 with calibrated scales for ``int8-static``; ``model`` must not have dynamic int8 MLPs."""
    state = model.state_dict()  # keeps _metadata: quantized modules read their format version from it
    payload = {"format": INFERENCE_FORMAT, "version": INFERENCE_VERSION, "model_config": cfg.to_dict(),
               "precision": precision.to_dict(), "state_dict": state, "source_checkpoint": source}
    return write_atomic(path, payload)


def is_inference_payload(payload) -> bool:
    return isinstance(payload, dict) and payload.get("format") == INFERENCE_FORMAT


def model_from_inference_payload(payload: dict, source: str) -> tuple[DLRM, ModelConfig, Precision]:
    if payload.get("version") != INFERENCE_VERSION:
        raise CheckpointError(f"{source}: inference checkpoint version {payload.get('version')}, "
                              f"this dlrmkit reads version {INFERENCE_VERSION}")
    try:
        cfg = ModelConfig.from_dict(payload["model_config"])
        precision = Precision(**payload["precision"])
        state = payload["state_dict"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: incomplete inference checkpoint ({e})") from None
    if precision.embeddings != "fp32":
        # the packed int8 tables replace the FP32 ones: build those as one-row placeholders
        # rather than allocating and initializing R x D floats only to drop them
        shell = dataclasses.replace(cfg, table_sizes=(1,) * len(cfg.table_sizes), max_index_range=None)
        model = build_model(shell, sparse_grad=False)
    else:
        model = build_model(cfg, sparse_grad=False, init_tables=False)  # load_state_dict fills them
    # the payload may be memory-mapped from the file: tensors the model keeps as they are get
    # their own memory (a benchmark's tables must not page in from disk)
    for key in ("embeddings.packed", "embeddings.row_remap"):  # in place: the dict keeps its _metadata
        if key in state:
            state[key] = state[key].clone()
    if "embeddings.row_remap" in state:  # rows placed by frequency (dlrmkit.infer.placement)
        from dlrmkit.infer.placement import mark_placed

        mark_placed(model, state["embeddings.row_remap"])
    if precision.embeddings != "fp32":
        packed = state.get("embeddings.packed")
        if packed is None:
            raise CheckpointError(f"{source}: no embeddings.packed tensor for {precision.embeddings} tables")
        try:
            placed = getattr(model.embeddings, "row_remap", None)
            model.embeddings = QuantizedEmbeddingTables(packed, cfg.effective_table_sizes,
                                                        precision.embeddings.removeprefix("int8-"))
            if placed is not None:
                from dlrmkit.infer.placement import mark_placed

                mark_placed(model, placed)
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from None
    if precision.mlp == "int8-static":  # int8 MLPs whose scales the state holds
        _static_shells(model)
        _convert_static(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: tensors missing {missing[:5]} or unexpected {unexpected[:5]}")
    return quantize_model(model, precision), cfg, precision


def load_for_inference(path: str | os.PathLike) -> tuple[DLRM, ModelConfig, Precision, str, str | None]:
    """(model, config, precision, kind, FP32 source checkpoint) from any checkpoint dlrmkit reads:
    its own (kind "dlrmkit"), the DLRM reference's ("reference", or "reference-onnx" for its ONNX
    export), or an inference one ("inference")."""
    from dlrmkit.reference_checkpoint import load_reference_payload, model_from_payload

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    payload = load_reference_payload(path)
    if is_inference_payload(payload):
        model, cfg, precision = model_from_inference_payload(payload, str(path))
        return model, cfg, precision, "inference", payload.get("source_checkpoint")
    model, cfg, kind = model_from_payload(payload, path)
    return model.eval(), cfg, Precision(), kind, str(path)
