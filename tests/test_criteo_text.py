"""The vectorized Criteo line parser: exact arrays on hand-written lines, every bad-line kind, and
agreement with a naive str.split / int() parse on random valid lines."""

from __future__ import annotations

import random

import numpy as np
import pytest

from criteo_naive import parse_text, random_line
from dlrmkit.data.criteo_text import BAD_KINDS, parse_block
from dlrmkit.data.raw_files import read_blocks

EMPTY_DENSE = [""] * 13
EMPTY_SPARSE = [""] * 26


def line(label="0", dense=None, sparse=None, end="\n") -> str:
    dense = list(dense if dense is not None else ["1"] * 13)
    sparse = list(sparse if sparse is not None else ["0a"] * 26)
    return "\t".join([label] + dense + sparse) + end


def test_parse_hand_written_lines():
    text = (
        line("1", ["1", "", "-1", "0", "2147483647", "-2147483648", "42", "", "", "", "", "", "7"],
             ["68fd1e64", "", "A1", "a1", "DeadBeef", "ffffffff", "0", "00000001"] + [""] * 18)
        + line("0", EMPTY_DENSE, EMPTY_SPARSE)
    )
    b = parse_block(text.encode())
    assert b.lines == 2 and b.bad == []
    np.testing.assert_array_equal(b.label, [1, 0])
    assert b.label.dtype == np.uint8
    np.testing.assert_array_equal(b.dense[0], [1, 0, -1, 0, 2147483647, -2147483648, 42, 0, 0, 0, 0, 0, 7])
    np.testing.assert_array_equal(b.dense[1], [0] * 13)
    np.testing.assert_array_equal(
        b.sparse[0], [0x68FD1E64, 0, 0xA1, 0xA1, 0xDEADBEEF, 0xFFFFFFFF, 0, 1] + [0] * 18)
    np.testing.assert_array_equal(b.sparse[1], [0] * 26)
    np.testing.assert_array_equal(b.rows, [0, 1])


def test_crlf_line_ends():
    text = line("1", sparse=["1"] * 25 + ["abc"], end="\r\n") + line("0", sparse=["1"] * 25 + [""], end="\r\n") \
        + line("1", sparse=["1"] * 25 + ["12345678"], end="\r\n")
    b = parse_block(text.encode())
    assert b.bad == []
    np.testing.assert_array_equal(b.label, [1, 0, 1])
    np.testing.assert_array_equal(b.sparse[:, 25], [0xABC, 0, 0x12345678])
    np.testing.assert_array_equal(b.dense, np.ones((3, 13)))


def test_first_line_at_buffer_start_and_single_char_fields():
    """Fields right at the start of the buffer (the padding), one character long."""
    text = "\t".join(["1"] + ["9"] * 13 + ["f"] * 26) + "\n"
    b = parse_block(text.encode())
    np.testing.assert_array_equal(b.dense, np.full((1, 13), 9))
    np.testing.assert_array_equal(b.sparse, np.full((1, 26), 15))


def test_read_blocks_adds_final_newline(tmp_path):
    good = line("1", ["5"] * 13, ["b"] * 26)
    path = tmp_path / "t.txt"
    path.write_bytes((good + good.rstrip("\n")).encode())
    blocks = list(read_blocks(path, 1 << 16))
    assert all(not cut for _, cut in blocks)
    data = b"".join(b for b, _ in blocks)
    assert data == (good + good).encode()
    b = parse_block(data)
    assert b.lines == 2 and b.bad == []
    np.testing.assert_array_equal(b.sparse, np.full((2, 26), 11))


def test_read_blocks_cuts_at_line_ends(tmp_path):
    rnd = random.Random(3)
    text = "".join(random_line(rnd) for _ in range(600))
    path = tmp_path / "t.txt"
    path.write_text(text)
    blocks = [b for b, _ in read_blocks(path, 1 << 16)]
    assert len(blocks) > 1
    assert all(b.endswith(b"\n") for b in blocks)
    assert b"".join(blocks) == text.encode()


# --- bad lines -------------------------------------------------------------------------------

def _fields(n: int) -> str:
    return "\t".join(["1"] + ["2"] * (n - 1)) + "\n"


BAD_CASES = [
    # (line, kind, words the detail must contain)
    (_fields(39), "field_count", ["39"]),
    (_fields(41), "field_count", ["41"]),
    ("\t".join(["0"] + ["1"] * 13 + ["0a"] * 20) + "\n", "field_count", ["34"]),  # trailing empties stripped
    ("\n", "field_count", ["1"]),
    (line("2"), "bad_label", ["'2'"]),
    (line(""), "bad_label", ["''"]),
    (line("01"), "bad_label", ["'01'"]),
    (line("0", ["1"] * 4 + ["1.5"] + ["1"] * 8), "dense_not_integer", ["field 6", "I5", "'1.5'"]),
    (line("0", ["x"] + ["1"] * 12), "dense_not_integer", ["field 2", "I1", "'x'"]),
    (line("0", ["1"] * 12 + ["-"]), "dense_not_integer", ["field 14", "I13", "'-'"]),
    (line("0", ["1"] * 2 + ["12345678901"] + ["1"] * 10), "dense_not_integer", ["field 4", "I3", "'12345678901'"]),
    (line("0", ["1", "3000000000"] + ["1"] * 11), "dense_out_of_range", ["field 3", "I2", "'3000000000'"]),
    (line("0", ["1", "-2147483649"] + ["1"] * 11), "dense_out_of_range", ["field 3", "I2", "'-2147483649'"]),
    (line("0", ["1", "2147483648"] + ["1"] * 11), "dense_out_of_range", ["field 3", "I2"]),
    (line("0", sparse=["0a"] * 3 + ["zz"] + ["0a"] * 22), "categorical_not_hex", ["field 18", "C4", "'zz'"]),
    (line("0", sparse=["0a"] * 25 + ["-1"]), "categorical_not_hex", ["field 40", "C26", "'-1'"]),
    (line("0", sparse=["0a"] * 25 + ["12 4"]), "categorical_not_hex", ["field 40", "C26"]),
    (line("0", sparse=["123456789"] + ["0a"] * 25), "categorical_too_long", ["field 15", "C1", "9 characters"]),
]


def test_bad_cases_cover_every_kind():
    assert {kind for _, kind, _ in BAD_CASES} == set(BAD_KINDS)


@pytest.mark.parametrize("bad, kind, words", BAD_CASES, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(BAD_CASES)])
def test_bad_line_kinds(bad, kind, words):
    before = line("1", ["3"] * 13, ["aa"] * 26)
    after = line("0", ["-4"] * 13, ["BB"] * 26)
    b = parse_block((before + bad + after).encode())
    assert b.lines == 3
    assert [(x.line, x.kind) for x in b.bad] == [(1, kind)], b.bad
    for w in words:
        assert w in b.bad[0].detail, (w, b.bad[0].detail)
    np.testing.assert_array_equal(b.rows, [0, 2])
    np.testing.assert_array_equal(b.label, [1, 0])
    np.testing.assert_array_equal(b.dense, [[3] * 13, [-4] * 13])
    np.testing.assert_array_equal(b.sparse, [[0xAA] * 26, [0xBB] * 26])


def test_many_bad_lines_among_good_keep_rows_right():
    rnd = random.Random(11)
    bads = [bad for bad, _, _ in BAD_CASES]
    lines, expect_bad, good_lines = [], [], []
    for i in range(300):
        if rnd.random() < 0.3:
            k = rnd.randrange(len(bads))
            lines.append(bads[k])
            expect_bad.append((i, BAD_CASES[k][1]))
        else:
            lines.append(random_line(rnd))
            good_lines.append(i)
    b = parse_block("".join(lines).encode())
    assert b.lines == 300
    assert [(x.line, x.kind) for x in b.bad] == expect_bad
    np.testing.assert_array_equal(b.rows, good_lines)
    label, dense, sparse = parse_text("".join(lines[i] for i in good_lines))
    np.testing.assert_array_equal(b.label, label)
    np.testing.assert_array_equal(b.dense, dense)
    np.testing.assert_array_equal(b.sparse, sparse)


def test_first_bad_kind_wins_per_line():
    """A line bad in several ways is reported once (label is checked before the fields)."""
    bad = line("7", ["x"] * 13, ["zz"] * 26)
    b = parse_block(bad.encode())
    assert [(x.line, x.kind) for x in b.bad] == [(0, "bad_label")]
    assert b.label.size == 0 and b.rows.size == 0


# --- property: random valid lines equal a naive parse ---------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_random_valid_lines_equal_naive_parse(seed):
    rnd = random.Random(seed)
    end = "\r\n" if seed % 2 else "\n"
    text = "".join(random_line(rnd).replace("\n", end) for _ in range(400))
    b = parse_block(text.encode())
    assert b.bad == [] and b.lines == 400
    label, dense, sparse = parse_text(text)
    np.testing.assert_array_equal(b.label, label)
    np.testing.assert_array_equal(b.dense, dense)
    np.testing.assert_array_equal(b.sparse, sparse)
    np.testing.assert_array_equal(b.rows, np.arange(400))


def test_parse_numpy_buffer_input():
    rnd = random.Random(9)
    text = "".join(random_line(rnd) for _ in range(20)).encode()
    a = parse_block(text)
    b = parse_block(np.frombuffer(text, dtype=np.uint8))
    for name in ("label", "dense", "sparse", "rows"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
