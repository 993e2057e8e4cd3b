"""Parse blocks of Criteo text lines into arrays, vectorized, finding every bad line.

A line is ``label \\t I1..I13 \\t C1..C26 \\n``: 40 tab-separated fields. The label is 0 or 1;
dense fields are empty or decimal integers (a leading '-' allowed) within int32; categorical
fields are empty or at most 8 hex digits. Empty fields read as 0, as the DLRM reference reads
them ("" -> "0"). A CR before the newline (CRLF files) is dropped. Anything else makes the line
bad, with a kind (see BAD_KINDS) and a message naming the field.

Pure functions of bytes: no files, so a Spark engine can run the same code on its partitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dlrmkit.config import NUM_DENSE, NUM_SPARSE

NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
DENSE_FIRST, SPARSE_FIRST = 1, 1 + NUM_DENSE
MAX_DENSE_DIGITS = 10
MAX_HEX_DIGITS = 8
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

BAD_KINDS = ("field_count", "bad_label", "dense_not_integer", "dense_out_of_range",
             "categorical_not_hex", "categorical_too_long")

_HEX_VALUE = np.full(256, -1, dtype=np.int16)
_HEX_VALUE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_VALUE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_DEC_VALUE = np.full(256, -1, dtype=np.int16)
_DEC_VALUE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_POWERS = 16 ** np.arange(MAX_HEX_DIGITS - 1, -1, -1, dtype=np.int64)
_DEC_POWERS = 10 ** np.arange(MAX_DENSE_DIGITS - 1, -1, -1, dtype=np.int64)


@dataclass
class BadLine:
    line: int  # index of the line within the block (0-based)
    kind: str
    detail: str


@dataclass
class ParsedBlock:
    """The good lines of a block; ``rows`` holds their indices within the block."""

    label: np.ndarray  # (n,) uint8
    dense: np.ndarray  # (n, 13) int64, raw values (empty -> 0, negatives kept)
    sparse: np.ndarray  # (n, 26) int64, int(hex, 16) (empty -> 0)
    rows: np.ndarray  # (n,) int64 line index within the block
    lines: int  # lines in the block, good and bad
    bad: list[BadLine] = field(default_factory=list)


PAD = 16  # bytes of padding before the block, so 16-byte windows ending at any field are in bounds
_HEX_POWERS_F = _HEX_POWERS.astype(np.float64)
_DEC_POWERS_F = _DEC_POWERS.astype(np.float64)


def _windows(buf: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` (8 or 16) bytes before each position, as a (g, width) uint8 matrix.

    One unaligned 8-byte load per 8 bytes (a strided uint64 view of the buffer) instead of one
    gather per byte.
    """
    words = np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))
    parts = [words[ends - width + 8 * k] for k in range(width // 8)]
    return np.stack(parts, axis=1).view(np.uint8).reshape(ends.size, width)


def _field_value(buf: np.ndarray, start: np.ndarray, end: np.ndarray, width: int, table: np.ndarray,
                 powers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Digits of fields [start, end), at most ``width`` long: (value (g,) int64, any invalid char (g,))."""
    chars = _windows(buf, end, width)
    inside = np.arange(width) >= (width - (end - start))[:, None]
    digit = table[chars]
    invalid = ((digit < 0) & inside).any(axis=1)
    value = np.where(inside, digit, 0).astype(np.float64) @ powers  # exact: < 2^53
    return value.astype(np.int64), invalid


def parse_block(data: bytes | np.ndarray) -> ParsedBlock:
    """Parse whole lines (every line ends with '\\n'); bad lines are reported, not parsed."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    buf = np.zeros(raw.size + PAD, dtype=np.uint8)  # padded copy: windows before offset 0 stay in bounds
    buf[PAD:] = raw
    is_sep = buf == 9
    is_sep |= buf == 10
    sep = np.flatnonzero(is_sep).astype(np.int64)
    newline_at = np.flatnonzero(buf[sep] == 10)  # index into sep of each line's newline
    n = newline_at.size
    tab_count = np.diff(newline_at, prepend=-1) - 1
    bad: dict[int, BadLine] = {}
    for i in np.flatnonzero(tab_count != NUM_FIELDS - 1):
        bad[int(i)] = BadLine(int(i), "field_count", f"{tab_count[i] + 1} fields, expected {NUM_FIELDS}")
    rows = np.flatnonzero(tab_count == NUM_FIELDS - 1)
    g = rows.size
    last_sep = newline_at[rows]
    sep_ext = np.concatenate([[PAD - 1], sep])  # a separator "before" the first line

    def field_bounds(c: int) -> tuple[np.ndarray, np.ndarray]:
        at = last_sep - (NUM_FIELDS - 1) + c
        start, end = sep_ext[at] + 1, sep_ext[at + 1]
        if c == NUM_FIELDS - 1:  # drop the CR of a CRLF line end
            end = end - ((end > start) & (buf[end - 1] == 13))
        return start, end

    bad_rows = np.zeros(g, dtype=bool)

    def text(r: int, c: int) -> str:
        s, e = field_bounds(c)
        return bytes(buf[s[r]:e[r]]).decode("latin-1")

    def flag(mask: np.ndarray, kind: str, describe) -> None:
        for r in np.flatnonzero(mask & ~bad_rows):
            bad[int(rows[r])] = BadLine(int(rows[r]), kind, describe(r))
        bad_rows[:] |= mask

    s, e = field_bounds(0)
    lab_char = buf[s]
    label_ok = (e - s == 1) & ((lab_char == 48) | (lab_char == 49))
    flag(~label_ok, "bad_label", lambda r: f"label {text(r, 0)!r} is not 0 or 1")
    label = (lab_char - 48).astype(np.uint8)

    dense = np.zeros((g, NUM_DENSE), dtype=np.int64)
    for j in range(NUM_DENSE):
        c = DENSE_FIRST + j
        s, e = field_bounds(c)
        negative = (e > s) & (buf[s] == 45)  # '-'
        digits = s + negative
        n_digits = e - digits
        too_long = n_digits > MAX_DENSE_DIGITS
        magnitude, invalid = _field_value(buf, np.maximum(digits, e - MAX_DENSE_DIGITS), e, 16, _DEC_VALUE,
                                          np.r_[np.zeros(6), _DEC_POWERS_F])
        not_int = invalid | too_long | (negative & (n_digits == 0))
        flag(not_int, "dense_not_integer",
             lambda r, c=c: f"field {c + 1} (I{c}) {text(r, c)!r} is not an integer of at most {MAX_DENSE_DIGITS} digits")
        v = np.where(negative, -magnitude, magnitude)
        flag((v > INT32_MAX) | (v < INT32_MIN), "dense_out_of_range",
             lambda r, c=c: f"field {c + 1} (I{c}) {text(r, c)!r} is outside int32")
        dense[:, j] = v

    sparse = np.zeros((g, NUM_SPARSE), dtype=np.int64)
    for j in range(NUM_SPARSE):
        c = SPARSE_FIRST + j
        s, e = field_bounds(c)
        too_long = (e - s) > MAX_HEX_DIGITS
        flag(too_long, "categorical_too_long",
             lambda r, c=c, j=j: f"field {c + 1} (C{j + 1}) has {len(text(r, c))} characters, "
                                 f"more than {MAX_HEX_DIGITS} hex digits")
        value, invalid = _field_value(buf, np.maximum(s, e - MAX_HEX_DIGITS), e, MAX_HEX_DIGITS, _HEX_VALUE,
                                      _HEX_POWERS_F)
        flag(invalid, "categorical_not_hex", lambda r, c=c, j=j: f"field {c + 1} (C{j + 1}) {text(r, c)!r} is not hex")
        sparse[:, j] = value

    good = ~bad_rows
    return ParsedBlock(label[good], dense[good], sparse[good], rows[good], n,
                       sorted(bad.values(), key=lambda b: b.line))
