"""Raw synthetic Criteo text for the preprocessing benchmarks: Kaggle layout, full Kaggle table
sizes, seed 0, written plain and gzipped."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from dlrmkit.config import SynthConfig
from dlrmkit.data import synth


def kaggle_text(rows: int, work: Path) -> tuple[Path, Path]:
    """(train.txt, train.txt.gz) of ``rows`` rows under ``work``/raw, made afresh."""
    shutil.rmtree(work, ignore_errors=True)
    raw = work / "raw"
    synth.write_raw(SynthConfig(rows=rows, seed=0), raw, progress=False)
    plain, gz = raw / "train.txt", raw / "train.txt.gz"
    with open(plain, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
    return plain, gz
