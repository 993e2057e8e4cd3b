"""The compiled parser equals the numpy parser: same rows, same arrays, same bad lines."""

from __future__ import annotations

import random

import numpy as np
import pytest

from criteo_naive import random_line
from test_criteo_text import BAD_CASES

from dlrmkit.data import criteo_text

if criteo_text._native_parser() is None:  # noqa: SLF001
    pytest.skip("the compiled parser is not built (no C compiler at install, or DLRMKIT_PARSER=numpy)",
                allow_module_level=True)


def _same(text: bytes) -> None:
    native, numpy_ = criteo_text.parse_block(text), criteo_text.parse_block_numpy(text)
    assert native.lines == numpy_.lines
    for name in ("label", "dense", "sparse", "rows"):
        np.testing.assert_array_equal(getattr(native, name), getattr(numpy_, name), err_msg=name)
    assert [(b.line, b.kind, b.detail) for b in native.bad] == [(b.line, b.kind, b.detail) for b in numpy_.bad]


@pytest.mark.parametrize("seed", range(4))
def test_random_valid_lines(seed):
    rnd = random.Random(seed)
    _same("".join(random_line(rnd) for _ in range(500)).encode())


@pytest.mark.parametrize("seed", range(3))
def test_bad_lines_among_good(seed):
    rnd = random.Random(100 + seed)
    lines = [random_line(rnd) for _ in range(200)]
    for bad, _, _ in BAD_CASES:
        lines.insert(rnd.randrange(len(lines) + 1), bad if bad.endswith("\n") else bad + "\n")
    text = "".join(lines)
    _same(text.encode())
    _same(text.replace("\n", "\r\n").encode())  # CRLF line ends


def test_edge_values():
    fields = ["1", "-2147483648", "2147483647", "0", "", "-0"] + ["7"] * 8 + ["FFFFFFFF", "0", "", "a"] + ["b"] * 22
    _same(("\t".join(fields) + "\n").encode())
    fields[1] = "-2147483649"  # one past int32
    _same(("\t".join(fields) + "\n").encode())
