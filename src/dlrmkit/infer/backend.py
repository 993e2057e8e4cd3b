"""Inference backends: numpy pairs in, click probabilities out.

The benchmark (LoadGen's SUT) calls a backend from several threads; each call is independent.
Shapes: P pairs, Nd dense features, F sparse features.
"""

from __future__ import annotations

import numpy as np
import torch

from dlrmkit.data.loader import cap_indices
from dlrmkit.model import DLRM


class TorchPredictor:
    """A DLRM in eager PyTorch, FP32."""

    name = "pytorch-fp32"

    def __init__(self, model: DLRM, max_index_range: int | None = None, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.max_index_range = max_index_range

    @torch.inference_mode()
    def __call__(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """dense (P, Nd) float32 (log1p already applied), sparse (P, F) int -> probabilities (P,)."""
        sparse = cap_indices(sparse, self.max_index_range)
        dense, sparse = (a if a.flags.writeable else a.copy() for a in (dense, sparse))  # torch needs writable
        logits = self.model(torch.from_numpy(dense).to(self.device), torch.from_numpy(sparse).to(self.device))
        return torch.sigmoid(logits).float().cpu().numpy()  # (P,)
