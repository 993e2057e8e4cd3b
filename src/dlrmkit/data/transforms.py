"""Pure, vectorized per-row transforms of Criteo features, shared by every data path."""

from __future__ import annotations

import numpy as np


def log1p_dense(values: np.ndarray) -> np.ndarray:
    """log(1 + max(x, 0)) as float32, the DLRM reference's dense transform.

    Missing values must already be encoded as any negative number (or 0): both map to 0.
    """
    return np.log1p(np.maximum(values, 0).astype(np.float64)).astype(np.float32)
