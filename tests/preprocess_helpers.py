"""Shared by the preprocessing tests: running the local engine, reading its outputs, and
random Criteo text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from criteo_naive import random_line
from dlrmkit.config import PreprocessConfig
from dlrmkit.data.dataset import Dataset
from dlrmkit.data.preprocess import preprocess

SPLITS = ("train", "val", "test")


def run(out: Path, inputs, dataset="kaggle", **kw) -> dict:
    kw.setdefault("workers", 1)
    cfg = PreprocessConfig(dataset=dataset, inputs=tuple(str(p) for p in inputs), **kw)
    return preprocess(cfg, out, progress=False)


def arrays(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    ds = Dataset(out)
    return {s: (np.array(ds.split(s).label), np.array(ds.split(s).dense), np.array(ds.split(s).sparse))
            for s in SPLITS}


def dataset_files(out: Path) -> dict[str, bytes]:
    """Every output file's bytes but metadata.json and the stage."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "metadata.json" and ".stage" not in p.parts}


def comparable_meta(out: Path) -> dict:
    meta = json.loads((out / "metadata.json").read_text())
    meta.pop("preprocess")
    meta["source"].pop("inputs")
    return meta


def load_counts(out: Path, j: int, size: int) -> np.ndarray:
    """counts/C<j>.npz (``index``: the training rows seen, sorted; ``count``: their occurrences) as a
    dense array of ``size`` counts."""
    with np.load(out / "counts" / f"C{j}.npz") as z:
        index, count = z["index"], z["count"]
    assert np.all(np.diff(index) > 0) and np.all(count > 0)
    dense = np.zeros(size, dtype=np.int64)
    dense[index] = count
    return dense


def check_against(out: Path, exp: dict) -> None:
    got = arrays(out)
    for split in SPLITS:
        for name, a, b in zip(("label", "dense", "sparse"), got[split], exp["splits"][split]):
            assert a.dtype == b.dtype, (split, name)
            np.testing.assert_array_equal(a, b, err_msg=f"{split}/{name}")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["table_sizes"] == exp["table_sizes"]
    for j in range(26):
        np.testing.assert_array_equal(load_counts(out, j + 1, exp["table_sizes"][j]), exp["counts"][j],
                                      err_msg=f"counts C{j + 1}")
        vocab_file = out / "vocab" / f"C{j + 1}.npy"
        if exp["vocab_values"] is None:
            assert not vocab_file.exists()
        else:
            np.testing.assert_array_equal(np.load(vocab_file).astype(np.int64), exp["vocab_values"][j],
                                          err_msg=f"vocab C{j + 1}")


def random_text(n: int, seed: int, label_p: float | None = None) -> str:
    rnd = random.Random(seed)
    return "".join(random_line(rnd, None if label_p is None else int(rnd.random() < label_p)) for _ in range(n))


def repetitive_text(n: int, seed: int) -> str:
    """Valid lines whose categorical values repeat (small alphabets), so vocabularies matter."""
    rnd = random.Random(seed)
    alphabet = ["", "1", "2", "a", "B", "ff", "100", "DEADBEEF", "7fffffff", "ffffffff"]
    lines = []
    for _ in range(n):
        dense = [rnd.choice(["", "0", "1", "-3", "17", "65535", str(rnd.randint(0, 10**6))]) for _ in range(13)]
        sparse = [rnd.choice(alphabet[: 2 + j % 8]) for j in range(26)]
        lines.append("\t".join([str(rnd.randint(0, 1))] + dense + sparse) + "\n")
    return "".join(lines)
