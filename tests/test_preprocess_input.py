"""`dlrmkit preprocess` on awkward input: gzip (several members, cut short, damaged, padded),
empty files, and bad lines (the error names file and line; skip counts each kind)."""

from __future__ import annotations

import gzip
import random
import zlib
from pathlib import Path

import numpy as np
import pytest

from criteo_naive import expected_dataset, kaggle_days, parse_text, random_line
from dlrmkit.cli import main
from dlrmkit.errors import DatasetError
from preprocess_helpers import arrays, check_against, comparable_meta, dataset_files, random_text, run


def test_gz_input_is_byte_identical(tmp_path):
    text = random_text(1500, seed=1)
    plain = tmp_path / "train.txt"
    plain.write_text(text)
    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    run(tmp_path / "a", [plain], vocab="reference", block_bytes=1 << 16)
    run(tmp_path / "b", [gz], vocab="reference", block_bytes=1 << 16)
    assert dataset_files(tmp_path / "a") == dataset_files(tmp_path / "b")
    assert comparable_meta(tmp_path / "a") == comparable_meta(tmp_path / "b")


def _truncated_gz(tmp_path: Path, lines: int = 3000, keep: float = 0.6) -> tuple[Path, int]:
    text = random_text(lines, seed=4).encode()
    gz = gzip.compress(text)
    cut = gz[: int(len(gz) * keep)]
    path = tmp_path / "day_1.gz"
    path.write_bytes(cut)
    available = zlib.decompressobj(wbits=31).decompress(cut)  # everything the cut stream still holds
    assert 0 < available.count(b"\n") < lines
    return path, available.count(b"\n")


def test_truncated_gz_errors(tmp_path):
    path, _ = _truncated_gz(tmp_path)
    day0 = tmp_path / "day_0"
    day0.write_text(random_text(10, seed=2))
    with pytest.raises(DatasetError, match="truncated") as e:
        run(tmp_path / "out", [day0, path], dataset="terabyte", vocab="reference", block_bytes=1 << 16)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("block_bytes", [1 << 16, 1 << 23])
def test_truncated_gz_skip_keeps_complete_lines(tmp_path, block_bytes):
    """The stream broke off: every line wholly inside what still decompresses is kept (only the
    partial last line is dropped), whatever the block size."""
    path, complete = _truncated_gz(tmp_path)
    day0, day2 = tmp_path / "day_0", tmp_path / "day_2"
    day0.write_text(random_text(10, seed=2))
    day2.write_text(random_text(10, seed=5))
    meta = run(tmp_path / "out", [day0, path, day2], dataset="terabyte", vocab="reference", on_bad_line="skip",
               block_bytes=block_bytes)
    assert meta["source"]["bad_lines"]["truncated_gzip"] == 1
    assert meta["source"]["day_rows"] == [10, complete, 10]
    expect_label, _, _ = parse_text(random_text(3000, seed=4))  # the whole file; the kept rows are its prefix
    train_label = arrays(tmp_path / "out")["train"][0]
    np.testing.assert_array_equal(train_label[10:], expect_label[:complete])


@pytest.mark.parametrize("damage", ["crc", "size", "deflate", "header", "garbage after a member"])
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_damaged_gz_is_an_error_under_both_policies(tmp_path, damage, policy):
    """Damaged gzip data (unlike a cut) may have decoded into wrong lines, so no policy keeps any
    of them: the error names the file and what is wrong (or, under error, a line the damage broke
    before the decoder noticed), and no dataset is written."""
    data = bytearray(gzip.compress(random_text(3000, seed=4).encode()))
    mid = len(data) // 2
    if damage == "crc":
        data[-8:-4] = bytes(b ^ 0xFF for b in data[-8:-4])
    elif damage == "size":
        data[-4:] = bytes(b ^ 0x01 for b in data[-4:])
    elif damage == "deflate":
        data[mid:mid + 64] = bytes(b ^ 0x5A for b in data[mid:mid + 64])
    elif damage == "header":
        data[3] = 0xE0  # reserved flag bits
    else:
        data += b"not gzip at all\n"
    path = tmp_path / "day_0.gz"
    path.write_bytes(bytes(data))
    day1 = tmp_path / "day_1"
    day1.write_text(random_text(10, seed=2))
    expect = r"day_0\.gz: the gzip stream is corrupt \(.+\); its lines cannot be trusted, so it is not skipped"
    if damage == "deflate" and policy == "error":  # the damage may first decode into a line that fails to parse
        expect += r"|day_0\.gz: line \d+: "
    with pytest.raises(DatasetError, match=expect):
        run(tmp_path / "out", [path, day1], dataset="terabyte", vocab="reference", on_bad_line=policy,
            block_bytes=1 << 16)
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_zero_padding_after_the_last_member_is_ignored(tmp_path):
    """Zero bytes after the last gzip member (tape or block padding) are no data, as for gzip."""
    text = random_text(1500, seed=1)
    plain, padded = tmp_path / "plain.txt", tmp_path / "padded.txt.gz"
    plain.write_text(text)
    padded.write_bytes(gzip.compress(text[:700].encode()) + gzip.compress(text[700:].encode()) + bytes(3000))
    meta = run(tmp_path / "b", [padded], vocab="reference", on_bad_line="error", block_bytes=1 << 16)
    run(tmp_path / "a", [plain], vocab="reference", block_bytes=1 << 16)
    assert dataset_files(tmp_path / "a") == dataset_files(tmp_path / "b")
    assert meta["source"]["lines"] == 1500


def test_empty_file(tmp_path):
    days = [tmp_path / f"day_{d}" for d in range(3)]
    days[0].write_text(random_text(5, seed=1))
    days[1].write_bytes(b"")
    days[2].write_text(random_text(4, seed=2))
    with pytest.raises(DatasetError, match="empty") as e:
        run(tmp_path / "out", days, dataset="terabyte", vocab="reference")
    assert str(days[1]) in str(e.value)
    meta = run(tmp_path / "out", days, dataset="terabyte", vocab="reference", on_bad_line="skip")
    assert meta["source"]["bad_lines"]["empty_file"] == 1
    assert meta["source"]["day_rows"] == [5, 0, 4]
    assert {s: v["rows"] for s, v in meta["splits"].items()} == {"train": 5, "val": 2, "test": 2}
    empty_kaggle = tmp_path / "train.txt"
    empty_kaggle.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        run(tmp_path / "k", [empty_kaggle], vocab="reference")


def _with_bad_lines(n: int, bad_at: dict[int, str], seed: int = 6) -> str:
    rnd = random.Random(seed)
    return "".join(bad_at.get(i, None) or random_line(rnd) for i in range(n))


BAD = {
    "field_count": "1\t2\t3\n",
    "bad_label": "\t".join(["x"] + ["1"] * 13 + ["a"] * 26) + "\n",
    "dense_not_integer": "\t".join(["0", "1.5"] + ["1"] * 12 + ["a"] * 26) + "\n",
    "dense_out_of_range": "\t".join(["0", "3000000000"] + ["1"] * 12 + ["a"] * 26) + "\n",
    "categorical_not_hex": "\t".join(["0"] + ["1"] * 13 + ["zz"] + ["a"] * 25) + "\n",
    "categorical_too_long": "\t".join(["0"] + ["1"] * 13 + ["123456789"] + ["a"] * 25) + "\n",
}


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_line_error_names_file_and_line(tmp_path, workers):
    src = tmp_path / "train.txt"
    src.write_text(_with_bad_lines(2500, {2344: BAD["dense_not_integer"], 2400: BAD["bad_label"]}))
    with pytest.raises(DatasetError) as e:
        run(tmp_path / "out", [src], vocab="reference", block_bytes=1 << 16, workers=workers)
    msg = str(e.value)
    assert str(src) in msg and "line 2345:" in msg and "dense_not_integer" in msg and "I1" in msg, msg
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_bad_line_error_through_cli(tmp_path, capsys):
    src = tmp_path / "train.txt"
    src.write_text(_with_bad_lines(30, {6: BAD["categorical_not_hex"]}))
    rc = main(["preprocess", "--dataset", "kaggle", "--input", str(src), "--out", str(tmp_path / "out"),
               "--workers", "1", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlrmkit preprocess: error:"), captured.err
    assert str(src) in lines[0] and "line 7:" in lines[0] and "C1" in lines[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_lines_skipped_and_counted(tmp_path, workers):
    rnd = random.Random(1)
    positions = rnd.sample(range(2500), 40)
    kinds = list(BAD)
    bad_at = {p: BAD[kinds[i % len(kinds)]] for i, p in enumerate(positions)}
    src = tmp_path / "train.txt"
    text = _with_bad_lines(2500, bad_at)
    src.write_text(text)
    meta = run(tmp_path / "out", [src], vocab="reference", on_bad_line="skip", block_bytes=1 << 16, workers=workers)
    bad = meta["source"]["bad_lines"]
    for i, kind in enumerate(kinds):
        assert bad[kind] == sum(1 for k in range(40) if k % len(kinds) == i), kind
    assert bad["truncated_gzip"] == 0 and bad["empty_file"] == 0
    assert meta["source"]["lines"] == 2500 and meta["source"]["rows"] == 2460
    good = "".join(line for i, line in enumerate(text.splitlines(keepends=True)) if i not in bad_at)
    label, dense, sparse = parse_text(good)
    check_against(tmp_path / "out", expected_dataset(label, dense, sparse, kaggle_days(2460), "reference"))
