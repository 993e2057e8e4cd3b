"""Synthetic Criteo-like data with a planted teacher, so the best achievable AUC is known.

Each row: a 0/1 label, 13 non-negative heavy-tailed integer dense features (some missing) and 26
categorical features (some missing). A categorical value is drawn by its popularity rank r from
a truncated Zipf law on [1, K) (a few hot values, a long tail); r = 0 stands for "missing". In
the binary format the row index is the rank itself (hot rows first, missing at row 0); in the
raw format the value is written as 8 hex digits of a bijective 32-bit mix of r (0 stays 0, so
no present value ever reads as the reference's "empty -> 0").

The teacher's logit for a row is

    bias + sum_j a_j z_j + c * tanh(sum_j b_j z_j)            (dense, z_j standardized log1p)
         + sum_f w_f[r_f]                                     (categorical main effects)
         + sum_{(f, g) in P} <v_f[r_f], v_g[r_g]>             (pairwise interactions, rank 4)

where w_f and v_f are non-zero only on the ``HOT_ROWS`` most popular values of each column (the
long tail carries no signal, as rare values in real logs mostly do), and the bias is solved so
the mean click probability is the configured click rate. The label is Bernoulli(sigmoid(logit));
the teacher's own AUC on the drawn labels is the oracle AUC, written to the metadata.

Rows are generated in chunks of ``chunk_rows``, chunk k from the RNG stream (seed, 1, k): the
output depends on the seed and row count only, not on the number of workers or the format.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrmkit.config import NUM_DENSE, NUM_SPARSE, SynthConfig
from dlrmkit.data.dataset import DatasetWriter, write_json_atomic
from dlrmkit.data.splits import KAGGLE_DAYS, day_sizes, split_ranges
from dlrmkit.data.transforms import log1p_dense
from dlrmkit.progress import Progress
from dlrmkit.metrics import roc_auc

HOT_ROWS = 100
LATENT_DIM = 4
NUM_PAIRS = 24
PILOT_ROWS = 200_000

# Per dense column: fraction missing (close to the Kaggle set's), and the log-normal location and
# spread of (value + 1).
DENSE_MISSING = np.array([0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0005, 0.04, 0.45, 0.04, 0.77, 0.22])
DENSE_MU = np.array([0.8, 3.0, 2.2, 1.9, 8.0, 4.2, 1.5, 2.6, 3.7, 0.4, 1.1, 0.3, 2.0])
DENSE_SIGMA = np.array([1.1, 1.9, 1.3, 0.9, 2.0, 1.6, 1.2, 0.8, 1.2, 0.6, 0.8, 0.9, 1.2])
# Per categorical column: fraction missing (close to the Kaggle set's).
SPARSE_MISSING = np.array([0.0, 0.0, 0.034, 0.034, 0.0, 0.121, 0.0, 0.0, 0.0, 0.0, 0.0, 0.034, 0.0,
                           0.0, 0.0, 0.034, 0.0, 0.0, 0.44, 0.44, 0.034, 0.76, 0.0, 0.034, 0.44, 0.44])

# Signal strengths of the teacher's terms (chosen so the oracle AUC sits near real Criteo's ~0.8).
DENSE_WEIGHT = 0.11
DENSE_NONLINEAR = 0.27
MAIN_EFFECT = 0.24
PAIR_EFFECT = 0.3

DENSE_MAX = 2**31 - 1  # the reference parses dense values as int32


@dataclass(frozen=True)
class Teacher:
    """The planted labelling function; every array is drawn from the seed."""

    dense_a: np.ndarray  # (13,)
    dense_b: np.ndarray  # (13,)
    main: list[np.ndarray]  # 26 x (H_f + 1,), last entry 0 for every rank >= H_f
    latent: list[np.ndarray]  # 26 x (H_f + 1, LATENT_DIM), last row 0
    pairs: np.ndarray  # (NUM_PAIRS, 2) column pairs
    bias: float

    def logit(self, dense_raw: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """(B, 13) int64 (-1 missing), (B, 26) int64 ranks -> (B,) float64 logit."""
        z = (np.log1p(np.maximum(dense_raw, 0)) - DENSE_MU) / DENSE_SIGMA
        out = self.bias + z @ self.dense_a + DENSE_NONLINEAR * np.tanh(z @ self.dense_b)
        rows = [np.minimum(ranks[:, f], self.main[f].shape[0] - 1) for f in range(ranks.shape[1])]
        for f in range(ranks.shape[1]):
            out += self.main[f][rows[f]]
        for f, g in self.pairs:
            out += np.einsum("bk,bk->b", self.latent[f][rows[f]], self.latent[g][rows[g]])
        return out


def _draw_teacher(cfg: SynthConfig) -> Teacher:
    rng = np.random.default_rng([cfg.seed, 0])
    sizes = cfg.table_sizes
    main, latent = [], []
    for k in sizes:
        h = min(k, HOT_ROWS)
        w = np.zeros(h + 1)
        w[:h] = rng.normal(0.0, MAIN_EFFECT, h)
        v = np.zeros((h + 1, LATENT_DIM))
        v[:h] = rng.normal(0.0, np.sqrt(PAIR_EFFECT / np.sqrt(LATENT_DIM)), (h, LATENT_DIM))
        main.append(w)
        latent.append(v)
    all_pairs = np.array([(f, g) for f in range(NUM_SPARSE) for g in range(f + 1, NUM_SPARSE)])
    pairs = all_pairs[rng.choice(len(all_pairs), NUM_PAIRS, replace=False)]
    dense_a = rng.normal(0.0, DENSE_WEIGHT, NUM_DENSE)
    dense_b = rng.normal(0.0, 1.0 / np.sqrt(NUM_DENSE), NUM_DENSE)
    teacher = Teacher(dense_a, dense_b, main, latent, pairs, 0.0)
    # Solve the bias so the mean click probability on a pilot sample is the click rate.
    dense, ranks = _draw_features(cfg, np.random.default_rng([cfg.seed, 2]), min(PILOT_ROWS, max(cfg.rows, 10_000)))
    base = teacher.logit(dense, ranks)
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(base + mid)))) < cfg.click_rate:
            lo = mid
        else:
            hi = mid
    return Teacher(dense_a, dense_b, main, latent, pairs, (lo + hi) / 2)


def _draw_features(cfg: SynthConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 13) int64 dense values (-1 = missing) and (n, 26) int64 ranks (0 = missing)."""
    dense = np.floor(np.exp(rng.normal(DENSE_MU, DENSE_SIGMA, (n, NUM_DENSE)))) - 1
    dense = np.minimum(dense, DENSE_MAX).astype(np.int64)
    dense[rng.random((n, NUM_DENSE)) < DENSE_MISSING] = -1
    s = cfg.zipf_exponent
    ranks = np.empty((n, NUM_SPARSE), dtype=np.int64)
    for f, k in enumerate(cfg.table_sizes):
        # Inverse transform of the continuous power law x^-s on [1, k): floor gives a rank in [1, k).
        u = rng.random(n)
        x = (1.0 + u * (float(k) ** (1.0 - s) - 1.0)) ** (1.0 / (1.0 - s))
        col = np.minimum(x.astype(np.int64), k - 1)
        col[rng.random(n) < SPARSE_MISSING[f]] = 0
        ranks[:, f] = col
    return dense, ranks


def generate_chunk(cfg: SynthConfig, teacher: Teacher, chunk: int) -> tuple[np.ndarray, ...]:
    """Rows [chunk * chunk_rows, ...): labels (uint8), dense raw, ranks, teacher probability."""
    start = chunk * cfg.chunk_rows
    n = min(cfg.chunk_rows, cfg.rows - start)
    rng = np.random.default_rng([cfg.seed, 1, chunk])
    dense, ranks = _draw_features(cfg, rng, n)
    prob = 1.0 / (1.0 + np.exp(-teacher.logit(dense, ranks)))
    label = (rng.random(n) < prob).astype(np.uint8)
    return label, dense, ranks, prob.astype(np.float32)


def hex_values(ranks: np.ndarray, column: int) -> np.ndarray:
    """A bijective 32-bit mix of each rank (0 -> 0), distinct per column: the raw categorical value."""
    x = ranks.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    x *= np.uint32((0x9E3779B1 + 2 * column) | 1)
    return x


FORMAT_BLOCK_ROWS = 2048  # a block's character matrix (~0.8 MB) stays in cache


def format_raw_lines(label: np.ndarray, dense: np.ndarray, ranks: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Criteo text lines for rows (label, raw dense with -1 missing, ranks with 0 missing).

    Returns the bytes and each line's length.
    """
    blocks = [_format_block(label[i:i + FORMAT_BLOCK_ROWS], dense[i:i + FORMAT_BLOCK_ROWS], ranks[i:i + FORMAT_BLOCK_ROWS])
              for i in range(0, label.shape[0], FORMAT_BLOCK_ROWS)]
    if not blocks:
        return b"", np.zeros(0, dtype=np.int64)
    return b"".join(b for b, _ in blocks), np.concatenate([n for _, n in blocks])


def _format_block(label: np.ndarray, dense: np.ndarray, ranks: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Criteo text lines for a block of rows, vectorized; returns the bytes and each line's length.

    Every row is laid out at fixed width (label, 13 fields of 10 decimal slots, 26 fields of 8 hex
    slots, each followed by a separator), with a mask of the slots that hold characters; the
    masked matrix read in row order is exactly the concatenated lines.
    """
    n = label.shape[0]
    dec_w, hex_w = 10, 8
    dec_end = 2 + NUM_DENSE * (dec_w + 1)
    chars = np.full((n, dec_end + NUM_SPARSE * (hex_w + 1)), ord("\t"), dtype=np.uint8)
    keep = np.ones(chars.shape, dtype=bool)
    chars[:, 0] = label + np.uint8(ord("0"))
    dec = chars[:, 2:dec_end].reshape(n, NUM_DENSE, dec_w + 1)  # views into chars / keep
    dec_keep = keep[:, 2:dec_end].reshape(n, NUM_DENSE, dec_w + 1)
    # Decimal: right-aligned digits, peeled off with scalar divisions; leading zeros masked.
    value = np.maximum(dense, 0).astype(np.uint32)
    for slot in range(dec_w - 1, -1, -1):
        dec[:, :, slot] = (value % np.uint32(10)).astype(np.uint8) + np.uint8(ord("0"))
        if slot < dec_w - 1:  # the last slot always holds a digit (a present 0 prints "0")
            dec_keep[:, :, slot] = value > 0
        value //= np.uint32(10)
    dec_keep[:, :, :dec_w] &= (dense >= 0)[:, :, None]
    hexc = chars[:, dec_end:].reshape(n, NUM_SPARSE, hex_w + 1)
    hex_keep = keep[:, dec_end:].reshape(n, NUM_SPARSE, hex_w + 1)
    for f in range(NUM_SPARSE):
        h = hex_values(ranks[:, f], f)
        for slot in range(hex_w):
            nibble = ((h >> np.uint32(4 * (hex_w - 1 - slot))) & np.uint32(0xF)).astype(np.uint8)
            hexc[:, f, slot] = nibble + np.uint8(ord("0")) + (nibble > 9) * np.uint8(ord("a") - ord("9") - 1)
        hex_keep[:, f, :hex_w] = (ranks[:, f] > 0)[:, None]
    chars[:, -1] = ord("\n")
    return chars[keep].tobytes(), keep.sum(axis=1)


# --- the parallel driver ---------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(cfg: SynthConfig, teacher: Teacher, out: str, fmt: str, ranges: dict) -> None:
    _WORKER.update(cfg=cfg, teacher=teacher, out=out, fmt=fmt, ranges=ranges)


def _binary_chunk(chunk: int) -> int:
    cfg, teacher, out, ranges = _WORKER["cfg"], _WORKER["teacher"], Path(_WORKER["out"]), _WORKER["ranges"]
    label, dense, ranks, prob = generate_chunk(cfg, teacher, chunk)
    start = chunk * cfg.chunk_rows
    stop = start + label.shape[0]
    probs = np.memmap(out / ".teacher_prob.f32", dtype=np.float32, mode="r+", shape=(cfg.rows,))
    probs[start:stop] = prob
    probs.flush()
    for split, (lo, hi) in ranges.items():
        a, b = max(lo, start), min(hi, stop)
        if a >= b:
            continue
        rows = hi - lo
        for name, block, dtype, shape in (
            ("label", label[a - start:b - start], np.uint8, (rows,)),
            ("dense", log1p_dense(dense[a - start:b - start]), np.float32, (rows, NUM_DENSE)),
            ("sparse", ranks[a - start:b - start].astype(np.int32), np.int32, (rows, NUM_SPARSE)),
        ):
            m = np.memmap(out / split / f"{name}.bin", dtype=dtype, mode="r+", shape=shape)
            m[a - lo:b - lo] = block
            m.flush()
    return stop - start


def _raw_chunk(chunk: int) -> tuple[int, bytes, np.ndarray, np.ndarray, np.ndarray]:
    cfg, teacher = _WORKER["cfg"], _WORKER["teacher"]
    label, dense, ranks, prob = generate_chunk(cfg, teacher, chunk)
    data, lengths = format_raw_lines(label, dense, ranks)
    return chunk, data, lengths, label, prob


def _oracle(label: np.ndarray, prob: np.ndarray, ranges: dict[str, tuple[int, int]]) -> dict:
    out = {"all": roc_auc(label, prob)}
    for split, (lo, hi) in ranges.items():
        if hi > lo:
            out[split] = roc_auc(label[lo:hi], prob[lo:hi])
    return out


def _layout_days(cfg: SynthConfig) -> list[int]:
    return day_sizes(cfg.rows, KAGGLE_DAYS if cfg.layout == "kaggle" else cfg.days)


def _source(cfg: SynthConfig, teacher: Teacher, fmt: str) -> dict:
    return {
        "kind": "synthetic",
        "generator": "dlrmkit.data.synth",
        "format": fmt,
        "config": {**{k: v for k, v in cfg.__dict__.items() if k not in ("workers", "cardinalities")},
                   "cardinalities": list(cfg.cardinalities)},
        "teacher": {"hot_rows": HOT_ROWS, "latent_dim": LATENT_DIM, "pairs": teacher.pairs.tolist(),
                    "bias": teacher.bias},
    }


def write_binary(cfg: SynthConfig, out: str | os.PathLike, progress: bool = True) -> dict:
    """Generate ``cfg.rows`` rows straight into a dlrmkit dataset at ``out``; returns its metadata."""
    out = Path(out)
    teacher = _draw_teacher(cfg)
    ranges = split_ranges(_layout_days(cfg))
    writer = DatasetWriter(out, NUM_DENSE, NUM_SPARSE)
    for split in ("train", "val", "test"):
        lo, hi = ranges[split]
        writer.preallocate(split, hi - lo)
    prob_file = out / ".teacher_prob.f32"
    with open(prob_file, "wb") as f:
        f.truncate(cfg.rows * 4)
    n_chunks = -(-cfg.rows // cfg.chunk_rows)
    bar = Progress(cfg.rows, "rows", "synth", enabled=progress)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(cfg.workers, initializer=_init_worker,
                             initargs=(cfg, teacher, str(out), "binary", ranges)) as pool:
        for n in pool.map(_binary_chunk, range(n_chunks)):
            bar.update(n)
    seconds = time.perf_counter() - t0
    bar.close()
    label = np.concatenate([np.fromfile(out / s / "label.bin", dtype=np.uint8) for s in ("train", "test", "val")])
    prob = np.fromfile(prob_file, dtype=np.float32)
    prob_file.unlink()
    oracle = _oracle(label, prob, {"train": ranges["train"], "test": ranges["test"], "val": ranges["val"]})
    return writer.finish(cfg.table_sizes, _source(cfg, teacher, "binary"),
                         {"oracle_auc": oracle, "positive_rate": float(label.mean()),
                          "generation": {"seconds": seconds, "rows_per_s": cfg.rows / seconds}})


def raw_file_names(cfg: SynthConfig) -> list[str]:
    return ["train.txt"] if cfg.layout == "kaggle" else [f"day_{d}" for d in range(cfg.days)]


def write_raw(cfg: SynthConfig, out: str | os.PathLike, progress: bool = True) -> dict:
    """Generate Criteo text files (Kaggle ``train.txt`` or Terabyte ``day_N``) and ``synth.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "synth.json"
    meta_path.unlink(missing_ok=True)
    teacher = _draw_teacher(cfg)
    days = _layout_days(cfg)
    names = raw_file_names(cfg)
    files = [open(out / (n + ".partial"), "wb") for n in names] if cfg.layout == "terabyte" else \
        [open(out / "train.txt.partial", "wb")]
    file_ends = np.cumsum(days) if cfg.layout == "terabyte" else np.array([cfg.rows])
    labels = np.empty(cfg.rows, dtype=np.uint8)
    probs = np.empty(cfg.rows, dtype=np.float32)
    n_chunks = -(-cfg.rows // cfg.chunk_rows)
    bar = Progress(cfg.rows, "rows", "synth", enabled=progress)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(cfg.workers, initializer=_init_worker,
                             initargs=(cfg, teacher, str(out), "raw", {})) as pool:
        for chunk, data, lengths, label, prob in pool.map(_raw_chunk, range(n_chunks)):
            start = chunk * cfg.chunk_rows
            stop = start + label.shape[0]
            labels[start:stop], probs[start:stop] = label, prob
            ends = np.concatenate([[0], np.cumsum(lengths)])
            row = start
            while row < stop:  # cut the block at file boundaries
                fi = int(np.searchsorted(file_ends, row, side="right"))
                upto = min(stop, int(file_ends[fi]))
                files[fi].write(data[ends[row - start]:ends[upto - start]])
                row = upto
            bar.update(stop - start)
    seconds = time.perf_counter() - t0
    bar.close()
    for f, name in zip(files, names):
        f.close()
        os.replace(out / (name + ".partial"), out / name)
    meta = {
        "format": "criteo-raw-text",
        "layout": cfg.layout,
        "files": names,
        "rows": cfg.rows,
        "day_rows": days,
        "source": _source(cfg, teacher, "raw"),
        "oracle_auc": _oracle(labels, probs, split_ranges(days)),
        "positive_rate": float(labels.mean()),
        "generation": {"seconds": seconds, "rows_per_s": cfg.rows / seconds},
    }
    write_json_atomic(meta_path, meta)
    return meta
