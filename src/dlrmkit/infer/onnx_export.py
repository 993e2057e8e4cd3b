"""A DLRM as ONNX, for ONNX Runtime: FP32 or int8 tables, FP32 or int8 MLPs.

The graph takes ``dense`` (P, Nd) float32 and ``indices`` (P, F) int64 and returns ``logits``
(P,); the batch dimension is dynamic.

- Int8 tables (either scheme: both store codes, a scale and a bias per row) become three gathers
  over the same bytes as the packed rows: codes (R, D) uint8, scales and biases (R, 1) float32;
  a row is codes * scale + bias, exactly as the PyTorch lookup dequantizes it.
- Int8 MLPs are ONNX Runtime's dynamic quantization of the exported FP32 graph: the MatMul/Gemm
  weights stored as int8 (one scale per tensor), activations quantized per call, as PyTorch's
  ``int8`` MLPs do. bf16 and int8-static MLPs have no counterpart here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from dlrmkit.config import ONNX_MLP_PRECISIONS, Precision
from dlrmkit.errors import ConfigError
from dlrmkit.model import DLRM
from dlrmkit.model.embedding import EmbeddingTables
from dlrmkit.model.quantized import QuantizedEmbeddingTables, unpack


class GatheredInt8Tables(nn.Module):
    """Int8 tables as plain gathers ONNX can express (one-hot lookups): (B, F) -> (B, F, D)."""

    def __init__(self, tables: QuantizedEmbeddingTables):
        super().__init__()
        codes, scale, bias = unpack(tables.packed)
        self.table_sizes = tables.table_sizes
        self.register_buffer("codes", codes.contiguous())  # (R, D) uint8
        self.register_buffer("scale", scale[:, None].contiguous())  # (R, 1)
        self.register_buffer("bias", bias[:, None].contiguous())  # (R, 1)
        self.register_buffer("row_offsets", tables.row_offsets.clone())  # (F,)

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        rows = indices + self.row_offsets  # (B, F)
        return self.codes[rows].float() * self.scale[rows] + self.bias[rows]  # (B, F, D)


@contextlib.contextmanager
def _tables_as(model: DLRM, tables: nn.Module):
    """``model`` with other (equivalent) tables for the duration: the export traces those."""
    original = model.embeddings
    model.embeddings = tables
    try:
        yield model
    finally:
        model.embeddings = original


def _exportable_tables(model: DLRM) -> nn.Module:
    tables = model.embeddings
    if hasattr(tables, "row_remap"):
        raise ConfigError("ONNX export takes tables in file order, not rows placed by frequency (use a torch backend)")
    if isinstance(tables, QuantizedEmbeddingTables):
        return GatheredInt8Tables(tables)
    if type(tables) is EmbeddingTables:
        return tables
    raise ConfigError(f"ONNX export takes FP32 or int8 tables, not {type(tables).__name__} (use a torch backend)")


def _check_fp32_mlps(model: DLRM) -> None:
    for name in ("bottom", "top"):
        for module in getattr(model, name).modules():
            if not isinstance(module, (nn.Sequential, nn.Linear, nn.ReLU, nn.Sigmoid, nn.Identity)):
                raise ConfigError(f"ONNX export takes FP32 MLP weights (it quantizes them itself), and the {name} "
                                  f"MLP holds a {type(module).__name__}: give the FP32 checkpoint")


def _check_mlp(mlp: str) -> None:
    if mlp not in ONNX_MLP_PRECISIONS:
        raise ConfigError(f"ONNX Runtime runs MLPs in {' or '.join(ONNX_MLP_PRECISIONS)} here (its dynamic "
                          f"quantization), not {mlp}")


def export_in_precision(model: DLRM, precision: Precision, path: str | os.PathLike, num_dense: int) -> Path:
    """``model`` (FP32, or with int8 tables already) as ONNX to run in ``precision``: its tables
    quantized here (in place, as quantize_model does), its MLPs by the export."""
    from dlrmkit.infer.quantize import quantize_model

    _check_mlp(precision.mlp)
    quantize_model(model, Precision(precision.embeddings, "fp32"))
    return export_onnx(model, path, num_dense, precision.mlp)


def export_onnx(model: DLRM, path: str | os.PathLike, num_dense: int, mlp: str = "fp32") -> Path:
    """Write ``model`` (FP32 or int8 tables, FP32 MLPs) as ONNX with its MLPs in ``mlp``
    precision; returns the path."""
    _check_mlp(mlp)
    _check_fp32_mlps(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{path}.data").unlink(missing_ok=True)  # a large model's weights from an earlier export
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as scratch:
        traced = Path(scratch) / "fp32.onnx"  # with the weights of a large model in files beside it
        _trace(model, traced, num_dense)
        large = sum(f.stat().st_size for f in Path(scratch).iterdir()) > PROTOBUF_LIMIT
        if mlp == "int8":
            _quantize_mlps(traced, path, large)
        elif large:
            import onnx

            onnx.save_model(onnx.load(str(traced)), str(path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=f"{path.name}.data")
        else:
            os.replace(traced, path)
    return path


# A model file is one protobuf message, at most 2 GiB: larger models keep their weights in one
# external data file beside it, MODEL.onnx.data (torch's exporter writes a file per tensor; they
# are gathered).
PROTOBUF_LIMIT = 2**31 - 2**26


def _trace(model: DLRM, path: Path, num_dense: int) -> None:
    dense = torch.zeros(2, num_dense)
    indices = torch.zeros(2, len(model.embeddings.table_sizes), dtype=torch.int64)
    with _tables_as(model.eval(), _exportable_tables(model)), warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its successor
        torch.onnx.export(model, (dense, indices), str(path), input_names=["dense", "indices"],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={"dense": {0: "pairs"}, "indices": {0: "pairs"}, "logits": {0: "pairs"}})


def _quantize_mlps(source: Path, target: Path, external_data: bool) -> None:
    """ONNX Runtime's dynamic int8 quantization of the MatMul/Gemm weights (the gathers stay)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # it suggests its pre-processing pass on every call
    try:
        quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul", "Gemm"],
                         weight_type=QuantType.QInt8, use_external_data_format=external_data)
    finally:
        logging.disable(logging.NOTSET)
