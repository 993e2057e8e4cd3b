"""``dlrmkit export``: a checkpoint as an ONNX model for ONNX Runtime (or any ONNX server)."""

from __future__ import annotations

from pathlib import Path

from dlrmkit.config import EMBEDDING_PRECISIONS, ONNX_MLP_PRECISIONS, Precision
from dlrmkit.errors import ConfigError


def add_export(sub) -> None:
    p = sub.add_parser("export", help="a checkpoint -> an ONNX model (FP32, or int8 tables and MLPs)")
    p.add_argument("--checkpoint", required=True,
                   help="dlrmkit or DLRM-reference FP32 checkpoint, or the reference's ONNX export (.onnx)")
    p.add_argument("--out", required=True, help="the .onnx file (a model over 2 GiB keeps its weights beside it)")
    p.add_argument("--embeddings", choices=EMBEDDING_PRECISIONS, default="fp32",
                   help="int8-rowwise / int8-table: codes, scales and biases gathered per row (PyTorch's bytes)")
    p.add_argument("--mlp", choices=ONNX_MLP_PRECISIONS, default="fp32", help="int8: ONNX Runtime's dynamic quantization")


def run_export(args) -> int:
    from dlrmkit.infer.onnx_export import export_in_precision
    from dlrmkit.infer.quantize import embedding_bytes, load_for_inference

    if Path(args.out).suffix.lower() != ".onnx":
        raise ConfigError(f"--out {args.out}: name the ONNX file *.onnx")
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise ConfigError(f"--out {args.out} would replace the checkpoint it exports; choose another file")
    model, cfg, precision, kind, _ = load_for_inference(args.checkpoint)
    if kind == "inference":
        raise ConfigError(f"{args.checkpoint} is an inference checkpoint ({precision}); export its FP32 checkpoint "
                          f"with --embeddings/--mlp")
    wanted = Precision(args.embeddings, args.mlp)
    path = export_in_precision(model, wanted, args.out, cfg.num_dense)
    data = Path(f"{path}.data")  # the weights of a model over 2 GiB
    size = path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    print(f"wrote {path} ({size / 2**20:,.1f} MiB{' with ' + data.name if data.is_file() else ''}): {wanted}; "
          f"tables {embedding_bytes(model) / 2**20:,.1f} MiB; inputs dense (P, {cfg.num_dense}) float32 and "
          f"indices (P, {len(cfg.table_sizes)}) int64, output logits (P,)")
    return 0
