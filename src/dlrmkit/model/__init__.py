"""DLRM as tensors in, logits out: embeddings, MLPs, interaction. No files, losses or devices."""

from dlrmkit.model.dlrm import DLRM, build_model

__all__ = ["DLRM", "build_model"]
