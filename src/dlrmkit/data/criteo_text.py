"""Parse blocks of Criteo text lines into arrays, vectorized, finding every bad line.

A line is ``label \\t I1..I13 \\t C1..C26 \\n``: 40 tab-separated fields. The label is 0 or 1;
dense fields are empty or decimal integers (a leading '-' allowed) within int32; categorical
fields are empty or at most 8 hex digits. Empty fields read as 0, as the DLRM reference reads
them ("" -> "0"). A CR before the newline (CRLF files) is dropped. Anything else makes the line
bad, with a kind (see BAD_KINDS) and a message naming the field.

Pure functions of bytes: no files, so a Spark engine can run the same code on its partitions.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import numpy as np

from dlrmkit.config import NUM_DENSE, NUM_SPARSE
from dlrmkit.data.native import library

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
_INVALID = 0xFF
_HEX_NIBBLE = np.where(_HEX_VALUE >= 0, _HEX_VALUE, _INVALID).astype(np.uint8)
_DEC_DIGIT = np.where(_DEC_VALUE >= 0, _DEC_VALUE, _INVALID).astype(np.uint8)
_HIGH_BITS = np.uint64(0x8080808080808080)
_U64 = np.uint64


def _windows(buf: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The 8 bytes before each position, as little-endian uint64 words (one unaligned load each)."""
    words = np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))
    return words[ends - 8]


_BYTE_MASKS = np.array([0] + [(0xFFFFFFFFFFFFFFFF << (8 * (8 - k))) & 0xFFFFFFFFFFFFFFFF for k in range(1, 9)],
                       dtype=np.uint64)


def _byte_mask(length: np.ndarray) -> np.ndarray:
    """A word mask keeping the last ``length`` (0..8) bytes of an 8-byte window (its high bytes)."""
    return _BYTE_MASKS[np.clip(length, 0, 8)]


def _swar_combine(digits: np.ndarray, base: int) -> np.ndarray:
    """Eight base-``base`` digits held one per byte (first byte most significant) -> their value."""
    b = _U64(base)
    t = (digits & _U64(0x00FF00FF00FF00FF)) * b + ((digits >> _U64(8)) & _U64(0x00FF00FF00FF00FF))
    t = (t & _U64(0x0000FFFF0000FFFF)) * (b * b) + ((t >> _U64(16)) & _U64(0x0000FFFF0000FFFF))
    return (t & _U64(0xFFFFFFFF)) * (b ** _U64(4)) + (t >> _U64(32))


def _digits_value(buf: np.ndarray, end: np.ndarray, length: np.ndarray, table: np.ndarray,
                  base: int) -> tuple[np.ndarray, np.ndarray]:
    """Value of the last ``length`` (<= 8) characters before ``end`` in base 10 or 16, and whether
    any of them is not a digit of that base. Vectorized over any shape of fields."""
    words = _windows(buf, end)
    digits = table[words.view(np.uint8)].view(np.uint64).reshape(words.shape)  # one digit per byte
    mask = _byte_mask(length)
    digits &= mask
    invalid = (digits & _HIGH_BITS) != 0
    return _swar_combine(digits, base).astype(np.int64), invalid


def _native_parser():
    lib = library()
    return None if lib is None else lib.dlrmkit_parse_block


def parse_block(data: bytes | np.ndarray, compact: bool = False) -> ParsedBlock:
    """Parse whole lines (every line ends with '\\n'); bad lines are reported, not parsed.

    Uses the compiled parser when it is built, else `parse_block_numpy`; both give identical
    results, and bad lines' messages always come from the numpy one. ``compact`` returns dense
    as int32 and sparse as uint32 (the values fit; half the bytes) instead of int64.
    """
    native = _native_parser()
    if native is None:
        block = parse_block_numpy(data)
        if compact:
            block.dense, block.sparse = block.dense.astype(np.int32), block.sparse.astype(np.uint32)
        return block
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    raw = np.ascontiguousarray(raw)
    cap = int(np.count_nonzero(raw == 10))
    label = np.empty(cap, np.uint8)
    dense = np.empty((cap, NUM_DENSE), np.int32)
    sparse = np.empty((cap, NUM_SPARSE), np.uint32)
    rows = np.empty(cap, np.int64)
    bad = np.empty(cap, np.int64)
    lines, n_bad = ctypes.c_int64(), ctypes.c_int64()
    good = native(raw.ctypes.data, raw.size, label.ctypes.data, dense.ctypes.data, sparse.ctypes.data,
                  rows.ctypes.data, ctypes.addressof(lines), bad.ctypes.data, cap, ctypes.addressof(n_bad))
    bad_lines: list[BadLine] = []
    if n_bad.value:
        bad_lines = _describe(raw, bad[:n_bad.value])
    dense, sparse = dense[:good], sparse[:good]
    if not compact:
        dense, sparse = dense.astype(np.int64), sparse.astype(np.int64)
    return ParsedBlock(label[:good], dense, sparse, rows[:good], int(lines.value), bad_lines)


def _describe(raw: np.ndarray, bad: np.ndarray) -> list[BadLine]:
    """BadLine records (kind, message) for the given line numbers, from the numpy parser."""
    newlines = np.flatnonzero(raw == 10)
    starts = np.concatenate([[0], newlines[:-1] + 1])
    text = b"".join(raw[starts[i]:newlines[i] + 1].tobytes() for i in bad)
    found = parse_block_numpy(text).bad
    if len(found) != bad.size:  # the two parsers disagree: a bug, never silently accept rows
        raise AssertionError(f"native and numpy parsers disagree on {bad.size} bad lines ({len(found)} found)")
    return [BadLine(int(bad[b.line]), b.kind, b.detail) for b in found]


def parse_block_numpy(data: bytes | np.ndarray) -> ParsedBlock:
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

    # Dense: all 13 columns at once; up to 10 digits after an optional '-', as two 8-byte windows.
    cols = np.arange(DENSE_FIRST, DENSE_FIRST + NUM_DENSE)
    at = last_sep[:, None] - (NUM_FIELDS - 1) + cols  # (g, 13)
    s, e = sep_ext[at] + 1, sep_ext[at + 1]
    negative = (e > s) & (buf[s] == 45)  # '-'
    n_digits = e - s - negative
    low, bad_low = _digits_value(buf, e, np.minimum(n_digits, 8), _DEC_DIGIT, 10)
    high, bad_high = _digits_value(buf, e - 8, np.clip(n_digits - 8, 0, 8), _DEC_DIGIT, 10)
    magnitude = high * 100_000_000 + low
    not_int = bad_low | bad_high | (n_digits > MAX_DENSE_DIGITS) | (negative & (n_digits == 0))
    dense = np.where(negative, -magnitude, magnitude)
    out_of_range = (dense > INT32_MAX) | (dense < INT32_MIN)
    for j in range(NUM_DENSE):
        c = DENSE_FIRST + j
        flag(not_int[:, j], "dense_not_integer",
             lambda r, c=c: f"field {c + 1} (I{c}) {text(r, c)!r} is not an integer of at most {MAX_DENSE_DIGITS} digits")
        flag(out_of_range[:, j], "dense_out_of_range",
             lambda r, c=c: f"field {c + 1} (I{c}) {text(r, c)!r} is outside int32")

    # Categorical: all 26 columns at once; at most 8 hex digits, one 8-byte window.
    cols = np.arange(SPARSE_FIRST, NUM_FIELDS)
    at = last_sep[:, None] - (NUM_FIELDS - 1) + cols  # (g, 26)
    s, e = sep_ext[at] + 1, sep_ext[at + 1]
    crlf = (e[:, -1] > s[:, -1]) & (buf[e[:, -1] - 1] == 13)  # drop the CR of a CRLF line end
    e[:, -1] -= crlf
    length = e - s
    too_long = length > MAX_HEX_DIGITS
    sparse, not_hex = _digits_value(buf, e, length, _HEX_NIBBLE, 16)
    for j in range(NUM_SPARSE):
        c = SPARSE_FIRST + j
        flag(too_long[:, j], "categorical_too_long",
             lambda r, c=c, j=j: f"field {c + 1} (C{j + 1}) has {len(text(r, c))} characters, "
                                 f"more than {MAX_HEX_DIGITS} hex digits")
        flag(not_hex[:, j] & ~too_long[:, j], "categorical_not_hex",
             lambda r, c=c, j=j: f"field {c + 1} (C{j + 1}) {text(r, c)!r} is not hex")

    good = ~bad_rows
    return ParsedBlock(label[good], dense[good], sparse[good], rows[good], n,
                       sorted(bad.values(), key=lambda b: b.line))
