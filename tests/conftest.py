"""Shared fixtures: small synthetic datasets made once per session, and small helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dlrmkit.config import SynthConfig
from dlrmkit.data import synth

# A small Criteo-like dataset: Kaggle layout, tables scaled down 1000x (largest ~10k rows).
SMALL_SYNTH = SynthConfig(rows=20_000, seed=1, cardinality_scale=0.001, chunk_rows=8192, workers=1)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """Path of a 20k-row binary dataset. Read-only: copy it (``copy_dataset``) before editing."""
    out = tmp_path_factory.mktemp("small_data") / "data"
    synth.write_binary(SMALL_SYNTH, out, progress=False)
    return out


@pytest.fixture(scope="session")
def small_meta(small_data) -> dict:
    import json

    return json.loads((small_data / "metadata.json").read_text())


@pytest.fixture
def copy_dataset(tmp_path):
    """copy_dataset(src) -> a private copy of a dataset directory that a test may corrupt."""

    def _copy(src: Path, name: str = "data_copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
