"""A deliberately naive, pure-Python Criteo preprocessing: the reference the preprocess tests
compare dlrmkit's vectorized engine against.

Written from the definitions (the DLRM reference's and the docstrings of dlrmkit.data.*), not from
dlrmkit's code: str.split, int(), dicts and Counters, one value at a time.

    line      = label \\t I1..I13 \\t C1..C26            (empty field -> 0)
    dense     = float32(log(1 + max(int(I), 0)))
    value     = int(C, 16)  (then % N when a max index range is given)
    kaggle    : 7 days of floor(n/7) rows, the remainder to day 0; terabyte: one file a day
    splits    : all days but the last train; last day (m rows): first ceil(m/2) test, rest val
    reference : per column, values numbered by first appearance over ALL rows in file order
    frequency : per column, train rows only; values seen >= T times by descending count, ties by
                smaller value; every other value -> the last index (table size kept + 1)
    hash      : index = value % N, table size N
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np

NUM_DENSE, NUM_SPARSE = 13, 26


def parse_line(line: str) -> tuple[int, list[int], list[int]]:
    fields = line.rstrip("\n").rstrip("\r").split("\t")
    assert len(fields) == 1 + NUM_DENSE + NUM_SPARSE, fields
    label = int(fields[0])
    dense = [int(x) if x else 0 for x in fields[1:1 + NUM_DENSE]]
    sparse = [int(x, 16) if x else 0 for x in fields[1 + NUM_DENSE:]]
    return label, dense, sparse


def parse_text(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [parse_line(line) for line in text.splitlines() if line != ""]
    label = np.array([r[0] for r in rows], dtype=np.int64)
    dense = np.array([r[1] for r in rows], dtype=np.int64).reshape(len(rows), NUM_DENSE)
    sparse = np.array([r[2] for r in rows], dtype=np.int64).reshape(len(rows), NUM_SPARSE)
    return label, dense, sparse


def log_dense(x: int) -> np.float32:
    return np.float32(math.log1p(max(x, 0)))


def kaggle_days(n: int) -> list[int]:
    per = n // 7
    return [n - 6 * per] + [per] * 6


def split_rows(days: list[int]) -> dict[str, list[int]]:
    """Global row numbers of each split."""
    train_end = sum(days[:-1])
    last = days[-1]
    n_test = -(-last // 2)
    return {"train": list(range(train_end)),
            "test": list(range(train_end, train_end + n_test)),
            "val": list(range(train_end + n_test, train_end + last))}


def reference_vocab(sparse: np.ndarray, max_index_range: int | None) -> list[dict[int, int]]:
    vocabs = []
    for j in range(sparse.shape[1]):
        d: dict[int, int] = {}
        for v in sparse[:, j].tolist():
            if max_index_range is not None:
                v %= max_index_range
            if v not in d:
                d[v] = len(d)
        vocabs.append(d)
    return vocabs


def frequency_vocab(train_sparse: np.ndarray, threshold: int, max_index_range: int | None) -> list[dict[int, int]]:
    vocabs = []
    for j in range(train_sparse.shape[1]):
        values = train_sparse[:, j].tolist()
        if max_index_range is not None:
            values = [v % max_index_range for v in values]
        counts = Counter(values)
        kept = sorted((v for v, c in counts.items() if c >= threshold), key=lambda v: (-counts[v], v))
        vocabs.append({v: i for i, v in enumerate(kept)})
    return vocabs


def expected_dataset(label, dense, sparse, days, vocab: str, max_index_range=None, threshold=1,
                     train_keep: list[int] | None = None) -> dict:
    """{split: (label uint8, dense float32, sparse int32)}, table sizes, vocab values, train counts."""
    rows = split_rows(days)
    if train_keep is not None:
        rows["train"] = train_keep
    if vocab == "reference":  # rows dropped by sub-sampling never reach the dictionary (as in the reference)
        dicts = reference_vocab(sparse[rows["train"] + rows["test"] + rows["val"]], max_index_range)
        sizes = [len(d) for d in dicts]
    elif vocab == "frequency":
        dicts = frequency_vocab(sparse[rows["train"]], threshold, max_index_range)
        sizes = [len(d) + 1 for d in dicts]
    else:
        dicts = None
        sizes = [max_index_range] * NUM_SPARSE

    def index(v: int, j: int) -> int:
        if max_index_range is not None:
            v %= max_index_range
        if dicts is None:
            return v
        return dicts[j].get(v, len(dicts[j]))  # frequency: the shared last row (never hit for reference)

    out = {}
    for split, rs in rows.items():
        out[split] = (
            np.array([label[r] for r in rs], dtype=np.uint8),
            np.array([[log_dense(int(x)) for x in dense[r]] for r in rs], dtype=np.float32).reshape(len(rs), NUM_DENSE),
            np.array([[index(int(v), j) for j, v in enumerate(sparse[r])] for r in rs],
                     dtype=np.int32).reshape(len(rs), NUM_SPARSE),
        )
    counts = []
    for j in range(NUM_SPARSE):
        c = [0] * sizes[j]
        for i in out["train"][2][:, j].tolist():
            c[i] += 1
        counts.append(c)
    values = None
    if dicts is not None:
        values = [sorted(d, key=d.get) for d in dicts]
    return {"splits": out, "table_sizes": sizes, "vocab_values": values, "counts": counts}


# --- random valid lines ----------------------------------------------------------------------

def random_line(rnd: random.Random, label: int | None = None) -> str:
    """A valid Criteo line with random field lengths, empties, negative dense values and hex of
    1..8 digits in mixed case."""
    fields = [str(rnd.randint(0, 1) if label is None else label)]
    for _ in range(NUM_DENSE):
        r = rnd.random()
        if r < 0.2:
            fields.append("")
        elif r < 0.3:
            fields.append(str(-rnd.randint(1, 2**31)))
        elif r < 0.35:
            fields.append(str(rnd.choice([0, 2**31 - 1, 9999999999 % 2**31])))
        else:
            fields.append(str(rnd.randint(0, 10 ** rnd.randint(0, 9))))
    for _ in range(NUM_SPARSE):
        if rnd.random() < 0.2:
            fields.append("")
        else:
            digits = rnd.randint(1, 8)
            text = "".join(rnd.choice("0123456789abcdef") for _ in range(digits))
            if rnd.random() < 0.3:
                text = text.upper()
            fields.append(text)
    return "\t".join(fields) + "\n"
